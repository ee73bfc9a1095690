"""FLIP's random masking: keep a uniformly random subset of patches."""

import jax
import jax.numpy as jnp


def random_keep(rng, batch_size: int, num_patches: int, num_keep: int):
  """Returns `keep_idx` int32 [batch_size, num_keep]: distinct patch indices per row.

  The top-k of uniform noise is a uniformly random k-subset; `lax.top_k` is cheaper than a
  full argsort of the noise.
  """
  if not 1 <= num_keep <= num_patches:
    raise ValueError(f'num_keep={num_keep} must lie in [1, num_patches={num_patches}]')
  noise = jax.random.uniform(rng, (batch_size, num_patches))
  _, keep_idx = jax.lax.top_k(noise, num_keep)
  return keep_idx.astype(jnp.int32)
