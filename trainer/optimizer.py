"""AdamW, its learning-rate schedule and the parameters it decays, as FLIP or open_clip train.

Steps are counted as FLIP counts them (train.py:313, 428-432): `samples_per_epoch //
batch_size` steps per virtual epoch and `int(num_epochs)` epochs, with the warmup and the
cosine in those steps (t5x/train_state_initializer.py:42-59).
"""

from typing import Callable, Dict

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax


def steps_per_epoch(config) -> int:
  steps = config.samples_per_epoch // config.batch_size
  if steps < 1:
    raise ValueError(f'config.samples_per_epoch={config.samples_per_epoch} is smaller than '
                     f'config.batch_size={config.batch_size}: an epoch holds no whole step')
  return steps


def total_steps(config) -> int:
  """Steps of the whole run: total_steps when set, else int(num_epochs) virtual epochs."""
  total = (config.total_steps if config.total_steps > 0
           else int(config.num_epochs) * steps_per_epoch(config))
  return max(total, 1)


def warmup_steps(config) -> int:
  """Steps of the linear warmup: warmup_steps when set, else warmup_epochs' worth."""
  if config.warmup_steps > 0:
    return config.warmup_steps
  return int(config.warmup_epochs * steps_per_epoch(config))


def peak_learning_rate(config) -> float:
  """`abs_learning_rate` when set (open_clip's --lr), else learning_rate per 256 examples."""
  if config.abs_learning_rate > 0:
    return config.abs_learning_rate
  return config.learning_rate * config.batch_size / 256


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup, then a cosine from the peak down to min_abs_lr.

  With warmup_epochs, FLIP's: the warmup rises from warmup_abs_lr at step 0 over
  warmup_epochs * steps_per_epoch steps (not rounded) and the cosine spans
  max(num_epochs - warmup_epochs, 1) epochs (num_epochs not rounded either), or the steps
  left of total_steps. With warmup_steps, open_clip's (open_clip_train/scheduler.py): step s
  of the warmup runs at peak * (s + 1) / warmup_steps and the cosine spans the steps left.
  """
  peak = peak_learning_rate(config)
  per_epoch = steps_per_epoch(config)
  total = total_steps(config)
  if config.warmup_steps > 0:
    warmup = min(config.warmup_steps, total)
    rise = optax.linear_schedule(peak / config.warmup_steps, peak,
                                 max(config.warmup_steps - 1, 1))
    cosine_steps = total - warmup
  else:
    warmup = config.warmup_epochs * per_epoch
    rise = optax.linear_schedule(config.warmup_abs_lr, peak, max(warmup, 1))
    cosine_steps = (total - warmup if config.total_steps > 0
                    else max(config.num_epochs - config.warmup_epochs, 1) * per_epoch)
  cosine = optax.cosine_decay_schedule(peak, max(cosine_steps, 1),
                                       alpha=config.min_abs_lr / peak if peak else 0.0)
  if warmup <= 0:
    return cosine
  return optax.join_schedules([rise, cosine], [warmup])


# --- Which parameters are decayed ----------------------------------------------------------

def _names(path):
  return [getattr(p, 'key', getattr(p, 'name', str(p))) for p in path]


def _flip_decays(names):
  # t5x/train_state_initializer.py:74-82: utils/opt_util.py's filter_bias_and_norm and
  # filter_posembed; filter_cls_and_posembed is never called, so the class token and
  # logit_scale are decayed.
  return names[-1] not in ('bias', 'scale') and 'pos_embedding' not in names


def _open_clip_decays(names):
  # open_clip_train/main.py: p.ndim < 2 or 'bn', 'ln', 'bias' or 'logit_scale' in the name
  # is not decayed. Here stacked layers add an axis, so the rule is by name: open_clip's 1-D
  # tensors are biases, norm scales and the class embedding.
  return names[-1] not in ('bias', 'scale', 'cls', 'logit_scale')


def _aclip_decays(names):
  # A-CLIP's main.py:111-118: p.ndim < 2 or 'bias', 'ln' or 'bn' in the name is not
  # decayed. Its image tower is timm's, whose class token is [1, 1, D]: decayed, unlike
  # open_clip's 1-D class embedding; logit_scale is 0-D.
  return names[-1] not in ('bias', 'scale', 'logit_scale')


def _kernels_decay(names):
  return names[-1] in ('kernel', 'embedding')


DECAY_SETS: Dict[str, Callable] = {
    'flip': _flip_decays,
    'open_clip': _open_clip_decays,
    'aclip': _aclip_decays,
    'kernels': _kernels_decay,
}


def _check_decay_set(config):
  if config.decay_set not in DECAY_SETS:
    raise ValueError(f'config.decay_set={config.decay_set!r}: expected one of '
                     f'{sorted(DECAY_SETS)}')


def _decay_set_of(config) -> str:
  return config.decay_set if config.exclude_wd else 'all'


def weight_decay_mask(params, decay_set: str = 'flip', frozen=()):
  """True where AdamW decays: the named set (configs/default.py: decay_set; 'all' for
  exclude_wd=False), frozen parameters never."""
  decays = (lambda names: True) if decay_set == 'all' else DECAY_SETS[decay_set]
  # The sigmoid loss's logit bias is never decayed: pulling it to 0 from SigLIP's -10 would
  # undo the prior of one positive in B pairs that it holds.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (decays(_names(path)) and _names(path)[-1] != 'logit_bias' and
                       not is_frozen(_names(path), frozen)), params)


def frozen_names(config):
  """Path prefixes of parameters that are never updated (A-CLIP freezes the patch
  embedding, as MoCo v3 does)."""
  if config.model.model_img.freeze_patch_embedding:
    return (('image', 'patch_embedding'),)
  return ()


def is_frozen(names, frozen) -> bool:
  return any(tuple(names[:len(prefix)]) == prefix for prefix in frozen)


def describe_decay(config, params) -> str:
  """One line per group: which tensors (by leaf name) are decayed, and how many values."""
  frozen_paths = frozen_names(config)
  mask = weight_decay_mask(params, _decay_set_of(config), frozen_paths)
  groups = {True: {}, False: {}}
  frozen = {}
  for (path, leaf), decayed in zip(jax.tree_util.tree_leaves_with_path(params),
                                   jax.tree.leaves(mask)):
    names = _names(path)
    target = frozen if is_frozen(names, frozen_paths) else groups[bool(decayed)]
    count, size = target.get(names[-1], (0, 0))
    target[names[-1]] = (count + 1, size + int(np.prod(leaf.shape)))

  def line(group):
    total = sum(size for _, size in group.values())
    parts = ', '.join(f'{name} x{count} ({size:,})' for name, (count, size) in
                      sorted(group.items()))
    return f'{total:,} values: {parts or "none"}'

  text = (f'Weight decay {config.opt.weight_decay} on the {config.decay_set!r} set'
          f'{"" if config.exclude_wd else " (exclude_wd=False: every parameter)"}\n'
          f'  decayed      {line(groups[True])}\n  not decayed  {line(groups[False])}')
  if frozen:
    text += f'\n  frozen       {line(frozen)}'
  return text


# --- AdamW ---------------------------------------------------------------------------------

MU_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _check_mu_dtype(field, value, allowed):
  if value not in allowed:
    raise ValueError(f'config.{field}={value!r}: expected one of {sorted(allowed)}')


def make_optimizer(config) -> optax.GradientTransformation:
  if config.opt_type != 'adamw':
    raise ValueError(f"config.opt_type={config.opt_type!r}: only 'adamw' is supported")
  _check_mu_dtype('opt_mu_dtype', config.opt_mu_dtype, MU_DTYPES)
  _check_mu_dtype('opt.mu_dtype', config.opt.mu_dtype, ('', *MU_DTYPES))
  _check_decay_set(config)
  frozen = frozen_names(config)
  parts = []
  if config.opt.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.opt.clip_grad_norm))
  # opt_mu_dtype is FLIP's field and behaves as FLIP's AdamW does: the moment is created in
  # it, but the cast back after each update is commented out (utils/adamw.py:143), so from
  # the first update on it is float32. opt.mu_dtype keeps it in its dtype throughout.
  mu_dtype = MU_DTYPES[config.opt.mu_dtype] if config.opt.mu_dtype else jnp.float32
  parts.append(optax.adamw(
      learning_rate_schedule(config), b1=config.opt.b1, b2=config.opt.b2, eps=config.opt.eps,
      mu_dtype=mu_dtype, weight_decay=config.opt.weight_decay,
      mask=lambda p: weight_decay_mask(p, _decay_set_of(config), frozen)))
  if frozen:
    parts.append(optax.masked(optax.set_to_zero(), lambda p: jax.tree_util.tree_map_with_path(
        lambda path, _: is_frozen(_names(path), frozen), p)))
  return optax.chain(*parts)


def log_decay_groups(config, params):
  """The start-up account of the optimiser: schedule in steps, then the decay groups."""
  total, warmup = total_steps(config), warmup_steps(config)
  logging.info('AdamW: %d steps (%d per virtual epoch), warmup %d, peak learning rate %.3g, '
               'betas (%g, %g), eps %g', total, steps_per_epoch(config), warmup,
               peak_learning_rate(config), config.opt.b1, config.opt.b2, config.opt.eps)
  for line in describe_decay(config, params).splitlines():
    logging.info('%s', line)
  if warmup > total:
    logging.warning('The warmup (%d steps) is longer than the run (%d steps): the learning '
                    'rate ends at %.3g, never reaching its peak %.3g', warmup, total,
                    float(learning_rate_schedule(config)(total - 1)),
                    peak_learning_rate(config))
