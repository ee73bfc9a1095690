"""Pre-LN Transformer encoder shared by the image and text towers.

Kernels carry logical axis names (`embed`, `mlp`, `heads`, `kv`) and so do the activations
(`batch`, `length` besides), so that a rules list can place both on a device mesh without
touching the model (trainer/partitioning.py).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

REMAT_POLICIES = {
    'none': None,
    # Save only the weight matmuls' outputs; recompute attention and elementwise ops.
    'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'full': jax.checkpoint_policies.nothing_saveable,
    'actcp': jax.checkpoint_policies.nothing_saveable,  # FLIP's name for `full`
}

# FLIP's initialisers. Its q, k and v are three [D, D] kernels where other code fuses one
# [D, 3D]: they are drawn at scale 0.5 (HeadsDense) to keep the fused kernel's variance.
XAVIER = nn.initializers.xavier_uniform()


TOKENS = ('batch', 'length', 'embed')

# The MLP's nonlinearity: FLIP's is Flax's tanh approximation, open_clip's the exact erf
# GELU, and OpenAI's CLIP weights (open_clip's `-quickgelu` models) need x * sigmoid(1.702 x).
ACTIVATIONS = {
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def logical(init, names):
  return nn.with_logical_partitioning(init, names)


def place(x, names):
  """Pins an activation to the mesh by logical axis names (a no-op outside partitioning.jit)."""
  return nn.with_logical_constraint(x, names)


class HeadsDense(nn.Module):
  """x [..., *in] @ kernel [*in, *features] + bias, contracting x's last `len(in)` axes.

  The kernel is created in its full shape, so each axis carries its logical name also
  inside the initialiser (DenseGeneral initialises a flattened kernel, which cannot take a
  per-axis sharding constraint).
  """
  features: Sequence[int]
  num_contracted: int
  kernel_names: Sequence[Optional[str]]
  bias_names: Sequence[Optional[str]]
  dtype: Dtype = jnp.float32
  scale: float = 1.0  # of the fan-average uniform initialiser (0.5 for q, k, v)

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    contracted = x.shape[x.ndim - self.num_contracted:]
    n_in = len(contracted)
    init = nn.initializers.variance_scaling(
        self.scale, 'fan_avg', 'uniform', in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, n_in + len(features))))
    kernel = self.param('kernel', logical(init, tuple(self.kernel_names)),
                        contracted + features)
    bias = self.param('bias', logical(nn.initializers.zeros, tuple(self.bias_names)),
                      features)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.tensordot(x, kernel, axes=n_in) + bias


class Attention(nn.Module):
  """Multi-head self-attention; `mask` (broadcast to [B, heads, queries, keys]) is True where
  a query may attend to a key.

  With `cls_attention`, also returns the attention of token 0 (the class token) to every
  other token, averaged over heads: [B, L - 1].
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  cls_attention: bool = False
  dropout_rate: float = 0.0  # on the attention weights, in training
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'hidden size {width} does not divide into {self.num_heads} heads')
    head_dim = width // self.num_heads

    def project(name):
      return HeadsDense((self.num_heads, head_dim), 1, ('embed', 'heads', 'kv'),
                        ('heads', 'kv'), self.dtype, scale=0.5, name=name)(x)

    query, key, value = (place(project(name), ('batch', 'length', 'heads', 'kv'))
                         for name in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) / jnp.sqrt(head_dim).astype(self.dtype)
    logits = logits.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attended = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', attended, value)
    out = place(HeadsDense((width,), 2, ('heads', 'kv', 'embed'), ('embed',), self.dtype,
                           name='out')(out), TOKENS)
    if self.cls_attention:
      return out, weights[:, :, 0, 1:].astype(jnp.float32).mean(axis=1)
    return out


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True
  activation: str = 'gelu_tanh'

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    dropout = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
    x = nn.Dense(self.mlp_dim, dtype=self.dtype,
                 kernel_init=logical(XAVIER, ('embed', 'mlp')),
                 bias_init=logical(nn.initializers.zeros, ('mlp',)))(x)
    x = place(dropout(ACTIVATIONS[self.activation](x)), ('batch', 'length', 'mlp'))
    x = nn.Dense(width, dtype=self.dtype, kernel_init=logical(XAVIER, ('mlp', 'embed')),
                 bias_init=logical(nn.initializers.zeros, ('embed',)))(x)
    return place(dropout(x), TOKENS)


def drop_path(module: nn.Module, x, rate, skip: bool):
  """Stochastic depth: zeroes a residual branch per example with probability `rate` (which
  may be traced: it grows with depth inside a scan), scaling the rest by 1 / (1 - rate)."""
  if skip:
    return x
  keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - rate, (x.shape[0], 1, 1))
  return jnp.where(keep, x / jnp.maximum(1.0 - rate, 1e-6).astype(x.dtype), 0).astype(x.dtype)


def layer_norm(dtype, name=None, epsilon=1e-6):
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name,
                      scale_init=logical(nn.initializers.ones, ('embed',)),
                      bias_init=logical(nn.initializers.zeros, ('embed',)))


class EncoderBlock(nn.Module):
  """One pre-LN block in nn.scan's form: (tokens, attention sum), attention mask, droppath
  rate -> (same, None).

  With `cls_attention` the class token's attention to the other tokens, averaged over
  heads, is added to the running sum. Dropout follows FLIP: on the attention weights, after
  the MLP's activation, and on each branch's output, then drop-path on each branch.
  """
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  cls_attention: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  deterministic: bool = True
  droppath: bool = False  # whether droppath_rate may be non-zero (static)
  activation: str = 'gelu_tanh'
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, carry, mask=None, droppath_rate=0.0):
    x, attention_sum = carry
    attended = Attention(self.num_heads, self.dtype, self.cls_attention,
                         self.attention_dropout_rate, self.deterministic, name='attention')(
                             layer_norm(self.dtype, 'norm_attention', self.norm_eps)(x), mask)
    if self.cls_attention:
      attended, cls_weights = attended
      attention_sum = attention_sum + cls_weights
    attended = nn.Dropout(self.dropout_rate)(attended, deterministic=self.deterministic)
    skip_droppath = self.deterministic or not self.droppath
    x = x + drop_path(self, attended, droppath_rate, skip_droppath)
    y = MlpBlock(self.mlp_dim, self.dtype, self.dropout_rate, self.deterministic,
                 self.activation, name='mlp')(layer_norm(self.dtype, 'norm_mlp', self.norm_eps)(x))
    x = x + drop_path(self, y, droppath_rate, skip_droppath)
    return (place(x, TOKENS), attention_sum), None


class Encoder(nn.Module):
  """A stack of pre-LN blocks followed by a final LayerNorm.

  With `scan_layers` the blocks are one nn.scan over parameters stacked along a leading
  `layers` axis (`blocks`): one block is compiled, not num_layers, and under remat each layer
  keeps exactly what its policy saves. Unrolled (`block_00`, `block_01`, ...), XLA may fuse
  across layers, which is faster for small models, but it also places the recomputation
  itself and can undo remat's saving (it does on CPU).

  With `cls_attention`, also returns the class token's attention to the other tokens,
  averaged over heads and layers; a running sum, so no layer's map is kept. `causal` lets
  each token attend only to itself and the tokens before it (open_clip's text tower).
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  remat_policy: str = 'none'
  dtype: Dtype = jnp.float32
  cls_attention: bool = False
  scan_layers: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  # Drop-path rate of the last block; block i gets droppath_rate * i / (num_layers - 1).
  droppath_rate: float = 0.0
  deterministic: bool = True  # False in training: dropout and drop-path apply
  activation: str = 'gelu_tanh'  # a key of ACTIVATIONS
  norm_eps: float = 1e-6  # LayerNorm epsilon (FLIP's 1e-6, open_clip's 1e-5)
  causal: bool = False

  def droppath_rates(self):
    if self.num_layers == 1 or self.droppath_rate == 0:
      return jnp.zeros((self.num_layers,), jnp.float32)
    return self.droppath_rate * jnp.arange(self.num_layers) / (self.num_layers - 1)

  @nn.compact
  def __call__(self, x, key_mask=None):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'remat_policy={self.remat_policy!r}: expected one of '
                       f'{sorted(REMAT_POLICIES)}')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation={self.activation!r}: expected one of {sorted(ACTIVATIONS)}')
    block = EncoderBlock
    if self.remat_policy != 'none':
      # Within a scan the layers cannot be merged anyway, so CSE may stay on.
      block = nn.remat(EncoderBlock, policy=REMAT_POLICIES[self.remat_policy],
                       prevent_cse=not self.scan_layers)
    args = (self.num_heads, self.mlp_dim, self.dtype, self.cls_attention, self.dropout_rate,
            self.attention_dropout_rate, self.deterministic, self.droppath_rate > 0,
            self.activation, self.norm_eps)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if self.causal:
      length = x.shape[1]
      causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
      mask = causal if mask is None else mask & causal
    x = place(x, TOKENS)
    carry = (x, jnp.zeros(x.shape[:1] + (x.shape[1] - 1,) if self.cls_attention else (),
                          jnp.float32))
    rates = self.droppath_rates()
    if self.scan_layers:
      blocks = nn.scan(block, variable_axes={'params': 0},
                       split_rngs={'params': True, 'dropout': True},
                       in_axes=(nn.broadcast, 0), length=self.num_layers,
                       metadata_params={nn.PARTITION_NAME: 'layers'})
      carry, _ = blocks(*args, name='blocks')(carry, mask, rates)
    else:
      for i in range(self.num_layers):
        carry, _ = block(*args, name=f'block_{i:02d}')(carry, mask, rates[i])
    x, total = carry
    x = layer_norm(self.dtype, 'norm_out', self.norm_eps)(x)
    return (x, total / self.num_layers) if self.cls_attention else x
