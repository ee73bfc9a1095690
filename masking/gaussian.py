"""GLIP's Gaussian masking: a random subset biased toward the image centre.

Each patch scores uniform noise plus the density of a centred 2-D normal at its grid
coordinate (`linspace(-1, 1, G)` per axis); the top K scores are kept. As in GLIP, `sigma`
is the covariance diagonal (a variance): at sigma 0.2 the density peaks at 1 / (2 pi 0.2),
about 0.80, so at 50% masking the centre is kept almost always and the corners about a
third of the time; large sigma flattens the bias toward uniform masking.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def centre_density(grid_hw: Sequence[int], sigma: float) -> np.ndarray:
  """Density of N(0, diag(sigma, sigma)) at each patch's coordinate, row-major [gh * gw]."""
  if sigma <= 0:
    raise ValueError(f'sigma={sigma}: must be positive')
  gh, gw = grid_hw
  ys, xs = np.meshgrid(np.linspace(-1, 1, gh), np.linspace(-1, 1, gw), indexing='ij')
  density = np.exp(-(xs ** 2 + ys ** 2) / (2 * sigma)) / (2 * np.pi * sigma)
  return density.reshape(-1).astype(np.float32)


def gaussian_keep(rng, batch_size: int, grid_hw: Sequence[int], num_keep: int,
                  sigma: float = 0.2):
  """Returns `keep_idx` int32 [batch_size, num_keep], centre patches favoured."""
  density = centre_density(grid_hw, sigma)
  if not 1 <= num_keep <= density.size:
    raise ValueError(f'num_keep={num_keep} must lie in [1, {density.size}]')
  scores = jax.random.uniform(rng, (batch_size, density.size)) + density
  _, keep_idx = jax.lax.top_k(scores, num_keep)
  return keep_idx.astype(jnp.int32)
