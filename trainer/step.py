"""One jitted train step: masks, towers, losses, the EMA teacher's update."""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import masking
from masking import text as text_lib
from masking import view_geometry
from models import clip
from models import sigmoid_loss
from trainer.objective import Objective, objective_of
from trainer import gradient_scatter
from trainer import optimizer
from trainer import partitioning
from trainer.state import TrainState, create_train_state, shardings_of, teacher_part


# Folded into the masks' key for the text's draws, which leaves the image masks' as they were.
TEXT_STREAM = 1


def clamp_logit_scale(params, bound: float):
  """open_clip's clamp of logit_scale to [0, bound] after each update."""
  return {**params, 'logit_scale': jnp.clip(params['logit_scale'], 0.0, bound)}


def teacher_forward(model, ema_params, images):
  """EMA image tower on the unmasked images: (features [B, E], class-token attention [B, N])."""
  features, scores = model.image.apply({'params': ema_params['image']}, images,
                                       cls_attention=True)
  return jax.lax.stop_gradient(features), jax.lax.stop_gradient(scores)


def sample_views(policy, rng, images, scores, num_views):
  """`num_views` independent masks per image, stacked view-major: ([V * B, K], [V * B, K]).

  `images` and `scores` are shared by the views ([B, ...]) or, with separate view crops,
  lists of one per view.
  """
  per_view = lambda x, v: x[v] if isinstance(x, (list, tuple)) else x
  with jax.named_scope('masking'):  # a profile's name for the policy's work
    keeps = [policy(key, per_view(images, v), per_view(scores, v))
             for v, key in enumerate(jax.random.split(rng, num_views))]
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


def separate_view_inputs(normalize, grid_hw, batch, scores):
  """With separate view crops: each view's normalised pixels [B, ...] and, when the teacher
  scored its crop, its attention cut and resized onto each view's grid."""
  views = [normalize(batch['views'][:, v]) for v in range(batch['views'].shape[1])]
  if scores is None:
    return views, None
  boxes = batch['crop_boxes']
  return views, [view_geometry.attention_on_view(scores, grid_hw, boxes[:, v], boxes[:, -1])
                 for v in range(len(views))]


def train_step(state: TrainState, batch, rng, *, model, policy, schedule,
               objective: Objective = Objective(), text_reduction=None, scatter=None):
  """One update. `batch['image']` is every view's crop, or with separate view crops
  (batch['views']) the EMA teacher's crop that covers them. `text_reduction`
  (masking/text.py) picks the caption tokens the text tower encodes; `scatter`
  (trainer/gradient_scatter.py), when given, reduce-scatters the towers' gradients."""
  mask_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  images, tokens = clip.normalize_pixels(model, batch['image']), batch['tokens']
  if text_reduction is not None and text_reduction.policy != 'none':
    with jax.named_scope('text_reduction'):
      tokens = text_reduction(jax.random.fold_in(mask_rng, TEXT_STREAM), tokens)
  views, batch_size = objective.num_views, images.shape[0]
  teacher_features = scores = None
  if objective.use_teacher:
    teacher_features, scores = teacher_forward(model, state.ema_params, images)
  if 'views' in batch:
    view_list, view_scores = separate_view_inputs(
        lambda x: clip.normalize_pixels(model, x), policy.grid_hw, batch, scores)
    keep_idx, valid = sample_views(policy, mask_rng, view_list, view_scores, views)
    images = jnp.stack(view_list, axis=1)  # [B, V, ...]: micro-batches split the examples
  else:
    keep_idx, valid = sample_views(policy, mask_rng, images, scores, views)

  def towers(params, images, keep_idx, valid, tokens, dropout_rng):
    """Image features [V, b, E] of every view and text embeddings [b, E] of b examples."""
    rows = images.shape[0]
    if images.ndim == 5:  # separate crops, [b, V, ...]
      view_images = jnp.moveaxis(images, 1, 0).reshape(-1, *images.shape[2:])
    else:
      view_images = jnp.tile(images, (views, 1, 1, 1)) if views > 1 else images
    flat = lambda x: None if x is None else x.reshape(views * rows, -1)
    rngs = {'dropout': dropout_rng}
    features = model.apply({'params': params}, view_images, flat(keep_idx), flat(valid),
                           train=True, rngs=rngs, method=clip.CLIP.image_features)
    ztxt = model.apply({'params': params}, tokens, train=True, rngs=rngs,
                       method=clip.CLIP.encode_text)
    return features.reshape(views, rows, -1), ztxt

  @jax.named_scope('loss')  # a profile's name for it
  def objective_loss(params, features, ztxt):
    """The loss given every embedding; reads only the heads and the logit scale."""
    def apply(*args, method):
      return model.apply({'params': params}, *args, method=method)

    logit_scale = apply(method=clip.CLIP.logit_scale)
    zimg = clip.l2_normalize(features)
    if objective.loss == 'sigmoid':
      bias = apply(method=clip.CLIP.logit_bias)
      contrastive = sigmoid_loss.view_losses(zimg, ztxt, logit_scale, bias).mean()
    else:
      contrastive = jax.vmap(functools.partial(clip.contrastive_loss,
                                               chunk=objective.loss_chunk),
                             in_axes=(0, None, None))(zimg, ztxt, logit_scale).mean()
    # The image-text term under either loss, so that curves compare by one name.
    terms = {'contrastive_loss': contrastive}
    if objective.loss == 'sigmoid':
      terms['logit_bias'] = bias
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
  inputs = (images, view_major(keep_idx), view_major(valid), tokens, dropout_rng)
  tower_params, reduce = state.params, None
  if scatter is not None:
    towers, tower_params, reduce = (scatter.towers(towers), scatter.stack(state.params),
                                    scatter.reduce)
  if objective.accum_steps > 1:
    loss, terms, logit_scale, grads = accumulated_gradients(
        towers, objective_loss, state.params, inputs, objective.accum_steps, tower_params,
        reduce)
  elif scatter is not None:
    def loss_fn(params, tower_params):
      return objective_loss(params, *towers(tower_params, *inputs))
    (loss, (terms, logit_scale)), (head_grads, tower_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, tower_params)
    grads = jax.tree.map(jnp.add, head_grads, reduce(tower_grads))
  else:
    def loss_fn(params):
      return objective_loss(params, *towers(params, *inputs))
    (loss, (terms, logit_scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)

  with jax.named_scope('optimizer'):
    state = state.apply_gradients(grads=grads)
    if objective.clamp_logit_scale > 0:
      state = state.replace(params=clamp_logit_scale(state.params, objective.clamp_logit_scale))
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
      'text_tokens': (tokens != text_lib.PAD_ID).sum(axis=1).mean(),
      'skipped_records': batch['skipped'].sum(),
      **terms,
  }
  return state, metrics


def accumulated_gradients(towers, objective_loss, params, inputs, accum_steps,
                          tower_params=None, reduce=None):
  """Gradients of the whole-batch loss with one micro-batch's activations alive at a time.

  1. Embed every micro-batch without gradient. 2. Differentiate the loss with respect to
  the embeddings (and the heads). 3. Re-run each micro-batch and pull its embeddings'
  gradient back through the towers. The result equals the full-batch gradient, negatives
  from every micro-batch included. The towers run on `tower_params` (by default `params`),
  whose summed gradient `reduce` (gradient_scatter's) turns into `params`' layout.
  """
  tower_params = params if tower_params is None else tower_params
  images, keep_idx, valid, tokens, dropout_rng = inputs
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

  # Each micro-batch draws its own dropout, the same in its re-run.
  micro = (split(images), split(keep_idx, 1), split(valid, 1), split(tokens),
           jax.random.split(dropout_rng, accum_steps))
  frozen = jax.lax.stop_gradient(tower_params)
  features, ztxt = jax.lax.map(lambda m: towers(frozen, *m), micro)
  features = jnp.moveaxis(features, 0, 1).reshape(features.shape[1], batch_size, -1)
  ztxt = ztxt.reshape(batch_size, -1)
  (loss, (terms, logit_scale)), (head_grads, feature_grads, text_grads) = jax.value_and_grad(
      objective_loss, argnums=(0, 1, 2), has_aux=True)(params, features, ztxt)
  cotangents = (split(feature_grads, 1), split(text_grads))

  def pull_back(grads, step):
    m, (feature_cot, text_cot) = step
    _, vjp = jax.vjp(lambda p: towers(p, *m), tower_params)
    return jax.tree.map(jnp.add, grads, vjp((feature_cot, text_cot))[0]), None

  tower_grads, _ = jax.lax.scan(pull_back, jax.tree.map(jnp.zeros_like, tower_params),
                                (micro, cotangents))
  if reduce is not None:
    tower_grads = reduce(tower_grads)
  return loss, terms, logit_scale, jax.tree.map(jnp.add, head_grads, tower_grads)


def text_reduction_of(config, token_counts=None):
  """The text reduction config.model.model_txt.masking asks for, for the config's tokenizer
  (frequency reduction reads `token_counts`, input_pipeline/token_counts.py)."""
  masking_config = config.model.model_txt.masking
  if masking_config.policy == 'none':
    return text_lib.TextReduction('none', masking_config.num_tokens)
  # Imported here: the tokenizer brings TensorFlow, which the step never needs and which,
  # loaded before torch's triton, crashes the comparison with open_clip at triton's import.
  from input_pipeline import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  return text_lib.from_config(config, tokenizer_lib.from_config(config), token_counts)


def jit_train_step(config, model, policy, objective: Objective, state: TrainState, mesh,
                   donate: bool = True, text_reduction=None):
  """`train_step` compiled for `state`'s shardings and a batch split over `data`, reducing
  the text as `text_reduction` says (by default config.model.model_txt.masking's)."""
  state_sh = shardings_of(state)
  repl = partitioning.replicated(mesh)
  scatter = gradient_scatter.of_config(config, model, mesh)
  return partitioning.jit(
      functools.partial(train_step, model=model, policy=policy,
                        schedule=optimizer.learning_rate_schedule(config), objective=objective,
                        text_reduction=text_reduction or text_reduction_of(config),
                        scatter=scatter),
      mesh, partitioning.logical_rules(config),
      in_shardings=(state_sh, partitioning.batch_sharding(mesh), repl),
      out_shardings=(state_sh, repl), donate_argnums=0 if donate else ())


class Training(NamedTuple):
  model: clip.CLIP
  policy: masking.MaskingPolicy
  objective: Objective
  state: TrainState
  step: Callable


def new_training(config, mesh, rng, donate: bool = True, token_counts=None) -> Training:
  """A model, its policy and objective, a fresh state on `mesh` and its compiled step
  (frequency text reduction reads `token_counts`, input_pipeline/token_counts.py)."""
  model = clip.from_config(config)
  policy = masking.get_policy(config)
  objective = objective_of(config, policy)
  state = create_train_state(config, model, rng, mesh, objective)
  return Training(model, policy, objective, state,
                  jit_train_step(config, model, policy, objective, state, mesh, donate,
                                 text_reduction_of(config, token_counts)))
