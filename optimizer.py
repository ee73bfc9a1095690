"""AdamW with FLIP's schedule: linear warmup then cosine decay, by virtual epochs."""

from typing import Dict

import jax
import jax.numpy as jnp
import optax

DECAYED_NAMES = ('kernel', 'embedding')


def steps_of(config) -> Dict[str, int]:
  """Step counts of the schedule and of the periodic actions given in virtual epochs."""
  steps_per_epoch = config.samples_per_epoch / config.batch_size
  total = config.total_steps if config.total_steps > 0 else int(config.num_epochs *
                                                                steps_per_epoch)

  def period(epochs):
    return max(1, round(epochs * steps_per_epoch)) if epochs > 0 else 0

  return {'total': max(total, 1), 'warmup': int(config.warmup_epochs * steps_per_epoch),
          'checkpoint': (config.checkpoint_every_steps if config.checkpoint_every_steps > 0
                         else period(config.save_every_epochs)),
          'pictures': period(config.vis_every_epochs)}


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
  """True where AdamW decays: kernels and the token embedding table; not biases, norms, the
  class token, position embeddings or the logit scale (by name: stacked layers give a bias
  two axes)."""
  def decays(path, leaf):
    del leaf
    return path[-1].key in DECAYED_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


MU_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def make_optimizer(config) -> optax.GradientTransformation:
  if config.opt_type != 'adamw':
    raise ValueError(f"config.opt_type={config.opt_type!r}: only 'adamw' is supported")
  if config.opt_mu_dtype not in MU_DTYPES:
    raise ValueError(f'config.opt_mu_dtype={config.opt_mu_dtype!r}: expected one of '
                     f'{sorted(MU_DTYPES)}')
  parts = []
  if config.opt.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.opt.clip_grad_norm))
  parts.append(optax.adamw(learning_rate_schedule(config), b1=config.opt.b1, b2=config.opt.b2,
                           mu_dtype=MU_DTYPES[config.opt_mu_dtype],
                           weight_decay=config.opt.weight_decay,
                           mask=weight_decay_mask if config.exclude_wd else None))
  return optax.chain(*parts)
