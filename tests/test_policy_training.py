"""Training with each policy: the loss falls, views, the EMA teacher, kept-share metrics."""

import os

import jax
import numpy as np
import pytest

from configs import presets
from input_pipeline.tokenizer import BertTokenizer, ClipBpeTokenizer
from input_pipeline import training_pairs
import masking
from models import clip
from models import pixel_normalization
from tests.conftest import micro_config
import train
from trainer import checkpoints
from trainer import checks
from trainer import cluster_calibration
from trainer import objective as objective_lib
from trainer import partitioning
from trainer import state as state_lib
from trainer import step as step_lib


def first_batch(demo_dir, tokenizer):
  config = micro_config(demo_dir)
  shards = training_pairs.list_shards(config.laion_path)
  dataset = training_pairs.train_dataset(config, tokenizer, shards, seed=0)
  return next(dataset.as_numpy_iterator())


@pytest.fixture(scope='module')
def demo_batch(demo_dir):
  return first_batch(demo_dir, BertTokenizer(16))


@pytest.fixture(scope='module')
def clip_bpe_batch(demo_dir):
  """The same batch tokenized with CLIP's BPE, for open_clip's towers."""
  return first_batch(demo_dir, ClipBpeTokenizer(16))


def open_clip_towers(config):
  presets.open_clip_towers(config)
  config.aug.txt.max_len = 16
  return config


def _run(config, batch, steps):
  mesh = partitioning.make_mesh(config)
  _, _, _, state, step_fn = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  batch = partitioning.global_batch(mesh, batch)
  history = []
  for _ in range(steps):
    state, metrics = step_fn(state, batch, jax.random.PRNGKey(1))
    history.append(jax.device_get(metrics))
  return state, history


POLICY_CASES = {
    'random': {},
    'gaussian': {},
    'cluster': {'model.model_img.masking.threshold': 0.8},
    'attentive': {},
    'attentive+aclip': {'model.model_img.masking.policy': 'attentive',
                        'model.model_img.masking.num_views': 2,
                        'model.model_img.masking.temperature': 1.0,
                        'model.aclip.distill_weight': 1.0, 'model.aclip.simclr_weight': 0.1,
                        'model.aclip.head_dim': 16},
}


@pytest.mark.parametrize('towers', ['flip', 'open_clip'])
@pytest.mark.parametrize('case', sorted(POLICY_CASES))
def test_a_few_steps_of_each_policy_reduce_the_loss(demo_dir, demo_batch, clip_bpe_batch, case,
                                                    towers):
  overrides = {'model.model_img.masking.policy': case, **POLICY_CASES[case]}
  config = micro_config(demo_dir, total_steps=100, warmup_epochs=0.0, learning_rate=0.05,
                        **overrides)
  batch = demo_batch
  if towers == 'open_clip':
    config, batch = open_clip_towers(config), clip_bpe_batch
    assert batch['tokens'][:, 0].tolist() == [49406] * len(batch['tokens'])
  _, history = _run(config, batch, 8)
  losses = [h['train_loss'] for h in history]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.1, losses
  fraction = history[0]
  assert 0 < fraction['kept_fraction_min'] <= fraction['kept_fraction_mean'] <= \
      fraction['kept_fraction_max'] <= 1
  if case == 'attentive+aclip':
    assert {'distill_loss', 'simclr_loss', 'contrastive_loss'} <= set(history[0])


@pytest.mark.parametrize('towers', ['flip', 'open_clip'])
@pytest.mark.parametrize('case', ['cluster', 'attentive+aclip'])
def test_the_sigmoid_loss_and_text_reduction_train_with_padded_and_attentive_policies(
    demo_dir, demo_batch, clip_bpe_batch, case, towers):
  """Padded masks (cluster), views, an EMA teacher and A-CLIP's losses, with SigLIP's loss
  and the captions cut by syntax (FLIP's WordPiece) or block (CLIP's BPE)."""
  overrides = {'model.model_img.masking.policy': case, **POLICY_CASES[case],
               'model.loss': 'sigmoid', 'model.model_txt.masking.num_tokens': 5,
               'model.model_txt.masking.policy': 'syntax' if towers == 'flip' else 'block'}
  config = micro_config(demo_dir, total_steps=100, warmup_epochs=0.0, learning_rate=0.05,
                        **overrides)
  batch = demo_batch
  if towers == 'open_clip':
    config, batch = open_clip_towers(config), clip_bpe_batch
  _, history = _run(config, batch, 8)
  losses = [h['train_loss'] for h in history]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses
  assert history[-1]['logit_bias'] != history[0]['logit_bias']
  assert all(h['text_tokens'] <= 5 for h in history)


def test_ema_teacher_follows_the_momentum_formula(demo_dir, demo_batch):
  config = micro_config(demo_dir, total_steps=10,
                        **{'model.model_img.masking.policy': 'attentive'})
  mesh = partitioning.make_mesh(config)
  _, _, objective, state, step_fn = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  before = jax.device_get(state.ema_params)
  state, _ = step_fn(state, partitioning.global_batch(mesh, demo_batch), jax.random.PRNGKey(1))
  momentum = 1 - (1 - 0.996) * (np.cos(np.pi * 1 / 10) + 1) / 2
  expected = jax.tree.map(lambda e, p: momentum * e + (1 - momentum) * p, before,
                          jax.device_get(state_lib.teacher_part(state.params)))
  for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert float(objective.momentum(0)) == pytest.approx(0.996)
  assert float(objective.momentum(10)) == pytest.approx(1.0)


def test_views_are_masked_independently_and_each_contrasted(demo_dir, demo_batch):
  config = micro_config(demo_dir, **{'model.model_img.masking.num_views': 3})
  policy = masking.get_policy(config)
  keep_idx, valid = step_lib.sample_views(policy, jax.random.PRNGKey(0),
                                       demo_batch['image'], None, 3)
  assert keep_idx.shape == (24, 8) and valid is None
  views = np.asarray(keep_idx).reshape(3, 8, 8)
  assert not np.array_equal(np.sort(views[0], 1), np.sort(views[1], 1))
  _, history = _run(config, demo_batch, 1)
  assert history[0]['kept_fraction_mean'] == pytest.approx(0.5)


def test_unmasked_training_reports_every_patch_kept(demo_dir, demo_batch):
  config = micro_config(demo_dir, **{'model.model_img.mask_ratio': 0.0})
  _, history = _run(config, demo_batch, 1)
  assert history[0]['kept_patches'] == 16 and history[0]['kept_fraction_min'] == 1.0


def test_attentive_run_checkpoints_its_teacher_and_evaluates_masked(tmp_path, demo_dir):
  workdir = str(tmp_path / 'attentive')
  config = micro_config(demo_dir, total_steps=2, **{
      'model.model_img.masking.policy': 'attentive', 'model.model_img.masking.at_eval': True})
  results = train.train_and_evaluate(config, workdir)
  assert 0 <= results['zeroshot/top1'] <= 1
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2', 'ema_params'))
  mesh = partitioning.make_mesh(config)
  model = clip.from_config(config)
  objective = objective_lib.objective_of(config, masking.get_policy(config))
  fresh = state_lib.create_train_state(config, model, jax.random.PRNGKey(9), mesh, objective)
  manager = checkpoints.checkpoint_manager(os.path.join(workdir, 'checkpoints'), config)
  restored = checkpoints.restore_checkpoint(manager, fresh, 2)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored.ema_params),
                                                      jax.tree.leaves(fresh.ema_params)))


def test_cluster_calibration_sets_the_threshold_for_training(demo_dir, demo_batch):
  config = micro_config(demo_dir, **{'model.model_img.masking.policy': 'cluster'})
  policy = cluster_calibration.calibrate(config, demo_batch['image'], jax.random.PRNGKey(0))
  threshold = config.model.model_img.masking.threshold
  assert threshold != 0.5 and policy.name == 'cluster'
  images = pixel_normalization.normalize(demo_batch['image'])
  share = float(masking.cluster_mask(jax.random.PRNGKey(0), images, (8, 8), 0.03,
                                     threshold).mean())
  assert abs(share - 0.5) < 0.1  # 8 images of 16 patches: a coarse target


def test_simclr_needs_two_views(demo_dir):
  config = micro_config(demo_dir, **{'model.aclip.simclr_weight': 0.1})
  with pytest.raises(ValueError, match='num_views >= 2'):
    checks.check(config)
