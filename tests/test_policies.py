"""Gaussian (GLIP), cluster (Masking Clusters) and attentive (A-CLIP) policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import masking
from tests.conftest import micro_config


def _frequency(keep_idx, num_patches):
  keep_idx = np.asarray(keep_idx)
  return np.bincount(keep_idx.ravel(), minlength=num_patches) / keep_idx.shape[0]


@pytest.mark.parametrize('policy', ['gaussian', 'cluster', 'attentive'])
def test_exact_k_distinct_in_range_under_jit_and_vmap(policy):
  rng = jax.random.PRNGKey(0)
  images = jax.random.uniform(rng, (4, 64, 96, 3))  # a 4 x 6 grid of 16-pixel patches
  scores = jax.random.uniform(rng, (4, 24))
  call = {
      'gaussian': lambda key: (masking.gaussian_keep(key, 4, (4, 6), 12), None),
      'cluster': lambda key: masking.cluster_keep(key, images, (16, 16), 12),
      'attentive': lambda key: (masking.attentive_keep(key, scores, (4, 6), 12,
                                                       temperature=0.5), None),
  }[policy]
  keep_idx, _ = jax.jit(call)(rng)
  keep_idx = np.asarray(keep_idx)
  assert keep_idx.shape == (4, 12) and keep_idx.dtype == np.int32
  assert keep_idx.min() >= 0 and keep_idx.max() < 24
  assert all(len(set(row)) == 12 for row in keep_idx)
  np.testing.assert_array_equal(jax.jit(call)(rng)[0], keep_idx)  # deterministic per key
  others = [np.asarray(call(jax.random.PRNGKey(i))[0]) for i in range(1, 6)]
  assert any(not np.array_equal(o, keep_idx) for o in others)  # varies across keys
  batched = jax.vmap(lambda key: call(key)[0])(jax.random.split(rng, 3))
  assert batched.shape == (3, 4, 12)


def test_gaussian_keeps_the_centre_and_falls_toward_the_corners():
  frequency = _frequency(masking.gaussian_keep(jax.random.PRNGKey(0), 4000, (14, 14), 98,
                                               sigma=0.2), 196).reshape(14, 14)
  centre = frequency[6:8, 6:8].mean()
  corners = np.array([frequency[0, 0], frequency[0, -1], frequency[-1, 0], frequency[-1, -1]])
  assert centre > 0.95
  assert np.all((corners > 0.2) & (corners < 0.4))
  radius = np.hypot(*np.meshgrid(np.arange(14) - 6.5, np.arange(14) - 6.5, indexing='ij'))
  rings = [frequency[(radius >= r) & (radius < r + 2)].mean() for r in range(0, 10, 2)]
  assert all(a > b for a, b in zip(rings, rings[1:]))


def test_gaussian_bias_flattens_as_sigma_grows():
  spreads, centres = [], []
  for sigma in (0.2, 0.4, 0.8):
    frequency = _frequency(masking.gaussian_keep(jax.random.PRNGKey(1), 2000, (14, 14), 98,
                                                 sigma), 196)
    spreads.append(frequency.std())
    centres.append(frequency.reshape(14, 14)[6:8, 6:8].mean())
  assert spreads[0] > spreads[1] > spreads[2] and spreads[2] < 0.06
  assert centres[0] > centres[1] > centres[2]


def test_gaussian_supports_non_square_grids():
  frequency = _frequency(masking.gaussian_keep(jax.random.PRNGKey(2), 2000, (6, 12), 36),
                         72).reshape(6, 12)
  assert frequency[2:4, 5:7].mean() > frequency[:, [0, -1]].mean() + 0.3


def _flat_region_images(batch, rng):
  """Images made of a few large flat-coloured rectangles with mild noise: 14 x 14 patches."""
  images = np.zeros((batch, 112, 112, 3), np.float32)
  for b in range(batch):
    for _ in range(6):
      y, x = rng.randint(0, 90, size=2)
      h, w = rng.randint(20, 60, size=2)
      images[b, y:y + h, x:x + w] = rng.uniform(0, 1, size=3)
    images[b] += rng.normal(0, 0.02, size=(112, 112, 3))
  # A flat patch has no pixel variance; a gradient gives each region a stable pattern.
  return images + np.linspace(0, 0.3, 8)[None, None, np.arange(112) % 8, None]


def _neighbour_agreement(masked):
  """P(a masked patch's right/down neighbour is masked), over a batch of [B, 14, 14]."""
  pairs = [(masked[:, :, :-1], masked[:, :, 1:]), (masked[:, :-1, :], masked[:, 1:, :])]
  both = sum((a & b).sum() for a, b in pairs)
  return both / max(sum(a.sum() for a, _ in pairs), 1)


def test_cluster_masks_are_spatially_coherent_on_flat_regions():
  images = jnp.asarray(_flat_region_images(16, np.random.RandomState(0)))
  masked = np.asarray(masking.cluster_mask(jax.random.PRNGKey(0), images, (8, 8),
                                           threshold=0.9)).reshape(16, 14, 14)
  share = masked.mean()
  assert 0.05 < share < 0.95
  random = np.random.RandomState(1).uniform(size=masked.shape) < share
  assert _neighbour_agreement(masked) > _neighbour_agreement(random) + 0.2


def test_cluster_keep_puts_visible_patches_first_and_pads_with_masked_ones():
  images = jnp.asarray(_flat_region_images(8, np.random.RandomState(2)))
  rng = jax.random.PRNGKey(3)
  keep_idx, valid = masking.cluster_keep(rng, images, (8, 8), 137, threshold=0.9)
  masked = np.asarray(masking.cluster_mask(jax.random.split(rng)[0], images, (8, 8),
                                           threshold=0.9))
  keep_idx, valid = np.asarray(keep_idx), np.asarray(valid)
  for b in range(8):
    visible = int((~masked[b]).sum())
    expected_valid = max(1, min(visible, 137))
    assert valid[b].sum() == expected_valid
    assert valid[b, :expected_valid].all()  # visible first, then padding
    np.testing.assert_array_equal(valid[b, 1:], ~masked[b][keep_idx[b, 1:]])


def test_cluster_keeps_one_patch_of_an_image_masked_entirely():
  flat = jnp.tile(jnp.linspace(0, 1, 8)[None, None, :, None], (1, 16, 2, 3))  # same pattern
  keep_idx, valid = masking.cluster_keep(jax.random.PRNGKey(0), flat, (8, 8), 3,
                                         threshold=0.5)
  assert np.asarray(valid).tolist() == [[True, False, False]]


def test_cluster_threshold_calibration_hits_the_target_ratio():
  images = jnp.asarray(_flat_region_images(16, np.random.RandomState(4)))
  rng = jax.random.PRNGKey(5)
  threshold = masking.calibrate_threshold(rng, images, (8, 8), 0.03, 0.5)
  ratio = float(masking.cluster_mask(rng, images, (8, 8), 0.03, threshold).mean())
  assert abs(ratio - 0.5) < 0.02


def test_attentive_keeps_the_highest_scoring_blocks_at_temperature_zero():
  scores = np.random.RandomState(0).uniform(0, 0.01, size=(2, 16)).astype(np.float32)
  grid = scores.reshape(2, 4, 4)
  grid[0, 0:2, 2:4] += 1.0  # block (0, 1)
  grid[1, 2:4, 0:2] += 1.0  # block (1, 0)
  keep_idx = np.asarray(masking.attentive_keep(jax.random.PRNGKey(0), grid.reshape(2, 16),
                                               (4, 4), 4, block=2))
  assert sorted(keep_idx[0]) == [2, 3, 6, 7]
  assert sorted(keep_idx[1]) == [8, 9, 12, 13]


def test_attentive_keeps_whole_blocks_and_rounds_k_up():
  assert masking.attentive_num_keep(98, 2) == 100  # A-CLIP: 25 of 49 blocks at 50%
  scores = jax.random.uniform(jax.random.PRNGKey(0), (3, 196))
  keep_idx = np.asarray(masking.attentive_keep(jax.random.PRNGKey(1), scores, (14, 14), 98))
  assert keep_idx.shape == (3, 100)
  blocks = (keep_idx // 14 // 2) * 7 + (keep_idx % 14) // 2
  assert all(np.all(np.bincount(row, minlength=49)[np.unique(row)] == 4) for row in blocks)


def test_attentive_sampling_differs_across_keys_and_follows_the_scores():
  scores = jnp.tile(jnp.linspace(0.01, 1.0, 64)[None], (1, 1))
  draws = [np.asarray(masking.attentive_keep(jax.random.PRNGKey(i), scores, (8, 8), 32,
                                             temperature=1.0))[0] for i in range(200)]
  assert len({tuple(sorted(d)) for d in draws}) > 50
  frequency = _frequency(np.stack(draws), 64)
  assert frequency[48:].mean() > frequency[:16].mean() + 0.2


def test_attentive_refuses_grids_the_block_does_not_tile():
  with pytest.raises(ValueError, match='block=2 does not tile the 7x7'):
    masking.attentive_keep(jax.random.PRNGKey(0), jnp.ones((1, 49)), (7, 7), 20)


@pytest.mark.parametrize('policy,kept', [('gaussian', 8), ('cluster', 11), ('attentive', 8)])
def test_registry_builds_each_policy_from_config(demo_dir, policy, kept):
  config = micro_config(demo_dir, **{'model.model_img.masking.policy': policy})
  built = masking.get_policy(config)
  assert (built.name, built.num_keep) == (policy, kept)
  assert built.needs_scores == (policy == 'attentive')
  images = jnp.zeros((2, 32, 32, 3)) + jnp.arange(32.)[None, :, None, None] % 7
  keep_idx, valid = built(jax.random.PRNGKey(0), images, jnp.ones((2, 16)))
  assert keep_idx.shape == (2, kept)
  assert (valid is not None) == (policy == 'cluster')


@pytest.mark.parametrize('field,value,message', [
    ('masking.sigma', 0.0, 'sigma=0.0'),
    ('masking.min_mask_ratio', 1.0, 'min_mask_ratio'),
    ('masking.anchor_ratio', 0.0, 'anchor_ratio=0.0'),
    ('masking.block', 3, 'block=3 does not tile'),
    ('masking.temperature', -1.0, 'temperature=-1.0'),
])
def test_policy_parameters_are_checked_with_their_field(demo_dir, field, value, message):
  policy = {'sigma': 'gaussian', 'min_mask_ratio': 'cluster', 'anchor_ratio': 'cluster',
            'block': 'attentive', 'temperature': 'attentive'}[field.split('.')[1]]
  config = micro_config(demo_dir, **{'model.model_img.masking.policy': policy,
                                     f'model.model_img.{field}': value})
  with pytest.raises(ValueError, match=message):
    masking.get_policy(config)
