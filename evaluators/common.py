"""What every evaluator shares: image and text towers compiled for the mesh, fed and read
back in global batches split over the `data` axis."""

import functools
from typing import List

import jax
import numpy as np

from input_pipeline import eval_data
import masking
from models import clip
from trainer import partitioning
from trainer.state import TrainState
from trainer.step import teacher_forward


def image_step(params, ema_params, batch, rng, *, model, policy):
  """Embeddings of a global batch, with its labels and indices (all gathered)."""
  images = clip.normalize_pixels(model, batch['image'])
  scores = teacher_forward(model, ema_params, images)[1] if policy.needs_scores else None
  keep = policy(rng, images, scores)
  keep_idx, valid = keep if keep is not None else (None, None)
  embedding = model.apply({'params': params}, images, keep_idx, valid,
                          method=clip.CLIP.encode_image)
  return {'embedding': embedding, 'label': batch['label'], 'index': batch['index']}


def text_step(params, tokens, *, model):
  return model.apply({'params': params}, tokens, method=clip.CLIP.encode_text)


def _host_array(x) -> np.ndarray:
  """A replicated global array as numpy, on any host."""
  return np.asarray(x.addressable_data(0))


class Towers:
  """L2-normalised image and text embeddings of whole evaluation sets.

  Images pass the evaluation policy (`none` unless masking.at_eval: "masked inference").
  """

  def __init__(self, config, model, mesh, tokenizer):
    self.mesh, self.tokenizer = mesh, tokenizer
    self.batch_size = config.eval_batch_size
    self.policy = masking.get_policy(config, train=False)
    rules = partitioning.logical_rules(config)
    repl = partitioning.replicated(mesh)
    self._image = partitioning.jit(functools.partial(image_step, model=model,
                                                     policy=self.policy),
                                   mesh, rules, out_shardings=repl)
    self._text = partitioning.jit(functools.partial(text_step, model=model), mesh, rules,
                                  out_shardings=repl)

  def images(self, state: TrainState, data: eval_data.EvalImages, rng):
    """(embeddings [N, E], labels [N], unreadable images skipped) in the set's order,
    padding dropped."""
    ema = state.ema_params if self.policy.needs_scores else None
    outs = []
    for i, batch in enumerate(data.dataset.as_numpy_iterator()):
      out = self._image(state.params, ema, partitioning.global_batch(self.mesh, batch),
                        jax.random.fold_in(rng, i))
      outs.append(jax.tree.map(_host_array, out))
    embeddings, labels, indices = (np.concatenate([o[k] for o in outs])
                                   for k in ('embedding', 'label', 'index'))
    real = indices >= 0
    if not real.any():
      raise ValueError(f'none of the {data.num_examples} images of the evaluation set could '
                       'be read (damaged or not images)')
    order = np.argsort(indices[real], kind='stable')
    return embeddings[real][order], labels[real][order], data.num_examples - int(real.sum())

  def texts(self, params, texts: List[str]) -> np.ndarray:
    """[T, E] embeddings of `texts`, eval_batch_size at a time, split over `data`."""
    tokens = np.asarray(self.tokenizer(texts))
    padded = np.pad(tokens, ((0, -len(tokens) % self.batch_size), (0, 0)))
    per_host = self.batch_size // jax.process_count()
    start = jax.process_index() * per_host
    out = []
    for i in range(0, len(padded), self.batch_size):
      local = padded[i + start:i + start + per_host]
      out.append(_host_array(self._text(params, partitioning.global_batch(self.mesh, local))))
    return np.concatenate(out)[:len(tokens)]


def images_kwargs(config, ecfg, batch_size: int):
  """The arguments every evaluator passes to input_pipeline.eval_data's readers."""
  return dict(image_size=config.image_size, eval_pad=config.aug.eval_pad,
              local_batch_size=batch_size // jax.process_count(),
              process_index=jax.process_index(), process_count=jax.process_count(),
              field=ecfg.field)
