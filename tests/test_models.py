"""Towers' shapes, the masking gather, key padding, pooling and the contrastive loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import clip
from models import pixel_normalization
from models.transformer import Encoder
from models.vit import VisionTower, sincos_2d
from tests.conftest import micro_config


def _vision(sincos=True):
  return VisionTower(patch_size=(8, 8), hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
                     embed_dim=16, sincos=sincos)


@pytest.fixture(scope='module')
def vision():
  tower = _vision()
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 48, 3))  # 4 x 6 patch grid
  params = nn.unbox(tower.init(jax.random.PRNGKey(1), images))
  return tower, params, images


def test_sincos_covers_non_square_grids_with_distinct_rows():
  pos = sincos_2d((4, 6), 32)
  assert pos.shape == (24, 32)
  assert len({tuple(np.round(r, 5)) for r in pos}) == 24


def test_vision_tower_shapes_with_and_without_masking(vision):
  tower, params, images = vision
  assert tower.apply(params, images).shape == (3, 16)
  keep_idx = jnp.tile(jnp.arange(0, 24, 2, dtype=jnp.int32), (3, 1))
  assert tower.apply(params, images, keep_idx).shape == (3, 16)


def test_keep_all_patches_in_any_order_equals_no_masking(vision):
  tower, params, images = vision
  full = tower.apply(params, images)
  shuffled = jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), 24) for i in range(3)])
  np.testing.assert_allclose(tower.apply(params, images, shuffled.astype(jnp.int32)), full,
                             atol=1e-5)


def test_gather_selects_the_kept_patches_only(vision):
  tower, params, images = vision
  keep_idx = jnp.tile(jnp.array([0, 5, 7, 23], jnp.int32), (3, 1))
  reference = tower.apply(params, images, keep_idx)
  # Changing a dropped patch's pixels (patch 1: rows 0-7, columns 8-15) changes nothing.
  edited = images.at[:, 0:8, 8:16].set(9.0)
  np.testing.assert_allclose(tower.apply(params, edited, keep_idx), reference, atol=1e-6)
  # Changing a kept one does.
  edited = images.at[:, 0:8, 0:8].set(9.0)
  assert not np.allclose(tower.apply(params, edited, keep_idx), reference, atol=1e-3)


def test_padded_tokens_affect_neither_attention_nor_pooling(vision):
  tower, params, images = vision
  keep_idx = jnp.tile(jnp.array([3, 4, 10, 1, 2], jnp.int32), (3, 1))
  valid = jnp.array([[True, True, True, False, False]] * 3)
  padded = tower.apply(params, images, keep_idx, valid)
  np.testing.assert_allclose(padded, tower.apply(params, images, keep_idx[:, :3]), atol=1e-5)
  edited = images.at[:, 0:8, 8:24].set(-7.0)  # pixels of padded patches 1 and 2
  np.testing.assert_allclose(tower.apply(params, edited, keep_idx, valid), padded, atol=1e-6)


def test_learned_position_embedding_is_a_parameter():
  tower = _vision(sincos=False)
  params = nn.unbox(tower.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  assert params['params']['pos_embedding'].shape == (1, 16, 32)


def test_clip_embeddings_are_unit_norm_and_logit_scale_is_clipped(demo_dir):
  config = micro_config(demo_dir)
  config.model.clr.tau = 0.5  # FLIP: unused while the temperature is learned
  config.model.clr.tau_init = 0.001  # log(1000) > log(100)
  model = clip.from_config(config)
  images, tokens = jnp.ones((2, 32, 32, 3)), jnp.ones((2, 16), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), images, tokens))
  zimg, ztxt, scale = model.apply(params, images, tokens)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1.0, rtol=1e-5)
  assert float(scale) == pytest.approx(np.log(100.0))
  params['params']['logit_scale'] = jnp.float32(-1.0)  # clipped below at 0, as FLIP
  assert float(model.apply(params, method=clip.CLIP.logit_scale)) == 0.0
  config.model.clr.tau_learnable = False  # a fixed temperature is `tau`, unclipped
  fixed = clip.from_config(config)
  params = nn.unbox(fixed.init(jax.random.PRNGKey(0), images, tokens))
  assert float(fixed.apply(params, images, tokens)[2]) == pytest.approx(np.log(2.0))


def test_bfloat16_compute_keeps_float32_parameters(demo_dir):
  config = micro_config(demo_dir, **{'model.dtype': 'bfloat16'})
  model = clip.from_config(config)
  images, tokens = jnp.ones((2, 32, 32, 3)), jnp.ones((2, 16), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), images, tokens))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  zimg, _, _ = model.apply(params, images, tokens)
  assert zimg.dtype == jnp.float32 and np.all(np.isfinite(zimg))


def _numpy_loss(zimg, ztxt, logit_scale):
  logits = np.exp(logit_scale) * zimg @ ztxt.T
  total = 0.0
  for matrix in (logits, logits.T):
    for i, row in enumerate(matrix):
      total += -(row[i] - np.log(np.sum(np.exp(row - row.max()))) - row.max())
  return total / (2 * len(logits))


def test_contrastive_loss_matches_a_numpy_reference():
  rng = np.random.RandomState(0)
  zimg = rng.normal(size=(6, 5))
  ztxt = rng.normal(size=(6, 5))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  got = clip.contrastive_loss(jnp.asarray(zimg, jnp.float32), jnp.asarray(ztxt, jnp.float32),
                              jnp.float32(np.log(1 / 0.07)))
  assert float(got) == pytest.approx(_numpy_loss(zimg, ztxt, np.log(1 / 0.07)), rel=1e-5)


def test_contrastive_loss_is_low_for_matched_pairs():
  z = jnp.eye(4)
  matched = clip.contrastive_loss(z, z, jnp.float32(np.log(100)))
  shuffled = clip.contrastive_loss(z, z[::-1], jnp.float32(np.log(100)))
  assert float(matched) < 1e-3 < float(shuffled)


def _stacked(unrolled_params, num_layers):
  """block_00, block_01, ... -> one `blocks` tree with a leading layers axis."""
  blocks = [unrolled_params[f'block_{i:02d}'] for i in range(num_layers)]
  stacked = {k: v for k, v in unrolled_params.items() if not k.startswith('block_')}
  stacked['blocks'] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
  return stacked


@pytest.mark.parametrize('cls_attention', [False, True])
def test_scanned_and_unrolled_blocks_compute_the_same(cls_attention):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  key_mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  unrolled = Encoder(3, 2, 32, cls_attention=cls_attention, scan_layers=False)
  scanned = Encoder(3, 2, 32, cls_attention=cls_attention, scan_layers=True)
  params = nn.unbox(unrolled.init(jax.random.PRNGKey(1), x, key_mask))['params']
  expected = unrolled.apply({'params': params}, x, key_mask)
  got = scanned.apply({'params': _stacked(params, 3)}, x, key_mask)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  shapes = jax.eval_shape(scanned.init, jax.random.PRNGKey(1), x, key_mask)['params']
  assert nn.unbox(shapes)['blocks']['mlp']['Dense_0']['kernel'].shape == (3, 16, 32)
  assert shapes['blocks']['mlp']['Dense_0']['kernel'].names == ('layers', 'embed', 'mlp')


def test_remat_policies_shrink_the_backward_pass_of_scanned_blocks():
  """What a user picks remat for: the compiled gradient's temporaries fall none > minimal >
  full (activations of 8 blocks, 32 sequences of 64 tokens)."""
  x = jnp.zeros((32, 64, 128))
  temp = {}
  for policy in ('none', 'minimal', 'full'):
    encoder = Encoder(8, 4, 512, policy, scan_layers=True)
    params = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), x)
    grad = jax.jit(jax.grad(lambda p, x: encoder.apply(p, x).sum()))
    temp[policy] = grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes
  assert temp['none'] > 1.5 * temp['minimal'] and temp['minimal'] > 1.5 * temp['full'], temp


@pytest.mark.parametrize('activation', ['gelu', 'gelu_tanh'])
def test_recomputed_norms_and_activations_give_the_same_gradients_in_less_memory(activation):
  """model.recompute_elementwise: the same numbers, forward and backward, with the norms'
  and activations' intermediates recomputed rather than kept (bfloat16, as GPUs train)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 64, 128))
  key_mask = jnp.arange(64)[None, :] < jnp.arange(32, 64)[:, None]
  results, temp = [], []
  for recompute in (False, True):
    encoder = Encoder(4, 4, 512, dtype=jnp.bfloat16, scan_layers=False, activation=activation,
                      attention='xla', recompute=recompute)
    params = nn.unbox(encoder.init(jax.random.PRNGKey(1), x, key_mask))
    loss = lambda p, x: (encoder.apply(p, x, key_mask).astype(jnp.float32) ** 2).mean()
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    results.append(grad(params, x))
    temp.append(grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes)
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5, atol=1e-6)
  assert temp[1] < 0.9 * temp[0], temp


def test_recomputation_is_on_where_a_gpu_trains_and_a_choice_everywhere(demo_dir, monkeypatch):
  config = micro_config(demo_dir)
  assert config.model.recompute_elementwise is None
  model = clip.from_config(config)
  assert not model.image.recompute and not model.text.recompute  # on this CPU
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  model = clip.from_config(config)
  assert model.image.recompute and model.text.recompute
  config.model.recompute_elementwise = False
  assert not clip.from_config(config).image.recompute


def test_dropout_and_droppath_act_in_training_only():
  tower = VisionTower(patch_size=(8, 8), hidden_size=32, num_layers=3, num_heads=4, mlp_dim=64,
                      embed_dim=16, dropout_rate=0.3, attention_dropout_rate=0.3,
                      droppath_rate=0.5)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  params = nn.unbox(tower.init(jax.random.PRNGKey(1), images))
  plain = tower.clone(dropout_rate=0.0, attention_dropout_rate=0.0, droppath_rate=0.0)
  np.testing.assert_array_equal(tower.apply(params, images), plain.apply(params, images))

  def train(seed):
    return tower.apply(params, images, train=True, rngs={'dropout': jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(train(0), train(0))  # seeded
  assert not np.allclose(train(0), train(1)) and not np.allclose(train(0), plain.apply(
      params, images))
  # Drop-path grows linearly over depth, from 0 at the first block, as FLIP.
  rates = Encoder(3, 2, 32, droppath_rate=0.5).droppath_rates()
  np.testing.assert_allclose(rates, [0.0, 0.25, 0.5])


def test_flip_image_pooling_averages_the_class_token_in(vision):
  tower, params, images = vision
  outputs = {}
  for pool in ('mean', 'mean_patches', 'cls'):
    outputs[pool] = np.asarray(tower.clone(pool=pool).apply(params, images))
  assert not np.allclose(outputs['mean'], outputs['mean_patches'])
  assert not np.allclose(outputs['mean'], outputs['cls'])


def test_sincos_puts_the_column_code_first_as_flip():
  pos = sincos_2d((3, 4), 16)
  # Patch (row 0, column 1) against (row 1, column 0): columns fill channels 0..7.
  assert np.allclose(pos[1, 8:], pos[0, 8:]) and not np.allclose(pos[1, :8], pos[0, :8])
  assert np.allclose(pos[4, :8], pos[0, :8]) and not np.allclose(pos[4, 8:], pos[0, 8:])


def test_pixels_are_normalised_with_imagenet_statistics_and_only_once():
  grey = np.full((1, 2, 2, 3), 128, np.uint8)
  want = ((128 / 255 - np.array(pixel_normalization.MEAN_RGB))
          / np.array(pixel_normalization.STDDEV_RGB))
  np.testing.assert_allclose(pixel_normalization.normalize(grey)[0, 0, 0], want, rtol=1e-5)
  with pytest.raises(TypeError, match='expected uint8 pixels'):
    pixel_normalization.normalize(pixel_normalization.normalize(grey))
