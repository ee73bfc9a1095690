"""The random (FLIP) policy and the registry that picks a policy from the config."""

import jax
import numpy as np
import pytest

import masking
from tests.conftest import micro_config


def test_random_keep_exact_k_distinct_in_range():
  keep = np.asarray(masking.random_keep(jax.random.PRNGKey(0), 64, 196, 98))
  assert keep.shape == (64, 98) and keep.dtype == np.int32
  assert keep.min() >= 0 and keep.max() < 196
  assert all(len(set(row)) == 98 for row in keep)


def test_random_keep_is_deterministic_per_key_and_varies_across_keys():
  a = masking.random_keep(jax.random.PRNGKey(1), 4, 49, 10)
  b = masking.random_keep(jax.random.PRNGKey(1), 4, 49, 10)
  c = masking.random_keep(jax.random.PRNGKey(2), 4, 49, 10)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({tuple(sorted(row)) for row in np.asarray(a)}) == 4  # rows differ too


def test_random_keep_is_uniform_over_positions():
  keep = np.asarray(masking.random_keep(jax.random.PRNGKey(3), 4000, 16, 8))
  frequency = np.bincount(keep.ravel(), minlength=16) / 4000
  np.testing.assert_allclose(frequency, 0.5, atol=0.04)


def test_random_keep_under_jit_and_vmap():
  jitted = jax.jit(masking.random_keep, static_argnums=(1, 2, 3))
  assert jitted(jax.random.PRNGKey(0), 2, 16, 4).shape == (2, 4)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  batched = jax.vmap(lambda k: masking.random_keep(k, 2, 16, 4))(keys)
  assert batched.shape == (3, 2, 4)


@pytest.mark.parametrize('num_patches,ratio,expected', [
    (196, 0.5, 98), (196, 0.75, 49), (100, 0.9, 10), (196, 0.0, 196), (4, 0.99, 1)])
def test_num_keep_formula(num_patches, ratio, expected):
  assert masking.num_keep(num_patches, ratio) == expected


@pytest.mark.parametrize('ratio', [1.0, 1.5, -0.1])
def test_impossible_mask_ratio_is_refused_with_the_field(demo_dir, ratio):
  config = micro_config(demo_dir, **{'model.model_img.mask_ratio': ratio})
  with pytest.raises(ValueError, match='mask_ratio'):
    masking.get_policy(config)


def test_unknown_policy_is_refused_with_the_known_names(demo_dir):
  config = micro_config(demo_dir, **{'model.model_img.masking.policy': 'checkerboard'})
  with pytest.raises(ValueError, match=r"masking.policy='checkerboard'.*random"):
    masking.get_policy(config)


def test_evaluation_is_unmasked_unless_masked_inference_is_asked(demo_dir):
  config = micro_config(demo_dir)
  train_policy = masking.get_policy(config, train=True)
  assert (train_policy.name, train_policy.num_keep, train_policy.num_patches) == ('random', 8,
                                                                                   16)
  assert masking.get_policy(config, train=False).name == 'none'
  config.model.model_img.masking.at_eval = True
  assert masking.get_policy(config, train=False).name == 'random'


def test_zero_mask_ratio_keeps_every_patch(demo_dir):
  config = micro_config(demo_dir, **{'model.model_img.mask_ratio': 0.0})
  policy = masking.get_policy(config)
  assert policy.name == 'none' and policy(jax.random.PRNGKey(0), np.zeros((2, 32, 32, 3))) is None


def test_image_size_must_be_a_multiple_of_the_patch(demo_dir):
  config = micro_config(demo_dir, image_size=30)
  with pytest.raises(ValueError, match='image_size=30'):
    masking.get_policy(config)


def test_each_policy_says_how_many_patches_it_encodes():
  """The start-up line: what mask_ratio 0.5 means for each policy on the demo's 6x6 grid."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  said = {}
  for name in ('none', 'random', 'gaussian', 'cluster', 'attentive'):
    config = tiny.get_config()
    config.model.model_img.masking.policy = name
    said[name] = masking.describe(masking.get_policy(config, train=True))
  assert said['none'] == 'no masking, all 36 patches encoded'
  assert said['random'] == 'random masking, 18 of 36 patches encoded'
  assert said['gaussian'] == 'gaussian masking, 18 of 36 patches encoded'
  assert said['attentive'].startswith('attentive masking, 20 of 36 patches encoded (whole '
                                      '2x2 blocks covering the 18')
  assert said['cluster'].startswith('cluster masking, up to 25 of 36 patches encoded, a '
                                    'number that varies per image')
