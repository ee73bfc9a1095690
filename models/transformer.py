"""Pre-LN Transformer encoder shared by the image and text towers.

Kernels carry logical axis names (`embed`, `mlp`, `heads`, `kv`) and so do the activations
(`batch`, `length` besides), so that a rules list can place both on a device mesh without
touching the model (trainer/partitioning.py).
"""

import functools
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


# How attention is computed: `xla` and `cudnn` through jax.nn.dot_product_attention (cuDNN's
# fused flash attention on Ampere and Hopper GPUs, in bfloat16 or float16), `einsum` the
# logits and softmax written out (the reference the others are tested against, and what
# dropout on the attention weights needs). `auto` picks cudnn where it runs; on a CPU,
# einsum (the demo's step is 4% faster with it than with xla, measured side by side);
# elsewhere xla.
ATTENTION = ('auto', 'xla', 'cudnn', 'einsum')


def fused_attention(query, key, value, key_mask, causal: bool, implementation: str,
                    pad_to: int = 1):
  """jax.nn.dot_product_attention of [B, T, heads, head_dim] inputs. Key padding (`key_mask`,
  True first) and the causal mask go to the kernel as lengths and a flag, which cuDNN's
  flash attention reads without a mask array; the sequence is padded to a multiple of
  `pad_to` (cuDNN trains only even lengths) and the padding cut off again."""
  batch, length = query.shape[:2]
  padding = -length % pad_to
  if padding:
    query, key, value = (jnp.pad(x, ((0, 0), (0, padding), (0, 0), (0, 0)))
                         for x in (query, key, value))
  lengths = jnp.full((batch,), length, jnp.int32)
  key_lengths = lengths if key_mask is None else key_mask.sum(axis=1, dtype=jnp.int32)
  out = jax.nn.dot_product_attention(query, key, value, is_causal=causal,
                                     query_seq_lengths=lengths,
                                     key_value_seq_lengths=key_lengths,
                                     implementation=implementation)
  return out[:, :length]


# cuDNN's flash attention, in training, takes even sequence lengths only.
CUDNN_PAD_TO = 8


@functools.lru_cache(maxsize=None)
def cudnn_attention_runs(dtype_name: str, head_dim: int) -> bool:
  """Whether cuDNN's fused attention compiles here for this dtype and head width (with and
  without the causal mask, an odd length and key padding, gradients included)."""
  if jax.default_backend() != 'gpu' or dtype_name not in ('bfloat16', 'float16'):
    return False
  if head_dim % 8 or head_dim > 128:
    return False
  x = jax.ShapeDtypeStruct((2, 197, 2, head_dim), jnp.dtype(dtype_name))
  key_mask = jax.ShapeDtypeStruct((2, 197), jnp.bool_)
  try:
    for causal in (False, True):
      loss = lambda q, k, v, m, causal=causal: fused_attention(
          q, k, v, m, causal, 'cudnn', CUDNN_PAD_TO).astype(jnp.float32).sum()
      jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, key_mask).compile()
  except Exception:  # pylint: disable=broad-except  (no cuDNN, an older GPU, a shape)
    return False
  return True


def attention_implementation(name: str, dtype, head_dim: int) -> str:
  """The implementation `name` (one of ATTENTION) stands for here."""
  if name not in ATTENTION:
    raise ValueError(f'attention={name!r}: expected one of {ATTENTION}')
  if name != 'auto':
    return name
  if cudnn_attention_runs(jnp.dtype(dtype).name, head_dim):
    return 'cudnn'
  return 'einsum' if jax.default_backend() == 'cpu' else 'xla'


class Attention(nn.Module):
  """Multi-head self-attention. `key_mask` [B, S] is True for the tokens that may be attended
  to, which come first (padding last); `causal` lets each token attend only to itself and
  the tokens before it.

  With `cls_attention`, also returns the attention of token 0 (the class token) to every
  other token, averaged over heads: [B, L - 1]. It is computed apart from the fused kernel,
  from the class token's query alone, so that the kernel keeps its speed.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  cls_attention: bool = False
  dropout_rate: float = 0.0  # on the attention weights, in training
  deterministic: bool = True
  implementation: str = 'xla'  # xla, cudnn or einsum (attention_implementation's)
  causal: bool = False

  @nn.compact
  def __call__(self, x, key_mask: Optional[jax.Array] = None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'hidden size {width} does not divide into {self.num_heads} heads')
    head_dim = width // self.num_heads

    def project(name):
      return HeadsDense((self.num_heads, head_dim), 1, ('embed', 'heads', 'kv'),
                        ('heads', 'kv'), self.dtype, scale=0.5, name=name)(x)

    query, key, value = (place(project(name), ('batch', 'length', 'heads', 'kv'))
                         for name in ('query', 'key', 'value'))
    dropout = self.dropout_rate > 0 and not self.deterministic
    weights = None
    if self.implementation == 'einsum' or dropout:
      weights = self._weights(query, key, key_mask, head_dim)
      dropped = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
      out = jnp.einsum('bhqk,bkhd->bqhd', dropped, value)
    elif self.implementation == 'cudnn':
      out = fused_attention(query, key, value, key_mask, self.causal, 'cudnn', CUDNN_PAD_TO)
    else:
      mask = None if key_mask is None else key_mask[:, None, None, :]
      out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=self.causal,
                                         implementation=self.implementation)
    out = place(HeadsDense((width,), 2, ('heads', 'kv', 'embed'), ('embed',), self.dtype,
                           name='out')(out), TOKENS)
    if self.cls_attention:
      if weights is None:  # the fused kernel gives none: the class token's query alone
        weights = self._weights(query[:, :1], key, key_mask, head_dim)
      return out, weights[:, :, 0, 1:].astype(jnp.float32).mean(axis=1)
    return out

  def _mask(self, key_mask, queries, keys):
    """[B or 1, 1, queries, keys] bool: where a query may attend to a key (None: all)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if self.causal:
      causal = jnp.tril(jnp.ones((queries, keys), bool))[None, None]
      mask = causal if mask is None else mask & causal
    return mask

  def _weights(self, query, key, key_mask, head_dim):
    """The attention weights [B, heads, queries, keys], the logits written out."""
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) / jnp.sqrt(head_dim).astype(self.dtype)
    logits = logits.astype(jnp.float32)
    mask = self._mask(key_mask, query.shape[1], key.shape[1])
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).astype(self.dtype)


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True
  activation: str = 'gelu_tanh'
  recompute: bool = False  # the activation, in the backward pass (layer_norm's note)

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    dropout = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
    x = nn.Dense(self.mlp_dim, dtype=self.dtype,
                 kernel_init=logical(XAVIER, ('embed', 'mlp')),
                 bias_init=logical(nn.initializers.zeros, ('mlp',)))(x)
    activation = ACTIVATIONS[self.activation]
    if self.recompute:
      activation = jax.checkpoint(activation)
    x = place(dropout(activation(x)), ('batch', 'length', 'mlp'))
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


# With `recompute` (model.recompute_elementwise), each LayerNorm and the MLP's activation
# are computed again in the backward pass from their inputs, which are kept anyway (the
# residual stream, the MLP's first matmul's output), where autodiff would keep their
# intermediates: three float32 copies of the tokens per norm, and two or three tensors of
# the MLP's width (erfc and exp, or tanh), the block's largest. The numbers are the same,
# gradients included; the step keeps about a fifth less and computes a few elementwise ops
# twice. The recomputation is fenced off from the forward pass (jax.checkpoint's
# optimization barriers, without which XLA merges the two again), and the fences also stop
# a TPU compiler from rematerialising what it chooses when a program does not fit: so only
# on a GPU by default (recomputes_elementwise).
def recomputes_elementwise(setting: Optional[bool]) -> bool:
  """model.recompute_elementwise as the model takes it: unset, on a GPU only."""
  return jax.default_backend() == 'gpu' if setting is None else setting


def layer_norm(dtype, name=None, epsilon=1e-6, recompute=False):
  norm = nn.remat(nn.LayerNorm) if recompute else nn.LayerNorm
  return norm(epsilon=epsilon, dtype=dtype, name=name,
              scale_init=logical(nn.initializers.ones, ('embed',)),
              bias_init=logical(nn.initializers.zeros, ('embed',)))


class EncoderBlock(nn.Module):
  """One pre-LN block in nn.scan's form: (tokens, attention sum), key mask, droppath rate ->
  (same, None).

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
  attention: str = 'xla'
  causal: bool = False
  recompute: bool = False  # norms and activation, in the backward pass (layer_norm's note)

  @nn.compact
  def __call__(self, carry, key_mask=None, droppath_rate=0.0):
    x, attention_sum = carry
    attended = Attention(self.num_heads, self.dtype, self.cls_attention,
                         self.attention_dropout_rate, self.deterministic, self.attention,
                         self.causal, name='attention')(
                             layer_norm(self.dtype, 'norm_attention', self.norm_eps,
                                        self.recompute)(x),
                             key_mask)
    if self.cls_attention:
      attended, cls_weights = attended
      attention_sum = attention_sum + cls_weights
    attended = nn.Dropout(self.dropout_rate)(attended, deterministic=self.deterministic)
    skip_droppath = self.deterministic or not self.droppath
    x = x + drop_path(self, attended, droppath_rate, skip_droppath)
    y = MlpBlock(self.mlp_dim, self.dtype, self.dropout_rate, self.deterministic,
                 self.activation, self.recompute, name='mlp')(
                     layer_norm(self.dtype, 'norm_mlp', self.norm_eps, self.recompute)(x))
    x = x + drop_path(self, y, droppath_rate, skip_droppath)
    return (place(x, TOKENS), attention_sum), None


class Encoder(nn.Module):
  """A stack of pre-LN blocks followed by a final LayerNorm.

  With `scan_layers` the blocks are one nn.scan over parameters stacked along a leading
  `layers` axis (`blocks`), and under remat each layer keeps exactly what its policy saves.
  Without remat the scan's loop is unrolled (`scan_unroll`): the layers are scheduled and
  fused as one program, as unrolled blocks are, which a loop prevents (on a GPU the loop
  cost 39% of the step); with remat the loop stays, since unrolled, XLA places the
  recomputation itself and can undo the saving (it does on CPU). Unrolled blocks
  (`block_00`, `block_01`, ...) hold their parameters apart; checkpoints differ in layout.

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
  attention: str = 'auto'  # one of ATTENTION
  scan_unroll: bool = True  # without remat, the scan's loop unrolled
  recompute: bool = False  # norms and activations, in the backward pass (layer_norm's note)

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
    implementation = attention_implementation(self.attention, self.dtype,
                                              x.shape[-1] // self.num_heads)
    args = (self.num_heads, self.mlp_dim, self.dtype, self.cls_attention, self.dropout_rate,
            self.attention_dropout_rate, self.deterministic, self.droppath_rate > 0,
            self.activation, self.norm_eps, implementation, self.causal, self.recompute)
    x = place(x, TOKENS)
    carry = (x, jnp.zeros(x.shape[:1] + (x.shape[1] - 1,) if self.cls_attention else (),
                          jnp.float32))
    rates = self.droppath_rates()
    if self.scan_layers:
      unrolled = self.scan_unroll and self.remat_policy == 'none'
      blocks = nn.scan(block, variable_axes={'params': 0},
                       split_rngs={'params': True, 'dropout': True},
                       in_axes=(nn.broadcast, 0), length=self.num_layers,
                       unroll=self.num_layers if unrolled else 1,
                       metadata_params={nn.PARTITION_NAME: 'layers'})
      carry, _ = blocks(*args, name='blocks')(carry, key_mask, rates)
    else:
      for i in range(self.num_layers):
        carry, _ = block(*args, name=f'block_{i:02d}')(carry, key_mask, rates[i])
    x, total = carry
    x = layer_norm(self.dtype, 'norm_out', self.norm_eps, self.recompute)(x)
    return (x, total / self.num_layers) if self.cls_attention else x
