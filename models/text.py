"""Text tower: learned position embedding, an encoder (bidirectional as FLIP's or causal as
open_clip's), first-token, mean or end-of-text pooling."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.transformer import TOKENS, XAVIER, Encoder, logical, place
from models.vit import masked_mean

Dtype = Any
PAD_ID = 0


POOLINGS = ('first', 'mean', 'argmax')


class TextTower(nn.Module):
  """`mask_padding=False` is FLIP's tower: every token, padding included, is attended to and
  averaged (`pool='mean'`); True keeps padding out of both.

  open_clip's tower is `causal` and pools at `argmax` of the token ids: its end-of-text id
  is the largest in the vocabulary, so the argmax finds the caption's last token.
  """
  vocab_size: int
  max_len: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  remat_policy: str = 'none'
  scan_layers: bool = True
  dtype: Dtype = jnp.float32
  mask_padding: bool = True
  pool: str = 'first'  # or 'mean'
  projection_bias: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  causal: bool = False
  activation: str = 'gelu_tanh'
  norm_eps: float = 1e-6
  attention: str = 'auto'  # models/transformer.py: ATTENTION
  scan_unroll: bool = True
  recompute: bool = False  # norms and activations, in the backward pass (transformer.py)

  @nn.compact
  def __call__(self, tokens, train=False):
    """`tokens` int [B, L] with L <= max_len, padded with PAD_ID."""
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'text of {tokens.shape[1]} tokens exceeds max_len={self.max_len}')
    if self.pool not in POOLINGS:
      raise ValueError(f'text pooling {self.pool!r}: expected one of {POOLINGS}')
    x = nn.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype, name='token_embedding',
                 embedding_init=logical(nn.initializers.normal(0.02), ('vocab', 'embed')))(tokens)
    pos = self.param('pos_embedding', logical(nn.initializers.normal(0.02), (None, None, 'embed')),
                     (1, self.max_len, self.hidden_size))
    x = place(x + pos[:, :tokens.shape[1]].astype(self.dtype), TOKENS)
    key_mask = tokens != PAD_ID if self.mask_padding else None
    x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.remat_policy, self.dtype,
                scan_layers=self.scan_layers, dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=self.droppath_rate, deterministic=not train,
                activation=self.activation, norm_eps=self.norm_eps, attention=self.attention,
                scan_unroll=self.scan_unroll, recompute=self.recompute, causal=self.causal,
                name='encoder')(x, key_mask=key_mask)
    if self.pool == 'first':
      pooled = x[:, 0]
    elif self.pool == 'mean':
      pooled = masked_mean(x, key_mask)
    else:
      pooled = jnp.take_along_axis(x, jnp.argmax(tokens, axis=1)[:, None, None], axis=1)[:, 0]
    embedding = nn.Dense(self.embed_dim, use_bias=self.projection_bias, dtype=self.dtype,
                         name='projection', kernel_init=logical(XAVIER, ('embed', 'joint')),
                         bias_init=logical(nn.initializers.zeros, ('joint',)))(pooled)
    return place(embedding, ('batch', 'joint'))
