"""Two towers, L2-normalised embeddings, learnable temperature and the contrastive loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.text import TextTower
from models.vit import VisionTower


def l2_normalize(x, eps=1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class CLIP(nn.Module):
  image: VisionTower
  text: TextTower
  init_logit_scale: float = float(np.log(1 / 0.07))
  max_logit_scale: float = float(np.log(100.0))
  learn_logit_scale: bool = True

  def setup(self):
    self.log_scale = self.param('logit_scale',
                                nn.initializers.constant(self.init_logit_scale), ())

  def encode_image(self, images, keep_idx=None, valid=None):
    return l2_normalize(self.image(images, keep_idx, valid))

  def encode_text(self, tokens):
    return l2_normalize(self.text(tokens))

  def logit_scale(self):
    scale = self.log_scale
    if not self.learn_logit_scale:
      scale = jax.lax.stop_gradient(scale)
    return jnp.minimum(scale, self.max_logit_scale)

  def __call__(self, images, tokens, keep_idx=None, valid=None):
    """Returns (image embeddings [B, E], text embeddings [B, E], logit scale (log))."""
    return (self.encode_image(images, keep_idx, valid), self.encode_text(tokens),
            self.logit_scale())


def contrastive_loss(zimg, ztxt, logit_scale):
  """Symmetric InfoNCE over the whole (global) batch; pairs sit on the diagonal.

  Written on global arrays: under a data-sharded batch XLA inserts the gathers itself.
  """
  logits = jnp.exp(logit_scale) * zimg @ ztxt.T
  labels = jnp.arange(logits.shape[0])
  img_to_txt = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  txt_to_img = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return (img_to_txt.mean() + txt_to_img.mean()) / 2


def from_config(config) -> CLIP:
  """Builds the model from a full run config (see configs/default.py)."""
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}.get(config.model.dtype)
  if dtype is None:
    raise ValueError(f"config.model.dtype={config.model.dtype!r}: expected 'float32' or "
                     "'bfloat16'")
  img, txt, clr = config.model.model_img, config.model.model_txt, config.model.clr
  image = VisionTower(
      patch_size=tuple(img.patches.size), hidden_size=img.hidden_size,
      num_layers=img.transformer.num_layers, num_heads=img.transformer.num_heads,
      mlp_dim=img.transformer.mlp_dim, embed_dim=clr.proj_dim_out, sincos=img.sincos,
      remat_policy=img.transformer.remat_policy, dtype=dtype)
  text = TextTower(
      vocab_size=txt.vocab_size, max_len=config.aug.txt.max_len, hidden_size=txt.hidden_size,
      num_layers=txt.transformer.num_layers, num_heads=txt.transformer.num_heads,
      mlp_dim=txt.transformer.mlp_dim, embed_dim=clr.proj_dim_out,
      remat_policy=txt.transformer.remat_policy, dtype=dtype)
  return CLIP(image=image, text=text, init_logit_scale=float(np.log(1 / clr.tau)),
              max_logit_scale=float(np.log(clr.max_logit_scale)),
              learn_logit_scale=clr.tau_learnable)

