"""Masking Clusters: drop whole clusters of visually similar patches.

Patch features are raw pixels, standardised per patch and L2-normalised, so that a dot
product is a Pearson correlation. A few random anchor patches are drawn per image; a patch
is masked when its similarity to any anchor exceeds `threshold` (the anchors mask
themselves). How many patches that masks varies per image, so the output has a static K:
visible patches first, in random order, then masked ones as padding with `valid=False`.
At least one patch per image stays visible.

Unlike the official release, padding is real key padding (see models/vit.py) and the
threshold can be calibrated to a target mask ratio (`calibrate_threshold`).
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def num_anchors(num_patches: int, anchor_ratio: float) -> int:
  """N - floor(N * (1 - anchor_ratio)): 6 of 196 at 0.03."""
  if not 0.0 < anchor_ratio < 1.0:
    raise ValueError(f'anchor_ratio={anchor_ratio}: expected a fraction in (0, 1)')
  return max(1, num_patches - math.floor(num_patches * (1.0 - anchor_ratio) + 1e-6))


def patch_features(images, patch_size: Sequence[int]):
  """[B, H, W, C] -> standardised, L2-normalised pixels per patch [B, N, ph * pw * C]."""
  batch, height, width, channels = images.shape
  ph, pw = patch_size
  if height % ph or width % pw:
    raise ValueError(f'images of {height}x{width} do not split into {ph}x{pw} patches')
  x = images.astype(jnp.float32).reshape(batch, height // ph, ph, width // pw, pw, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, (height // ph) * (width // pw), -1)
  x = x - x.mean(axis=-1, keepdims=True)
  x = x / jnp.sqrt(x.var(axis=-1, keepdims=True) + 1e-6)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def cluster_mask(rng, images, patch_size: Sequence[int], anchor_ratio: float = 0.03,
                 threshold=0.5):
  """bool [B, N]: True where a patch is masked (similar to some random anchor)."""
  features = patch_features(images, patch_size)
  batch, n, _ = features.shape
  _, anchors = jax.lax.top_k(jax.random.uniform(rng, (batch, n)),
                             num_anchors(n, anchor_ratio))
  anchor_features = jnp.take_along_axis(features, anchors[..., None], axis=1)
  similarity = jnp.einsum('bnd,bad->bna', features, anchor_features)
  return (similarity > threshold).any(axis=-1)


def cluster_keep(rng, images, patch_size: Sequence[int], num_keep: int,
                 anchor_ratio: float = 0.03, threshold=0.5):
  """Returns (`keep_idx` int32 [B, num_keep], `valid` bool [B, num_keep])."""
  mask_rng, order_rng = jax.random.split(rng)
  masked = cluster_mask(mask_rng, images, patch_size, anchor_ratio, threshold)
  if not 1 <= num_keep <= masked.shape[1]:
    raise ValueError(f'num_keep={num_keep} must lie in [1, {masked.shape[1]}]')
  # Visible patches outrank masked ones; noise orders each group randomly.
  scores = jax.random.uniform(order_rng, masked.shape) + (~masked).astype(jnp.float32) * 2
  _, keep_idx = jax.lax.top_k(scores, num_keep)
  valid = ~jnp.take_along_axis(masked, keep_idx, axis=1)
  # An image whose every patch joined a cluster still shows one, so it is never encoded
  # from the class token alone.
  valid = valid.at[:, 0].set(True)
  return keep_idx.astype(jnp.int32), valid


def calibrate_threshold(rng, images, patch_size: Sequence[int], anchor_ratio: float,
                        target_mask_ratio: float, iterations: int = 20) -> float:
  """Bisects the threshold (outside jit) so that the mean masked fraction hits the target.

  The masked fraction falls as the threshold rises, so bisection on [-1, 1] converges.
  """
  if not 0.0 < target_mask_ratio < 1.0:
    raise ValueError(f'target_mask_ratio={target_mask_ratio}: expected a fraction in (0, 1)')
  ratio_at = jax.jit(lambda t: cluster_mask(rng, images, patch_size, anchor_ratio, t).mean())
  low, high = -1.0, 1.0
  for _ in range(iterations):
    middle = (low + high) / 2
    if float(ratio_at(jnp.float32(middle))) > target_mask_ratio:
      low = middle
    else:
      high = middle
  return float(np.float32((low + high) / 2))
