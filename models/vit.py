"""ViT image tower that encodes only the patches a masking policy keeps."""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.transformer import TOKENS, XAVIER, Encoder, layer_norm, logical, place

Dtype = Any
POOLINGS = ('mean', 'mean_patches', 'cls')


def sincos_2d(grid_hw: Sequence[int], width: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, [gh * gw, width], rows in row-major patch order.

  As FLIP's table: the column (x) code fills the first half of the channels, the row (y)
  code the second, each as [sin, cos] of the position times 1 / 10000^(i / (width / 4)).
  """
  if width % 4:
    raise ValueError(f'sin-cos position embedding needs a width divisible by 4, got {width}')
  gh, gw = grid_hw
  omega = 1.0 / 10000 ** (np.arange(width // 4) / (width // 4))
  ys, xs = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64),
                       indexing='ij')

  def embed(pos):
    angles = np.einsum('n,d->nd', pos.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([embed(xs), embed(ys)], axis=1).astype(np.float32)


def gather_tokens(x: jax.Array, keep_idx: jax.Array) -> jax.Array:
  """Selects `keep_idx` [B, K] rows of `x` [B, N, D] per example."""
  with jax.named_scope('masking_gather'):  # a profile's name for it
    return jnp.take_along_axis(x, keep_idx[..., None], axis=1)


def masked_mean(x: jax.Array, valid: Optional[jax.Array]) -> jax.Array:
  """Mean over axis 1 of [B, K, D], counting only `valid` [B, K] tokens."""
  if valid is None:
    return x.mean(axis=1)
  weights = valid.astype(x.dtype)[..., None]
  return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


def patch_kernel_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform over the conv kernel viewed as a [h * w * c, width] matrix (FLIP)."""
  return nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2),
                                          out_axis=3)(key, shape, dtype)


class VisionTower(nn.Module):
  """Conv patch embedding, position embedding, masking gather, class token, encoder, pooling.

  `keep_idx` [B, K] selects patches by row-major index after position embeddings are added;
  `valid` [B, K] marks padding (False) that is excluded from attention and pooling.
  `pool`: `mean` averages every encoded token, the class token included (FLIP);
  `mean_patches` the patch tokens only; `cls` reads the class token.

  FLIP's tower (the defaults) has a patch-embedding bias and a fixed table for the patches
  only; open_clip's has no bias, a learned table whose row 0 is the class token's
  (`cls_position`), and a LayerNorm before the encoder (`pre_norm`, open_clip's ln_pre).
  """
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  sincos: bool = True
  remat_policy: str = 'none'
  scan_layers: bool = True
  dtype: Dtype = jnp.float32
  pool: str = 'mean'
  projection_bias: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  patch_bias: bool = True
  cls_position: bool = False
  pre_norm: bool = False
  activation: str = 'gelu_tanh'
  norm_eps: float = 1e-6
  attention: str = 'auto'  # models/transformer.py: ATTENTION
  scan_unroll: bool = True
  recompute: bool = False  # norms and activations, in the backward pass (transformer.py)
  freeze_patch_embedding: bool = False  # A-CLIP's: the optimiser leaves it alone too

  @nn.compact
  def __call__(self, images, keep_idx=None, valid=None, cls_attention=False, train=False):
    """Embeddings [B, E]; with `cls_attention`, also the class token's attention to each
    encoded patch [B, K] (to every patch in row-major order when keep_idx is None)."""
    if self.pool not in POOLINGS:
      raise ValueError(f'image pooling {self.pool!r}: expected one of {POOLINGS}')
    if self.cls_position and self.sincos:
      raise ValueError('a position for the class token needs a learned table (sincos=False)')
    x = nn.Conv(self.hidden_size, tuple(self.patch_size), strides=tuple(self.patch_size),
                padding='VALID', dtype=self.dtype, name='patch_embedding',
                use_bias=self.patch_bias,
                kernel_init=logical(patch_kernel_init, (None, None, None, 'embed')),
                bias_init=logical(nn.initializers.zeros, ('embed',)))(images.astype(self.dtype))
    if self.freeze_patch_embedding:
      x = jax.lax.stop_gradient(x)
    batch, gh, gw, width = x.shape
    x = place(x.reshape(batch, gh * gw, width), TOKENS)
    if self.sincos:
      pos = jnp.asarray(sincos_2d((gh, gw), width))[None]
    else:
      pos = self.param('pos_embedding',
                       logical(nn.initializers.normal(0.02), (None, None, 'embed')),
                       (1, int(self.cls_position) + gh * gw, width))
    cls = self.param('cls', logical(nn.initializers.normal(0.02), (None, None, 'embed')),
                     (1, 1, width)).astype(self.dtype)
    if self.cls_position:
      cls, pos = cls + pos[:, :1].astype(self.dtype), pos[:, 1:]
    x = x + pos.astype(self.dtype)
    if keep_idx is not None:
      x = gather_tokens(x, keep_idx)
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width)), x], 1)
    if self.pre_norm:
      x = layer_norm(self.dtype, 'norm_pre', self.norm_eps, self.recompute)(x)
    key_mask = None
    if valid is not None:
      key_mask = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1)
    x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.remat_policy, self.dtype,
                cls_attention, self.scan_layers, self.dropout_rate,
                self.attention_dropout_rate, self.droppath_rate, deterministic=not train,
                activation=self.activation, norm_eps=self.norm_eps, attention=self.attention,
                scan_unroll=self.scan_unroll, recompute=self.recompute,
                name='encoder')(x, key_mask)
    if cls_attention:
      x, attention = x
    if self.pool == 'mean':
      pooled = masked_mean(x, key_mask)
    elif self.pool == 'mean_patches':
      pooled = masked_mean(x[:, 1:], valid)
    else:
      pooled = x[:, 0]
    embedding = nn.Dense(self.embed_dim, use_bias=self.projection_bias, dtype=self.dtype,
                         name='projection',
                         kernel_init=logical(XAVIER, ('embed', 'joint')),
                         bias_init=logical(nn.initializers.zeros, ('joint',)))(pooled)
    embedding = place(embedding, ('batch', 'joint'))
    return (embedding, attention) if cls_attention else embedding
