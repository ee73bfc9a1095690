"""The fused attention (jax.nn.dot_product_attention: XLA's kernel here, cuDNN's on a GPU
with the same arguments) against the logits and softmax written out, and the unrolled scan
against its loop: the same embeddings, class-token attention and gradients for every masking
policy and both tower families (float32)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import masking
from configs import presets
from models import clip
from models import transformer
from tests.conftest import micro_config

POLICIES = ('none', 'random', 'gaussian', 'cluster', 'attentive')


def _config(demo_dir, family, policy, **fields):
  config = micro_config(demo_dir, **{
      'model.model_img.masking.policy': policy, 'model.scan_layers': True, **fields})
  if family == 'open_clip':  # causal text pooled at its end, class-token pooling
    presets.open_clip_towers(config)
    config.aug.txt.max_len = 16
  return config


def _inputs(config):
  rng = np.random.RandomState(0)
  batch, size = 6, config.image_size
  coarse = rng.uniform(0, 255, (batch, size // 8, size // 8, 3))
  images = np.repeat(np.repeat(coarse, 8, 1), 8, 2).astype(np.uint8)  # clusters to find
  words = rng.randint(1, 1000, (batch, 16))
  lengths = rng.randint(3, 16, (batch, 1))
  tokens = np.where(np.arange(16) < lengths, words, 0).astype(np.int32)  # padding last
  return images, tokens


def _outputs(config, attention, params=None, **model_fields):
  """(image embeddings, class-token attention, text embeddings, loss, gradients, params)."""
  config = config.copy_and_resolve_references()
  config.model.attention = attention
  for key, value in model_fields.items():
    config.model[key] = value
  model = clip.from_config(config)
  images, tokens = _inputs(config)
  pixels = clip.normalize_pixels(model, images)
  if params is None:
    params = nn.unbox(model.init(jax.random.PRNGKey(0), pixels[:1], tokens[:1]))['params']
  _, scores = jax.jit(lambda p, x: model.image.apply({'params': p}, x, cls_attention=True))(
      params['image'], pixels)
  policy = masking.get_policy(config, train=True)
  keep = policy(jax.random.PRNGKey(1), pixels, scores)
  keep_idx, valid = keep if keep is not None else (None, None)

  def loss(params):
    zimg = model.apply({'params': params}, pixels, keep_idx, valid,
                       method=clip.CLIP.encode_image)
    ztxt = model.apply({'params': params}, tokens, method=clip.CLIP.encode_text)
    scale = model.apply({'params': params}, method=clip.CLIP.logit_scale)
    return clip.contrastive_loss(zimg, ztxt, scale), (zimg, ztxt)

  (value, (zimg, ztxt)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return zimg, scores, ztxt, value, grads, params


def _assert_close(a, b, tolerance=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(1.0, float(jnp.abs(x).max()))
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tolerance * scale, rtol=0)


@pytest.mark.parametrize('family', ['flip', 'open_clip'])
@pytest.mark.parametrize('policy', POLICIES)
def test_fast_attention_computes_the_reference(demo_dir, family, policy):
  config = _config(demo_dir, family, policy)
  reference = _outputs(config, 'einsum')
  fast = _outputs(config, 'xla', params=reference[-1])
  _assert_close(fast[:5], reference[:5])


@pytest.mark.parametrize('family', ['flip', 'open_clip'])
def test_the_unrolled_scan_computes_the_loop(demo_dir, family):
  config = _config(demo_dir, family, 'attentive', **{
      'model.model_img.transformer.num_layers': 2, 'model.model_txt.transformer.num_layers': 2})
  loop = _outputs(config, 'xla', scan_unroll=False)
  unrolled = _outputs(config, 'xla', params=loop[-1], scan_unroll=True)
  _assert_close(unrolled[:5], loop[:5], 1e-6)


def test_padding_and_the_causal_mask_hold_in_the_fast_path():
  """A key that is padding, or later than its query under the causal mask, changes
  nothing that may not see it."""
  for causal in (False, True):
    encoder = transformer.Encoder(num_layers=1, num_heads=2, mlp_dim=16, causal=causal,
                                  attention='xla', scan_layers=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    key_mask = jnp.array([[True] * 5, [True, True, True, False, False]])
    params = encoder.init(jax.random.PRNGKey(1), x, key_mask)
    changed = x.at[1, 3:].set(7.0)  # padding of example 1 (and the last tokens of both)
    changed = changed.at[0, 4].set(7.0)
    before, after = encoder.apply(params, x, key_mask), encoder.apply(params, changed, key_mask)
    np.testing.assert_allclose(before[1, :3], after[1, :3], atol=1e-6)
    if causal:  # example 0's first four tokens never see its fifth
      np.testing.assert_allclose(before[0, :4], after[0, :4], atol=1e-6)


def test_auto_takes_the_written_out_attention_on_a_cpu():
  assert transformer.attention_implementation('auto', jnp.bfloat16, 64) == 'einsum'


def test_an_unknown_attention_is_refused():
  with pytest.raises(ValueError, match="attention='flash'"):
    transformer.attention_implementation('flash', jnp.float32, 16)


def test_the_fused_kernels_padding_and_lengths_change_nothing():
  """What cuDNN is given (lengths for the key padding, a flag for the causal mask, the
  sequence padded to an even length) computes the written-out attention; here through
  XLA's kernel, which reads the same arguments."""
  q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 7, 2, 8))
  key_mask = jnp.array([[True] * 7, [True] * 4 + [False] * 3, [True] + [False] * 6])
  for causal in (False, True):
    attention = transformer.Attention(2, causal=causal)
    weights = attention._weights(q, k, key_mask, 8)  # pylint: disable=protected-access
    want = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    got = transformer.fused_attention(q, k, v, key_mask, causal, 'xla',
                                      transformer.CUDNN_PAD_TO)
    np.testing.assert_allclose(got, want, atol=1e-5)
