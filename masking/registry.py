"""Chooses a masking policy by name from the config.

A policy maps `(rng, images)` to `(keep_idx, valid)` with static shapes, or to `None` when
every patch is kept. It is a pure function, safe to call inside `jax.jit`.
"""

import dataclasses
import math
from typing import Callable, Optional, Tuple

import jax

from masking.random import random_keep

Keep = Optional[Tuple[jax.Array, Optional[jax.Array]]]


def num_keep(num_patches: int, mask_ratio: float) -> int:
  """K = max(1, floor(N * (1 - mask_ratio))), robust to ratios like 0.9 in binary floats."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f'mask_ratio={mask_ratio}: expected a fraction in [0, 1)')
  return max(1, math.floor(num_patches * (1.0 - mask_ratio) + 1e-6))


@dataclasses.dataclass(frozen=True)
class MaskingPolicy:
  name: str
  grid_hw: Tuple[int, int]
  num_keep: int  # tokens the image tower encodes, padding included
  sample: Callable[[jax.Array, jax.Array], Keep]

  @property
  def num_patches(self) -> int:
    return self.grid_hw[0] * self.grid_hw[1]

  def __call__(self, rng, images) -> Keep:
    return self.sample(rng, images)


def _none(masking, mask_ratio, grid_hw, patch_size):
  del masking, mask_ratio, patch_size
  return MaskingPolicy('none', grid_hw, grid_hw[0] * grid_hw[1], lambda rng, images: None)


def _random(masking, mask_ratio, grid_hw, patch_size):
  del masking, patch_size
  n = grid_hw[0] * grid_hw[1]
  k = num_keep(n, mask_ratio)

  def sample(rng, images):
    return random_keep(rng, images.shape[0], n, k), None

  return MaskingPolicy('random', grid_hw, k, sample)


POLICIES = {'none': _none, 'random': _random}


def grid_of(config) -> Tuple[int, int]:
  """Patch grid (rows, columns) of a run config."""
  ph, pw = config.model.model_img.patches.size
  size = config.image_size
  if size % ph or size % pw:
    raise ValueError(f'config.image_size={size} is not a multiple of '
                     f'config.model.model_img.patches.size={tuple((ph, pw))}')
  return size // ph, size // pw


def get_policy(config, train: bool = True) -> MaskingPolicy:
  """The policy for training, or for evaluation (`none` unless masking.at_eval is set).

  A mask ratio of 0 keeps every patch, whatever the policy, so unmasked tuning of a
  masked run is a single override.
  """
  img = config.model.model_img
  name = img.masking.policy
  if name not in POLICIES:
    raise ValueError(f'config.model.model_img.masking.policy={name!r}: unknown policy; '
                     f'expected one of {sorted(POLICIES)}')
  grid_hw = grid_of(config)
  if (not train and not img.masking.at_eval) or img.mask_ratio == 0.0:
    name = 'none'
  return POLICIES[name](img.masking, img.mask_ratio, grid_hw, tuple(img.patches.size))
