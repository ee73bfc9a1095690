"""Text tower: learned position embedding, bidirectional encoder, first-token pooling."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.transformer import TOKENS, Encoder, logical, place

Dtype = Any
PAD_ID = 0


class TextTower(nn.Module):
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

  @nn.compact
  def __call__(self, tokens):
    """`tokens` int [B, L] with L <= max_len, padded with PAD_ID."""
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'text of {tokens.shape[1]} tokens exceeds max_len={self.max_len}')
    x = nn.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype, name='token_embedding',
                 embedding_init=logical(nn.initializers.normal(0.02), ('vocab', 'embed')))(tokens)
    pos = self.param('pos_embedding', logical(nn.initializers.normal(0.01), (None, None, 'embed')),
                     (1, self.max_len, self.hidden_size))
    x = place(x + pos[:, :tokens.shape[1]].astype(self.dtype), TOKENS)
    x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.remat_policy, self.dtype,
                scan_layers=self.scan_layers, name='encoder')(x, key_mask=tokens != PAD_ID)
    embedding = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name='projection',
                         kernel_init=logical(nn.initializers.lecun_normal(),
                                             ('embed', 'joint')))(x[:, 0])
    return place(embedding, ('batch', 'joint'))
