"""Two towers, L2-normalised embeddings, learnable temperature and the contrastive loss."""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import pixel_normalization
from models import transformer
from models.text import TextTower
from models.vit import VisionTower


def l2_normalize(x, eps=1e-6):
  # rsqrt of the squared norm plus eps keeps the gradient finite at x = 0.
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps ** 2)


class Head(nn.Module):
  """Two-layer MLP head (A-CLIP's projector and predictor)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(2 * self.features, dtype=self.dtype, name='hidden')(x)
    x = nn.gelu(nn.LayerNorm(dtype=self.dtype, name='norm')(x))
    return nn.Dense(self.features, dtype=self.dtype, name='out')(x)


class CLIP(nn.Module):
  """A learnable logit scale starts at `init_logit_scale` and is clipped to
  [0, max_logit_scale] in the forward pass, as FLIP's (unless `clip_logit_scale` is off:
  open_clip clamps the parameter after each update instead, trainer/step.py); a fixed one is
  used as it is. `pixel_mean` and `pixel_std` are the statistics the image tower's inputs
  are normalised with (`normalize_pixels`)."""
  image: VisionTower
  text: TextTower
  init_logit_scale: float = float(np.log(1 / 0.07))
  max_logit_scale: float = float(np.log(100.0))
  learn_logit_scale: bool = True
  clip_logit_scale: bool = True
  head_dim: int = 0  # > 0 adds the projector and predictor of A-CLIP's auxiliary losses
  logit_bias_init: Optional[float] = None  # a learned logit bias (the sigmoid loss's)
  pixel_mean: Tuple[float, ...] = pixel_normalization.MEAN_RGB
  pixel_std: Tuple[float, ...] = pixel_normalization.STDDEV_RGB

  def setup(self):
    self.log_scale = self.param('logit_scale',
                                nn.initializers.constant(self.init_logit_scale), ())
    if self.logit_bias_init is not None:
      self.bias = self.param('logit_bias', nn.initializers.constant(self.logit_bias_init), ())
    if self.head_dim:
      self.projector = Head(self.head_dim, self.image.dtype)
      self.predictor = Head(self.head_dim, self.image.dtype)

  def encode_image(self, images, keep_idx=None, valid=None):
    return l2_normalize(self.image(images, keep_idx, valid))

  def image_features(self, images, keep_idx=None, valid=None, train=False):
    """The image tower's output before normalisation, for the auxiliary heads."""
    return self.image(images, keep_idx, valid, train=train)

  def project(self, features):
    return self.projector(features)

  def predict(self, features):
    return self.predictor(self.projector(features))

  def encode_text(self, tokens, train=False):
    return l2_normalize(self.text(tokens, train=train))

  def logit_scale(self):
    if not self.learn_logit_scale:
      return jax.lax.stop_gradient(self.log_scale)
    if not self.clip_logit_scale:
      return self.log_scale
    return jnp.clip(self.log_scale, 0.0, self.max_logit_scale)

  def logit_bias(self):
    return self.bias

  def __call__(self, images, tokens, keep_idx=None, valid=None):
    """Returns (image embeddings [B, E], text embeddings [B, E], logit scale (log))."""
    features = self.image(images, keep_idx, valid)
    if self.head_dim and self.is_initializing():
      self.predict(features)
    return l2_normalize(features), self.encode_text(tokens), self.logit_scale()


def contrastive_loss(zimg, ztxt, logit_scale, chunk: int = 0):
  """Symmetric InfoNCE over the whole (global) batch; pairs sit on the diagonal.

  Written on global arrays: under a data-sharded batch XLA inserts the gathers itself.
  With `chunk`, the B x B logits are formed `chunk` rows at a time (and recomputed in the
  backward pass), so no device holds them whole, as a 64k batch needs.
  """
  batch = zimg.shape[0]
  scale = jnp.exp(logit_scale)
  if not chunk or chunk >= batch:
    logits = scale * zimg @ ztxt.T
    labels = jnp.arange(batch)
    img_to_txt = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    txt_to_img = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    return (img_to_txt.mean() + txt_to_img.mean()) / 2
  if batch % chunk:
    raise ValueError(f'loss chunk {chunk} does not divide the batch of {batch}')

  @jax.checkpoint
  def row_logsumexp(rows, others):
    return jax.nn.logsumexp(scale * rows @ others.T, axis=1)

  def all_rows(rows, others):
    chunks = rows.reshape(batch // chunk, chunk, -1)
    return jax.lax.map(lambda r: row_logsumexp(r, others), chunks).reshape(batch)

  matched = scale * jnp.sum(zimg * ztxt, axis=-1)
  return (jnp.mean(all_rows(zimg, ztxt) - matched) + jnp.mean(all_rows(ztxt, zimg) - matched)) / 2


def simclr_loss(z1, z2, temperature):
  """NT-Xent between two views: each embedding's positive is its other view, among 2B - 1."""
  z = l2_normalize(jnp.concatenate([z1, z2]))
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  labels = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def distillation_loss(predicted, target):
  """BYOL's 2 - 2 cos between online predictions and (stopped) EMA targets."""
  cosine = jnp.sum(l2_normalize(predicted) * l2_normalize(jax.lax.stop_gradient(target)), -1)
  return jnp.mean(2 - 2 * cosine)


def scans_layers(config) -> bool:
  """Whether the towers' blocks are one nn.scan: config.model.scan_layers where it is set,
  else whether either tower's blocks are rematerialised, where the scan saves memory (both
  towers take one layout, which checkpoints and foreign weights follow)."""
  if config.model.scan_layers is not None:
    return bool(config.model.scan_layers)
  return any(tower.transformer.remat_policy != 'none'
             for tower in (config.model.model_img, config.model.model_txt))


def from_config(config) -> CLIP:
  """Builds the model from a full run config (see configs/default.py)."""
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}.get(config.model.dtype)
  if dtype is None:
    raise ValueError(f"config.model.dtype={config.model.dtype!r}: expected 'float32' or "
                     "'bfloat16'")
  img, txt, clr = config.model.model_img, config.model.model_txt, config.model.clr
  aclip = config.model.aclip
  head_dim = aclip.head_dim if aclip.distill_weight > 0 or aclip.simclr_weight > 0 else 0

  def encoder_fields(tower):
    return dict(dropout_rate=tower.transformer.dropout_rate,
                attention_dropout_rate=tower.transformer.attention_dropout_rate,
                droppath_rate=tower.transformer.droppath_rate,
                activation=config.model.activation, norm_eps=config.model.norm_eps,
                attention=config.model.attention, scan_unroll=config.model.scan_unroll,
                recompute=transformer.recomputes_elementwise(
                    config.model.recompute_elementwise))

  image = VisionTower(
      patch_size=tuple(img.patches.size), hidden_size=img.hidden_size,
      num_layers=img.transformer.num_layers, num_heads=img.transformer.num_heads,
      mlp_dim=img.transformer.mlp_dim, embed_dim=clr.proj_dim_out, sincos=img.sincos,
      remat_policy=img.transformer.remat_policy, scan_layers=scans_layers(config),
      dtype=dtype, projection_bias=clr.proj_out_bias,
      pool=('cls' if not clr.img_avg_token else
            'mean' if clr.img_avg_with_cls else 'mean_patches'),
      patch_bias=img.patch_bias, cls_position=img.cls_position, pre_norm=img.pre_norm,
      freeze_patch_embedding=img.freeze_patch_embedding,
      **encoder_fields(img))
  text = TextTower(
      vocab_size=txt.vocab_size, max_len=config.aug.txt.max_len, hidden_size=txt.hidden_size,
      num_layers=txt.transformer.num_layers, num_heads=txt.transformer.num_heads,
      mlp_dim=txt.transformer.mlp_dim, embed_dim=clr.proj_dim_out,
      remat_policy=txt.transformer.remat_policy, scan_layers=scans_layers(config),
      dtype=dtype, mask_padding=txt.mask_padding, projection_bias=clr.proj_out_bias,
      pool=txt.pool or ('mean' if clr.txt_avg_token else 'first'), causal=txt.causal,
      **encoder_fields(txt))
  tau = clr.tau_init if clr.tau_learnable else clr.tau
  bias_init = None
  if config.model.loss == 'sigmoid':
    bias_init = config.model.sigmoid.bias_init
    if clr.tau_learnable:
      tau = 1 / config.model.sigmoid.scale_init  # SigLIP's t = 10 in place of CLIP's 1 / 0.07
  return CLIP(image=image, text=text, init_logit_scale=float(np.log(1 / tau)),
              logit_bias_init=bias_init,
              max_logit_scale=float(np.log(clr.max_logit_scale)),
              learn_logit_scale=clr.tau_learnable,
              clip_logit_scale=clr.logit_scale_clamp == 'forward', head_dim=head_dim,
              pixel_mean=tuple(config.aug.pixel_mean), pixel_std=tuple(config.aug.pixel_std))


def normalize_pixels(model: CLIP, images):
  """The input pipelines' uint8 pixels as `model`'s image tower reads them."""
  return pixel_normalization.normalize(images, model.pixel_mean, model.pixel_std)



def parameter_counts(params) -> Dict[str, int]:
  """Values per tower (`image`, `text`; `other`: the logit scale and A-CLIP's heads) and in
  total."""
  counts = {'image': 0, 'text': 0, 'other': 0}
  for name, subtree in params.items():
    size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(subtree))
    counts[name if name in ('image', 'text') else 'other'] += size
  counts['total'] = sum(counts.values())
  return counts
