"""Zero-shot classification with prompt ensembles, and pictures of what a policy keeps."""

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

import masking
import partitioning
from input_pipeline import zeroshot
from masking import visualize
from models import clip
from train_step import TrainState, teacher_forward


def encode_text_step(params, tokens, *, model):
  return model.apply({'params': params}, tokens, method=clip.CLIP.encode_text)


def eval_step(params, ema_params, batch, classifier, rng, *, model, policy, top_k):
  scores = teacher_forward(model, ema_params, batch['image'])[1] if policy.needs_scores else None
  keep = policy(rng, batch['image'], scores)
  keep_idx, valid = keep if keep is not None else (None, None)
  zimg = model.apply({'params': params}, batch['image'], keep_idx, valid,
                     method=clip.CLIP.encode_image)
  _, predicted = jax.lax.top_k(zimg @ classifier.T, top_k)
  hits = predicted == batch['label'][:, None]
  mask = batch['mask']
  return {'top1': (hits[:, 0] * mask).sum(), 'top5': (hits.any(axis=1) * mask).sum(),
          'count': mask.sum()}


class ZeroShotEvaluator:
  """Builds the class embeddings from prompts, then scores the eval set (top-1, top-5)."""

  def __init__(self, config, model, mesh, tokenizer):
    self.config, self.mesh = config, mesh
    self.local_batch = config.eval_batch_size // jax.process_count()
    self.data = zeroshot.zeroshot_dataset(config, local_batch_size=self.local_batch,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count())
    template_set = zeroshot.templates(config.eval_templates)
    self.num_templates = len(template_set)
    self.prompt_tokens = np.asarray(
        tokenizer(zeroshot.prompts(self.data.classnames, template_set)))
    policy = masking.get_policy(config, train=False)
    repl = partitioning.replicated(mesh)
    rules = partitioning.logical_rules(config)
    self._encode_text = partitioning.jit(functools.partial(encode_text_step, model=model),
                                         mesh, rules, out_shardings=repl)
    # Inputs keep the shardings they carry: parameters as the rules place them.
    # Top-5, or top-k of the k < 5 classes a small set has (named for what it is).
    self.top_k = min(5, len(self.data.classnames))
    self._eval_step = partitioning.jit(
        functools.partial(eval_step, model=model, policy=policy, top_k=self.top_k),
        mesh, rules, out_shardings=repl)
    self.masked = policy.name != 'none'
    self.needs_teacher = policy.needs_scores

  def classifier(self, params):
    chunk = self.config.eval_batch_size
    tokens = self.prompt_tokens
    padded = np.pad(tokens, ((0, -len(tokens) % chunk), (0, 0)))
    embeddings = [self._encode_text(params, partitioning.replicate(self.mesh,
                                                                   padded[i:i + chunk]))
                  for i in range(0, len(padded), chunk)]
    ztxt = jnp.concatenate(embeddings)[:len(tokens)]
    ztxt = ztxt.reshape(len(self.data.classnames), self.num_templates, -1)
    return clip.l2_normalize(clip.l2_normalize(ztxt).mean(axis=1))

  def __call__(self, state: TrainState, rng) -> Dict[str, float]:
    """Top-1 and top-5 of state.params (masked inference reads the EMA teacher if needed)."""
    params = state.params
    ema_params = state.ema_params if self.needs_teacher else None
    classifier = self.classifier(params)
    totals = {'top1': 0.0, 'top5': 0.0, 'count': 0.0}
    for i, batch in enumerate(self.data.dataset.as_numpy_iterator()):
      sums = self._eval_step(params, ema_params, partitioning.global_batch(self.mesh, batch),
                             classifier, jax.random.fold_in(rng, i))
      totals = {k: totals[k] + float(sums[k]) for k in totals}
    count = max(totals['count'], 1.0)
    return {'zeroshot_top1': totals['top1'] / count,
            f'zeroshot_top{self.top_k}': totals['top5'] / count,
            'zeroshot_images': totals['count']}


def example_grid(model, policy, state: TrainState, images, rng, mesh):
  """Training images with the patches `policy` drops greyed out, as one uint8 picture."""
  scores = None
  if policy.needs_scores:
    scores = jax.jit(functools.partial(teacher_forward, model),
                     out_shardings=partitioning.replicated(mesh))(
                         state.ema_params, partitioning.replicate(mesh, images))[1]
    scores = jnp.asarray(scores.addressable_data(0))
  keep = policy(rng, jnp.asarray(images), scores)
  kept = (np.ones((len(images), policy.num_patches), bool) if keep is None
          else visualize.keep_mask(*keep, policy.num_patches))
  return visualize.masked_grid(images, kept, policy.grid_hw)
