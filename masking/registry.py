"""Chooses a masking policy by name from the config.

A policy maps `(rng, images, scores)` to `(keep_idx, valid)` with static shapes, or to
`None` when every patch is kept. It is a pure function, safe to call inside `jax.jit`.
`scores` (class-token attention of the EMA teacher) is read by the attentive policy only.
"""

import dataclasses
import math
from typing import Callable, Optional, Tuple

import jax

from masking.attentive import attentive_keep, attentive_num_keep
from masking.cluster import cluster_keep
from masking.gaussian import gaussian_keep
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
  sample: Callable[..., Keep]
  needs_scores: bool = False  # reads the EMA teacher's attention (attentive)
  # How the encoded count relates to mask_ratio, where it is not simply num_keep patches.
  count_note: str = ''

  @property
  def num_patches(self) -> int:
    return self.grid_hw[0] * self.grid_hw[1]

  def __call__(self, rng, images, scores=None) -> Keep:
    if self.needs_scores and scores is None:
      raise ValueError(f'the {self.name} policy needs teacher attention scores')
    return self.sample(rng, images, scores)


def _none(masking, mask_ratio, grid_hw, patch_size):
  del masking, mask_ratio, patch_size
  return MaskingPolicy('none', grid_hw, grid_hw[0] * grid_hw[1],
                       lambda rng, images, scores: None)


def _random(masking, mask_ratio, grid_hw, patch_size):
  del masking, patch_size
  n = grid_hw[0] * grid_hw[1]
  k = num_keep(n, mask_ratio)

  def sample(rng, images, scores):
    del scores
    return random_keep(rng, images.shape[0], n, k), None

  return MaskingPolicy('random', grid_hw, k, sample)


def _gaussian(masking, mask_ratio, grid_hw, patch_size):
  del patch_size
  k = num_keep(grid_hw[0] * grid_hw[1], mask_ratio)
  if masking.sigma <= 0:
    raise ValueError(f'config.model.model_img.masking.sigma={masking.sigma}: must be positive')

  def sample(rng, images, scores):
    del scores
    return gaussian_keep(rng, images.shape[0], grid_hw, k, masking.sigma), None

  return MaskingPolicy('gaussian', grid_hw, k, sample)


def _cluster(masking, mask_ratio, grid_hw, patch_size):
  del mask_ratio  # the masked share varies per image; K comes from min_mask_ratio
  n = grid_hw[0] * grid_hw[1]
  try:
    k = num_keep(n, masking.min_mask_ratio)
  except ValueError as e:
    raise ValueError(f'config.model.model_img.masking.min_mask_ratio: {e}') from e
  if not 0.0 < masking.anchor_ratio < 1.0:
    raise ValueError(f'config.model.model_img.masking.anchor_ratio={masking.anchor_ratio}: '
                     'expected a fraction in (0, 1)')

  def sample(rng, images, scores):
    del scores
    return cluster_keep(rng, images, patch_size, k, masking.anchor_ratio, masking.threshold)

  return MaskingPolicy('cluster', grid_hw, k, sample, count_note=(
      f'up to {k} of {n} patches encoded, a number that varies per image (the cap from '
      f'min_mask_ratio {masking.min_mask_ratio:g}; the threshold sets the mean, logged as '
      'kept_fraction_mean)'))


def _attentive(masking, mask_ratio, grid_hw, patch_size):
  del patch_size
  gh, gw = grid_hw
  if masking.block < 1 or gh % masking.block or gw % masking.block:
    raise ValueError(f'config.model.model_img.masking.block={masking.block} does not tile '
                     f'the {gh}x{gw} patch grid')
  if masking.temperature < 0:
    raise ValueError(f'config.model.model_img.masking.temperature={masking.temperature}: '
                     'must be >= 0')
  wanted = num_keep(gh * gw, mask_ratio)

  def sample(rng, images, scores):
    del images
    return attentive_keep(rng, scores, grid_hw, wanted, masking.block,
                          masking.temperature), None

  kept = attentive_num_keep(wanted, masking.block)
  note = (f'{kept} of {gh * gw} patches encoded (whole {masking.block}x{masking.block} blocks '
          f'covering the {wanted} that mask_ratio {mask_ratio:g} keeps)' if kept != wanted
          else '')
  return MaskingPolicy('attentive', grid_hw, kept, sample, needs_scores=True,
                       count_note=note)


def describe(policy: MaskingPolicy) -> str:
  """E.g. 'random masking, 98 of 196 patches encoded'."""
  if policy.name == 'none':
    return f'no masking, all {policy.num_patches} patches encoded'
  return f'{policy.name} masking, ' + (
      policy.count_note or f'{policy.num_keep} of {policy.num_patches} patches encoded')


POLICIES = {'none': _none, 'random': _random, 'gaussian': _gaussian, 'cluster': _cluster,
            'attentive': _attentive}


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
  try:
    return POLICIES[name](img.masking, img.mask_ratio, grid_hw, tuple(img.patches.size))
  except ValueError as e:
    if str(e).startswith('config.'):
      raise
    raise ValueError(f'config.model.model_img.{e}') from e
