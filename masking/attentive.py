"""A-CLIP's attentive masking: keep the patches an EMA teacher attends to most.

`scores` [B, N] are class-token attention weights of the EMA image tower on the unmasked
image (averaged over heads and layers). They are pooled over `block` x `block` blocks, the
top blocks are kept and expanded back to patches, so K is a multiple of block**2 (100 of
196 patches at 50% masking with 2x2 blocks). With `temperature > 0` blocks are sampled
without replacement in proportion to score**(1 / temperature) (Gumbel top-k), so several
views of one image differ.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp


def blocks_kept(num_keep: int, block: int) -> int:
  return math.ceil(num_keep / block ** 2)


def attentive_num_keep(num_keep: int, block: int) -> int:
  """Patches actually kept: whole blocks covering at least `num_keep` patches."""
  return blocks_kept(num_keep, block) * block ** 2


def attentive_keep(rng, scores, grid_hw: Sequence[int], num_keep: int, block: int = 2,
                   temperature: float = 0.0):
  """Returns `keep_idx` int32 [B, attentive_num_keep(num_keep, block)]."""
  gh, gw = grid_hw
  if block < 1 or gh % block or gw % block:
    raise ValueError(f'block={block} does not tile the {gh}x{gw} patch grid')
  if temperature < 0:
    raise ValueError(f'temperature={temperature}: must be >= 0')
  batch = scores.shape[0]
  bh, bw = gh // block, gw // block
  k = blocks_kept(num_keep, block)
  if not 1 <= k <= bh * bw:
    raise ValueError(f'num_keep={num_keep} needs {k} blocks; the grid has {bh * bw}')
  pooled = scores.astype(jnp.float32).reshape(batch, bh, block, bw, block).mean((2, 4))
  pooled = pooled.reshape(batch, bh * bw)
  if temperature > 0:
    pooled = (jnp.log(jnp.maximum(pooled, 1e-12)) / temperature
              + jax.random.gumbel(rng, pooled.shape))
  _, chosen = jax.lax.top_k(pooled, k)
  rows, cols = chosen // bw, chosen % bw
  dy, dx = jnp.meshgrid(jnp.arange(block), jnp.arange(block), indexing='ij')
  patch_rows = rows[..., None] * block + dy.reshape(-1)
  patch_cols = cols[..., None] * block + dx.reshape(-1)
  return (patch_rows * gw + patch_cols).reshape(batch, k * block ** 2).astype(jnp.int32)
