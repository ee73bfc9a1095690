"""Training and zero-shot evaluation: train state, jitted steps, the loop, checkpoints."""

import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable, Dict, NamedTuple

from absl import logging
from clu import periodic_actions
from flax import traverse_util
import flax.linen as nn
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import config_checks
import masking
import metrics_writer
import partitioning
from input_pipeline import laion
from input_pipeline import tokenizer as tokenizer_lib
from input_pipeline import zeroshot
from models import clip

NO_DECAY_NAMES = ('pos_embedding', 'cls')


class NonFiniteLossError(FloatingPointError):
  """Raised when training produced NaN or infinite values; nothing was saved after them."""


class TrainState(train_state.TrainState):
  # EMA copy of the image tower (and A-CLIP's projector): the attentive policy's teacher.
  ema_params: Any = None


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a train step computes besides the contrastive loss; static under jit."""
  num_views: int = 1
  use_teacher: bool = False  # keep an EMA image tower (attentive scores, distillation)
  ema_momentum: float = 0.996
  total_steps: int = 1
  distill_weight: float = 0.0
  simclr_weight: float = 0.0
  simclr_temperature: float = 0.1
  accum_steps: int = 1  # micro-batches per step (exact contrastive loss, see train_step)
  loss_chunk: int = 0  # rows of the logits matrix formed at a time (0: all)

  def momentum(self, step):
    """Cosine schedule of the EMA momentum from ema_momentum at step 0 to 1 at the end."""
    progress = jnp.minimum(step / self.total_steps, 1.0)
    return 1 - (1 - self.ema_momentum) * (jnp.cos(jnp.pi * progress) + 1) / 2


def objective_of(config, policy) -> Objective:
  aclip = config.model.aclip
  return Objective(
      num_views=config.model.model_img.masking.num_views,
      use_teacher=policy.needs_scores or aclip.distill_weight > 0,
      ema_momentum=config.model.model_img.masking.ema_momentum,
      total_steps=steps_of(config)['total'], distill_weight=aclip.distill_weight,
      simclr_weight=aclip.simclr_weight, simclr_temperature=aclip.simclr_temperature,
      accum_steps=config.grad_accum_steps, loss_chunk=config.model.clr.loss_chunk)


def teacher_part(params):
  """The parameters the EMA teacher tracks."""
  return {k: v for k, v in params.items() if k in ('image', 'projector')}


# --- Optimiser ---------------------------------------------------------------------------------

def steps_of(config) -> Dict[str, int]:
  steps_per_epoch = config.samples_per_epoch / config.batch_size
  total = config.total_steps if config.total_steps > 0 else int(config.num_epochs *
                                                                steps_per_epoch)
  return {'total': max(total, 1), 'warmup': int(config.warmup_epochs * steps_per_epoch)}


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup then cosine decay; the peak is learning_rate per 256 examples."""
  steps = steps_of(config)
  warmup = min(steps['warmup'], steps['total'])
  return optax.warmup_cosine_decay_schedule(
      init_value=config.warmup_abs_lr,
      peak_value=config.learning_rate * config.batch_size / 256,
      warmup_steps=warmup, decay_steps=max(steps['total'], warmup + 1),
      end_value=config.min_abs_lr)


def weight_decay_mask(params):
  """True where AdamW decays: matrices and kernels, not biases, norms or embeddings' offsets."""
  def decays(path, leaf):
    return leaf.ndim > 1 and path[-1].key not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
  if config.opt_type != 'adamw':
    raise ValueError(f"config.opt_type={config.opt_type!r}: only 'adamw' is supported")
  parts = []
  if config.opt.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.opt.clip_grad_norm))
  parts.append(optax.adamw(learning_rate_schedule(config), b1=config.opt.b1, b2=config.opt.b2,
                           weight_decay=config.opt.weight_decay,
                           mask=weight_decay_mask if config.exclude_wd else None))
  return optax.chain(*parts)


# --- State -------------------------------------------------------------------------------------

def dummy_inputs(config):
  size = config.image_size
  return (jnp.zeros((1, size, size, 3), jnp.float32),
          jnp.zeros((1, config.aug.txt.max_len), jnp.int32))


def state_shardings(config, model, mesh, objective: Objective, tx):
  """NamedShardings of every TrainState leaf, from the parameters' logical axis names."""
  boxed = jax.eval_shape(lambda rng: model.init(rng, *dummy_inputs(config)),
                         jax.random.PRNGKey(0))['params']
  params = partitioning.param_shardings(nn.get_partition_spec(boxed), mesh,
                                        partitioning.logical_rules(config))
  repl = partitioning.replicated(mesh)
  opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding,
                                    jax.eval_shape(tx.init, nn.unbox(boxed)), params,
                                    transform_non_params=lambda _: repl)
  return TrainState(step=repl, apply_fn=model.apply, params=params, tx=tx,
                    opt_state=opt_state,
                    ema_params=teacher_part(params) if objective.use_teacher else None)


def create_train_state(config, model, rng, mesh,
                       objective: Objective = Objective()) -> TrainState:
  """A new state, each array already placed on the mesh as the sharding rules say."""
  tx = make_optimizer(config)

  def init(rng):
    params = nn.unbox(model.init(rng, *dummy_inputs(config))['params'])
    ema = jax.tree.map(jnp.copy, teacher_part(params)) if objective.use_teacher else None
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, ema_params=ema)

  shardings = state_shardings(config, model, mesh, objective, tx)
  return jax.jit(init, out_shardings=shardings)(rng)


def shardings_of(state: TrainState) -> TrainState:
  return jax.tree.map(lambda x: x.sharding, state)


# --- Steps -------------------------------------------------------------------------------------

def teacher_forward(model, ema_params, images):
  """EMA image tower on the unmasked images: (features [B, E], class-token attention [B, N])."""
  features, scores = model.image.apply({'params': ema_params['image']}, images,
                                       cls_attention=True)
  return jax.lax.stop_gradient(features), jax.lax.stop_gradient(scores)


def sample_views(policy, rng, images, scores, num_views):
  """`num_views` independent masks per image, stacked view-major: ([V * B, K], [V * B, K])."""
  keeps = [policy(key, images, scores) for key in jax.random.split(rng, num_views)]
  if keeps[0] is None:
    return None, None
  keep_idx = jnp.concatenate([k[0] for k in keeps])
  valid = None if keeps[0][1] is None else jnp.concatenate([k[1] for k in keeps])
  return keep_idx, valid


def kept_fraction(policy, keep_idx, valid, rows):
  """Fraction of the patch grid each image (view) actually encodes, [rows]."""
  if keep_idx is None:
    return jnp.ones((rows,))
  if valid is None:
    return jnp.full((rows,), keep_idx.shape[1] / policy.num_patches)
  return valid.sum(axis=1) / policy.num_patches


def train_step(state: TrainState, batch, rng, *, model, policy, schedule,
               objective: Objective = Objective()):
  rng = jax.random.fold_in(rng, state.step)
  images, tokens = batch['image'], batch['tokens']
  views, batch_size = objective.num_views, images.shape[0]
  teacher_features = scores = None
  if objective.use_teacher:
    teacher_features, scores = teacher_forward(model, state.ema_params, images)
  keep_idx, valid = sample_views(policy, rng, images, scores, views)

  def towers(params, images, keep_idx, valid, tokens):
    """Image features [V, b, E] of every view and text embeddings [b, E] of b examples."""
    rows = images.shape[0]
    view_images = jnp.tile(images, (views, 1, 1, 1)) if views > 1 else images
    flat = lambda x: None if x is None else x.reshape(views * rows, -1)
    features = model.apply({'params': params}, view_images, flat(keep_idx), flat(valid),
                           method=clip.CLIP.image_features)
    ztxt = model.apply({'params': params}, tokens, method=clip.CLIP.encode_text)
    return features.reshape(views, rows, -1), ztxt

  def objective_loss(params, features, ztxt):
    """The loss given every embedding; reads only the heads and the logit scale."""
    def apply(*args, method):
      return model.apply({'params': params}, *args, method=method)

    logit_scale = apply(method=clip.CLIP.logit_scale)
    zimg = clip.l2_normalize(features)
    contrastive = jax.vmap(functools.partial(clip.contrastive_loss,
                                             chunk=objective.loss_chunk),
                           in_axes=(0, None, None))(zimg, ztxt, logit_scale).mean()
    terms = {'contrastive_loss': contrastive}
    flat = features.reshape(views * batch_size, -1)
    if objective.distill_weight > 0:
      target = clip.Head(model.head_dim, model.image.dtype).apply(
          {'params': state.ema_params['projector']}, teacher_features)
      predicted = apply(flat, method=clip.CLIP.predict)
      terms['distill_loss'] = clip.distillation_loss(predicted, jnp.tile(target, (views, 1)))
    if objective.simclr_weight > 0:
      projected = apply(flat, method=clip.CLIP.project).reshape(views, batch_size, -1)
      terms['simclr_loss'] = clip.simclr_loss(projected[0], projected[1],
                                              objective.simclr_temperature)
    total = (contrastive + objective.distill_weight * terms.get('distill_loss', 0.0)
             + objective.simclr_weight * terms.get('simclr_loss', 0.0))
    return total, (terms, logit_scale)

  view_major = lambda x: None if x is None else x.reshape(views, batch_size, -1)
  inputs = (images, view_major(keep_idx), view_major(valid), tokens)
  if objective.accum_steps == 1:
    def loss_fn(params):
      return objective_loss(params, *towers(params, *inputs))
    (loss, (terms, logit_scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
  else:
    loss, terms, logit_scale, grads = accumulated_gradients(
        towers, objective_loss, state.params, inputs, objective.accum_steps)

  state = state.apply_gradients(grads=grads)
  if objective.use_teacher:
    momentum = objective.momentum(state.step)
    state = state.replace(ema_params=jax.tree.map(
        lambda ema, online: momentum * ema + (1 - momentum) * online, state.ema_params,
        teacher_part(state.params)))
  fraction = kept_fraction(policy, keep_idx, valid, views * batch_size)
  metrics = {
      'train_loss': loss,
      'learning_rate': schedule(state.step - 1),
      'temperature': jnp.exp(-logit_scale),
      'kept_patches': fraction.mean() * policy.num_patches,
      'kept_fraction_mean': fraction.mean(),
      'kept_fraction_min': fraction.min(),
      'kept_fraction_max': fraction.max(),
      'grad_norm': optax.tree.norm(grads),
      'skipped_records': batch['skipped'].sum(),
      **terms,
  }
  return state, metrics


def accumulated_gradients(towers, objective_loss, params, inputs, accum_steps):
  """Gradients of the whole-batch loss with one micro-batch's activations alive at a time.

  1. Embed every micro-batch without gradient. 2. Differentiate the loss with respect to
  the embeddings (and the heads). 3. Re-run each micro-batch and pull its embeddings'
  gradient back through the towers. The result equals the full-batch gradient, negatives
  from every micro-batch included.
  """
  images, keep_idx, valid, tokens = inputs
  batch_size = images.shape[0]
  if batch_size % accum_steps:
    raise ValueError(f'config.grad_accum_steps={accum_steps} does not divide the batch of '
                     f'{batch_size}')

  def split(x, axis=0):
    if x is None:
      return None
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape(accum_steps, batch_size // accum_steps, *x.shape[1:])
    return jnp.moveaxis(x, 1, axis + 1)

  micro = (split(images), split(keep_idx, 1), split(valid, 1), split(tokens))
  frozen = jax.lax.stop_gradient(params)
  features, ztxt = jax.lax.map(lambda m: towers(frozen, *m), micro)
  features = jnp.moveaxis(features, 0, 1).reshape(features.shape[1], batch_size, -1)
  ztxt = ztxt.reshape(batch_size, -1)
  (loss, (terms, logit_scale)), (head_grads, feature_grads, text_grads) = jax.value_and_grad(
      objective_loss, argnums=(0, 1, 2), has_aux=True)(params, features, ztxt)
  cotangents = (split(feature_grads, 1), split(text_grads))

  def pull_back(grads, step):
    m, (feature_cot, text_cot) = step
    _, vjp = jax.vjp(lambda p: towers(p, *m), params)
    return jax.tree.map(jnp.add, grads, vjp((feature_cot, text_cot))[0]), None

  tower_grads, _ = jax.lax.scan(pull_back, jax.tree.map(jnp.zeros_like, params),
                                (micro, cotangents))
  return loss, terms, logit_scale, jax.tree.map(jnp.add, head_grads, tower_grads)


def jit_train_step(config, model, policy, objective: Objective, state: TrainState, mesh,
                   donate: bool = True):
  """`train_step` compiled for `state`'s shardings and a batch split over `data`."""
  state_sh = shardings_of(state)
  repl = partitioning.replicated(mesh)
  return jax.jit(functools.partial(train_step, model=model, policy=policy,
                                   schedule=learning_rate_schedule(config),
                                   objective=objective),
                 in_shardings=(state_sh, partitioning.batch_sharding(mesh), repl),
                 out_shardings=(state_sh, repl), donate_argnums=0 if donate else ())


class Training(NamedTuple):
  model: clip.CLIP
  policy: masking.MaskingPolicy
  objective: Objective
  state: TrainState
  step: Callable


def new_training(config, mesh, rng, donate: bool = True) -> Training:
  """A model, its policy and objective, a fresh state on `mesh` and its compiled step."""
  model = clip.from_config(config)
  policy = masking.get_policy(config)
  objective = objective_of(config, policy)
  state = create_train_state(config, model, rng, mesh, objective)
  return Training(model, policy, objective, state,
                  jit_train_step(config, model, policy, objective, state, mesh, donate))


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


# --- Zero-shot evaluation ----------------------------------------------------------------------

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
    self._encode_text = jax.jit(functools.partial(encode_text_step, model=model),
                                out_shardings=repl)
    # Inputs keep the shardings they carry: parameters as the rules place them.
    self._eval_step = jax.jit(
        functools.partial(eval_step, model=model, policy=policy,
                          top_k=min(5, len(self.data.classnames))), out_shardings=repl)
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
    return {'zeroshot_top1': totals['top1'] / count, 'zeroshot_top5': totals['top5'] / count}


def example_grid(model, policy, state: TrainState, images, rng, mesh):
  """Training images with the patches `policy` drops greyed out, as one uint8 picture."""
  from masking import visualize  # pylint: disable=g-import-not-at-top
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


# --- Checkpoints -------------------------------------------------------------------------------

def checkpoint_manager(directory: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))


CHECKPOINT_ITEMS = ('params', 'opt_state', 'ema_params')


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState):
  items = {name: ocp.args.StandardSave(getattr(state, name)) for name in CHECKPOINT_ITEMS
           if getattr(state, name) is not None}
  manager.save(int(state.step), args=ocp.args.Composite(**items))


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState, step: int):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  items = {name: ocp.args.StandardRestore(getattr(abstract, name)) for name in CHECKPOINT_ITEMS
           if getattr(state, name) is not None}
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return state.replace(step=jax.device_put(np.int32(step), state.step.sharding),
                       **{name: restored[name] for name in items})


def latest_step_dir(path: str) -> str:
  """`path` may be a run's workdir, its checkpoints/ folder, or one step's folder."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'params')):
    return path
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path!r}: no such checkpoint directory')
  step = ocp.CheckpointManager(path).latest_step()
  if step is None:
    raise FileNotFoundError(f'{path!r} holds no checkpoint')
  return os.path.join(path, str(step))


def resample_grid(embedding: np.ndarray, new_shape) -> np.ndarray:
  """Bilinearly resizes a [1, gh * gw, D] position embedding onto another square grid."""
  old_side, new_side = int(np.sqrt(embedding.shape[1])), int(np.sqrt(new_shape[1]))
  if old_side ** 2 != embedding.shape[1] or new_side ** 2 != new_shape[1]:
    raise ValueError(f'cannot resample position embedding {embedding.shape} -> {new_shape}: '
                     'grids must be square')
  grid = embedding.reshape(old_side, old_side, -1)
  grid = jax.image.resize(grid, (new_side, new_side, grid.shape[-1]), 'bilinear')
  return np.asarray(grid).reshape(new_shape)


def load_pretrained_params(path: str, params):
  """Weights of another run's checkpoint, without its optimiser state, fitted to `params`."""
  try:
    step_dir = latest_step_dir(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.pretrain_dir: {e}') from e
  source = traverse_util.flatten_dict(
      ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'params')), sep='/')
  target = traverse_util.flatten_dict(params, sep='/')
  if source.keys() != target.keys():
    raise ValueError(
        f'config.pretrain_dir={path!r}: its parameters differ from this model\'s; missing '
        f'{sorted(target.keys() - source.keys())}, unexpected '
        f'{sorted(source.keys() - target.keys())}')
  fitted = {}
  for name, want in target.items():
    value = np.asarray(source[name])
    if value.shape != want.shape:
      if not name.endswith('pos_embedding') or value.ndim != 3:
        raise ValueError(f'config.pretrain_dir={path!r}: parameter {name} has shape '
                         f'{value.shape} in the checkpoint but {want.shape} in this model')
      logging.info('Resampling %s from %s to %s', name, value.shape, want.shape)
      value = resample_grid(value, want.shape)
    fitted[name] = jax.device_put(value.astype(want.dtype), want.sharding)
  return traverse_util.unflatten_dict(fitted, sep='/')


# --- The loop ----------------------------------------------------------------------------------

def _summarize(pending):
  """Device metrics of the steps since the last summary -> their means (skips summed)."""
  rows = jax.device_get(pending)
  out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  out['skipped_records'] = float(np.sum([r['skipped_records'] for r in rows]))
  return out


def _all_finite(pending) -> bool:
  rows = jax.device_get(pending)
  return all(np.isfinite(r['train_loss']) and np.isfinite(r['grad_norm']) for r in rows)


def calibrate_cluster_policy(config, images, rng) -> masking.MaskingPolicy:
  """Sets masking.threshold so that the first batch's mean masked share is the target.

  Every host must mask with the same threshold, so process 0's value is broadcast.
  """
  masking_config = config.model.model_img.masking
  threshold = masking.calibrate_threshold(
      rng, jnp.asarray(images), tuple(config.model.model_img.patches.size),
      masking_config.anchor_ratio, masking_config.target_mask_ratio)
  threshold = float(multihost_utils.broadcast_one_to_all(np.float32(threshold)))
  masked = float(masking.cluster_mask(rng, jnp.asarray(images),
                                      tuple(config.model.model_img.patches.size),
                                      masking_config.anchor_ratio, threshold).mean())
  logging.info('Cluster masking: threshold calibrated from %.4f to %.4f (masked share %.3f, '
               'target %.3f)', masking_config.threshold, threshold, masked,
               masking_config.target_mask_ratio)
  masking_config.threshold = threshold
  return masking.get_policy(config, train=True)


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs training (or `eval_only`); returns the last metrics written."""
  config_checks.check(config)
  mesh = partitioning.make_mesh(config)
  partitioning.check_divisibility(config, mesh)
  model = clip.from_config(config)
  tokenizer = tokenizer_lib.BertTokenizer(config.aug.txt.max_len, config.aug.txt.cls_token)
  policy = masking.get_policy(config, train=True)
  writer = metrics_writer.create_writer(workdir)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, eval_rng = jax.random.split(rng, 3)

  objective = objective_of(config, policy)
  evaluator = ZeroShotEvaluator(config, model, mesh, tokenizer) if config.eval_dataset else None
  state = create_train_state(config, model, init_rng, mesh, objective)
  manager = checkpoint_manager(os.path.join(workdir, 'checkpoints'), config)
  resume_from = manager
  if config.resume_dir and manager.latest_step() is None:
    resume_from = checkpoint_manager(os.path.join(config.resume_dir, 'checkpoints')
                                     if os.path.isdir(os.path.join(config.resume_dir,
                                                                   'checkpoints'))
                                     else config.resume_dir, config)
  if resume_from.latest_step() is not None:
    step = resume_from.latest_step()
    logging.info('Resuming from %s at step %d', resume_from.directory, step)
    state = restore_checkpoint(resume_from, state, step)
  elif config.pretrain_dir:
    logging.info('Initialising weights from %s (optimiser state not loaded)',
                 config.pretrain_dir)
    params = load_pretrained_params(config.pretrain_dir, state.params)
    state = state.replace(params=params, ema_params=(
        jax.tree.map(jnp.copy, teacher_part(params)) if objective.use_teacher else None))
  start_step = int(state.step)

  total_steps = steps_of(config)['total']

  def evaluate(step):
    scores = evaluator(state, eval_rng)
    writer.write_scalars(step, scores)
    writer.flush()
    logging.info('Zero-shot at step %d%s: top-1 %.4f, top-5 %.4f', step,
                 ' (masked inference)' if evaluator.masked else '', scores['zeroshot_top1'],
                 scores['zeroshot_top5'])
    return scores

  if config.eval_only:
    if evaluator is None:
      raise ValueError('config.eval_only=True needs config.eval_dataset')
    if resume_from.latest_step() is None and not config.pretrain_dir:
      raise FileNotFoundError(f'config.eval_only=True: no checkpoint in {workdir} and no '
                              'config.pretrain_dir to evaluate')
    return evaluate(start_step)
  if start_step >= total_steps:
    logging.info('The run in %s already reached step %d of %d.', workdir, start_step,
                 total_steps)
    return evaluate(start_step) if evaluator and config.eval_at_end else {}

  shards = laion.list_shards(config.laion_path)
  dataset = laion.train_dataset(
      config, tokenizer, shards, process_index=jax.process_index(),
      process_count=jax.process_count(),
      seed=laion.host_seed(config.seed, start_step, jax.process_index()))
  batches = dataset.as_numpy_iterator()
  first_batch = next(batches)
  if policy.name == 'cluster' and config.model.model_img.masking.calibrate:
    policy = calibrate_cluster_policy(config, first_batch['image'], init_rng)
    if evaluator and evaluator.masked:
      evaluator = ZeroShotEvaluator(config, model, mesh, tokenizer)
  batches = itertools.chain([first_batch], batches)
  examples = first_batch['image'][:8]  # shown masked in TensorBoard at each evaluation
  step_fn = jit_train_step(config, model, policy, objective, state, mesh)
  logging.info('Training %s for steps %d..%d on %d devices (%s masking, %d of %d patches '
               'kept), shards: %d %s files', workdir, start_step, total_steps,
               jax.device_count(), policy.name, policy.num_keep, policy.num_patches,
               len(shards.files), shards.format)
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps,
                                             every_secs=None)
  pending, last_saved = [], manager.latest_step()
  window_start, window_steps = time.time(), 0
  results: Dict[str, Any] = {}

  def check_finite(step):
    """Stops before anything computed from non-finite values is saved."""
    if _all_finite(pending):
      return
    manager.wait_until_finished()
    where = (f'the last good checkpoint is step {last_saved} in {manager.directory}'
             if last_saved is not None else 'no checkpoint was written')
    logging.error('Training stopped: the loss became NaN or infinite by step %d; nothing '
                  'after it was saved; %s.', step, where)
    raise NonFiniteLossError(f'non-finite loss by step {step}; {where}')

  def every(n, step):
    return n > 0 and step % n == 0

  try:
    for step in range(start_step + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = partitioning.global_batch(mesh, next(batches))
        state, metrics = step_fn(state, batch, train_rng)
      pending.append(metrics)
      window_steps += 1
      progress(step)
      is_last = step == total_steps
      if every(config.log_every_steps, step) or is_last:
        check_finite(step)
        summary = _summarize(pending)
        pending.clear()
        elapsed = time.time() - window_start
        summary['images_per_sec'] = window_steps * config.batch_size / max(elapsed, 1e-9)
        writer.write_scalars(step, summary)
        eta = (total_steps - step) * elapsed / max(window_steps, 1)
        logging.info('step %d/%d | loss %.4f | %.0f images/s | ETA %s', step, total_steps,
                     summary['train_loss'], summary['images_per_sec'], _format_seconds(eta))
        results.update(summary)
        window_start, window_steps = time.time(), 0
      if every(config.checkpoint_every_steps, step) or (is_last and config.save_at_end):
        check_finite(step)
        with progress.timed('checkpoint'):
          save_checkpoint(manager, state)
        last_saved = step
      if evaluator and (every(config.eval_every_steps, step) or
                        (is_last and config.eval_at_end)):
        with progress.timed('eval'):
          results.update(evaluate(step))
          writer.write_images(step, {'masked_examples': example_grid(
              model, policy, state, examples, eval_rng, mesh)[None]})
        window_start = time.time()  # evaluation time is not training throughput
  finally:
    manager.wait_until_finished()  # whatever stopped the loop, finish the saves under way
    writer.flush()
  logging.info('Done. Logs and metrics.jsonl in %s; checkpoints in %s', workdir,
               manager.directory)
  return results


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'
