"""End to end: main.py trains, saves, resumes, evaluates; checkpoints; refusals."""

import os
import re
import subprocess
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import numpy as np
import pytest

from models import clip
from tests.conftest import ROOT, main_command, metrics_rows, micro_config
import train
from trainer import checkpoints
from trainer import checks
from trainer import optimizer
from trainer import partitioning
from trainer import pretrained
from trainer import resume
from trainer import saved_config
from trainer import state as state_lib

def _main(workdir, demo_dir, *overrides):
  return subprocess.run(main_command(workdir, demo_dir, *overrides), cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_main_trains_saves_resumes_and_evaluates(tmp_path, demo_dir):
  workdir = tmp_path / 'run'
  first = _main(workdir, demo_dir, '--config.total_steps=4', '--config.checkpoint_every_steps=2')
  assert first.returncode == 0, first.stderr[-3000:]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  rows = metrics_rows(workdir)
  train_rows = [r for r in rows if 'train_loss' in r]
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4]
  # The first step compiles: throughput is measured from the steps after it.
  assert 'images_per_sec' not in train_rows[0] and 'input_wait_fraction' not in train_rows[0]
  for row in train_rows:
    assert row['kept_patches'] == 8.0 and row['skipped_records'] == 0
    assert 0 < row['temperature'] < 1
    assert np.isfinite(row['train_loss']) and row['learning_rate'] >= 0
  for row in train_rows[1:]:
    assert row['images_per_sec'] > 0 and 0 <= row['input_wait_fraction'] <= 1
  final = [r for r in rows if 'zeroshot/top1' in r]
  assert [r['step'] for r in final] == [4]
  assert 0 <= final[0]['zeroshot/top1'] <= final[0]['zeroshot/top5'] <= 1
  assert final[0]['zeroshot/images'] == 64  # 2 of each of the 32 demo classes
  assert 'step 4/4 | loss' in first.stderr and 'ETA' in first.stderr
  # The console: the start-up block, the compile, one line per log window, evaluations and
  # results; what the libraries log per window, and device probing, only in train.log.
  console = first.stderr.splitlines()
  assert sum(' | loss ' in line for line in console) == 4
  assert sum('ETA' in line for line in console) == 3  # the compiling window has none
  assert sum('First step compiled and ran in' in line for line in console) == 1
  assert any(re.search(r'Model: [\d,]+ parameters \(image tower [\d,]+, text tower', line)
             for line in console)
  log = (workdir / 'train.log').read_text()
  for noise in ('Setting work unit notes', 'steps_per_sec=', 'train_loss=', 'Got images',
                'cuInit', "backend 'tpu'", 'absl::InitializeLog', 'oneDNN'):
    assert noise not in first.stderr, noise
  for detail in ('Setting work unit notes', 'train_loss=', 'Checkpoint 2: training waited'):
    assert detail in log, detail

  second = _main(workdir, demo_dir, '--config.total_steps=6')
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'at step 4' in second.stderr
  new_rows = metrics_rows(workdir)[len(rows):]
  assert [r['step'] for r in new_rows if 'train_loss' in r] == [5, 6]
  assert '6' in os.listdir(workdir / 'checkpoints')

  # The finished run started again evaluates again, replacing its step-6 results.
  events = sorted(os.listdir(workdir))
  third = _main(workdir, demo_dir, '--config.total_steps=6')
  assert third.returncode == 0, third.stderr[-3000:]
  assert 'already reached step 6' in third.stderr
  rows = metrics_rows(workdir)
  assert rows[-1]['step'] == 6 and 'zeroshot/top1' in rows[-1]
  assert sum('zeroshot/top1' in r for r in rows if r['step'] == 6) == 1
  assert sorted(os.listdir(workdir)) == sorted(events + ['reevaluated'])


def test_the_same_command_twice_trains_the_same_losses(tmp_path, demo_dir):
  """Data order, crops, masks and initialisation all come from the config's seeds."""
  losses = []
  for run in ('first', 'second'):
    config = micro_config(demo_dir, total_steps=3, eval_at_end=False, save_at_end=False)
    train.train_and_evaluate(config, str(tmp_path / run))
    losses.append([r['train_loss'] for r in metrics_rows(tmp_path / run) if 'train_loss' in r])
  assert len(losses[0]) == 3 and losses[0] == losses[1]
  config = micro_config(demo_dir, total_steps=3, eval_at_end=False, save_at_end=False,
                        seed_tf=1)
  train.train_and_evaluate(config, str(tmp_path / 'other_data_seed'))
  assert [r['train_loss'] for r in metrics_rows(tmp_path / 'other_data_seed')
          if 'train_loss' in r] != losses[0]


def test_command_line_refuses_unknown_fields_and_wrong_types(tmp_path, demo_dir):
  unknown = _main(tmp_path, demo_dir, '--config.model.model_img.mask_ration=0.5')
  assert unknown.returncode != 0 and 'mask_ration' in unknown.stderr
  wrong_type = _main(tmp_path, demo_dir, '--config.batch_size=big')
  assert wrong_type.returncode != 0 and 'config.batch_size' in wrong_type.stderr
  assert not os.path.exists(tmp_path / 'metrics.jsonl')


def test_checkpoint_round_trip_restores_params_optimizer_and_step(tmp_path, demo_dir):
  config = micro_config(demo_dir)
  mesh = partitioning.make_mesh(config)
  model = clip.from_config(config)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(0), mesh)
  state = state.apply_gradients(grads=jax.tree.map(np.ones_like, state.params))
  manager = checkpoints.checkpoint_manager(str(tmp_path / 'ckpt'), config)
  checkpoints.save_checkpoint(manager, state)
  manager.wait_until_finished()
  fresh = state_lib.create_train_state(config, model, jax.random.PRNGKey(1), mesh)
  restored = checkpoints.restore_checkpoint(manager, fresh, manager.latest_step())
  assert int(restored.step) == 1
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((restored.params, restored.opt_state))):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, demo_dir):
  workdir = str(tmp_path / 'nan')
  config = micro_config(demo_dir, total_steps=2, eval_at_end=False)
  train.train_and_evaluate(config, workdir)
  diverging = micro_config(demo_dir, total_steps=6, learning_rate=1e35, eval_at_end=False,
                           checkpoint_every_steps=1, warmup_epochs=0.0)
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(diverging, workdir)
  found = re.search(r'non-finite loss or state by step (\d+); the last good checkpoint is '
                    r'step (\d+)', str(error.value))
  assert found, str(error.value)
  bad_step, good_step = int(found.group(1)), int(found.group(2))
  assert 2 <= good_step < bad_step <= 6
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert saved[-1] == good_step  # nothing at or after the non-finite step was written
  # The good checkpoint is good: every parameter and moment in it is finite.
  for item in ('params', 'opt_state'):
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, 'checkpoints', str(good_step), item))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored)
               if np.issubdtype(np.asarray(x).dtype, np.floating)), item


def test_a_state_spoilt_after_its_loss_was_computed_is_never_saved(tmp_path, demo_dir,
                                                                   monkeypatch):
  # From the third update on, a NaN learning rate: the loss and gradient of step 3 are still
  # finite (they come from step 2's parameters), the parameters after it are not.
  monkeypatch.setattr(optimizer, 'learning_rate_schedule',
                      lambda config: lambda count: jnp.where(count >= 2, jnp.nan, 1e-3))
  workdir = str(tmp_path / 'spoilt')
  config = micro_config(demo_dir, total_steps=6, checkpoint_every_steps=1, eval_at_end=False,
                        log_every_steps=100)
  with pytest.raises(train.NonFiniteLossError, match='the last good checkpoint is step 2'):
    train.train_and_evaluate(config, workdir)
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))) == [1, 2]


@pytest.mark.parametrize('field,value', [
    ('learning_rate', float('nan')), ('abs_learning_rate', -1e-3), ('min_abs_lr', float('inf')),
    ('warmup_epochs', -1.0), ('warmup_steps', -5), ('batch_size', 1)])
def test_learning_rates_warmups_and_batches_that_cannot_train_are_refused(demo_dir, field,
                                                                          value):
  with pytest.raises(ValueError, match=f'config.{field}='):
    checks.check(micro_config(demo_dir, **{field: value}))


def test_a_negative_checkpoint_count_is_refused_and_0_keeps_every_one(demo_dir):
  with pytest.raises(ValueError, match=r'config.keep_checkpoints=-1: expected a finite value '
                                       r'>= 0 \(0 keeps every checkpoint\)'):
    checks.check(micro_config(demo_dir, keep_checkpoints=-1))
  checks.check(micro_config(demo_dir, keep_checkpoints=0))


def test_pretrain_dir_loads_weights_only_and_resamples_position_embeddings(tmp_path, demo_dir):
  source = str(tmp_path / 'source')
  train.train_and_evaluate(micro_config(demo_dir, total_steps=1, eval_at_end=False,
                                        **{'model.model_img.sincos': False}), source)
  config = micro_config(demo_dir, total_steps=1, eval_at_end=False, save_at_end=False,
                        image_size=48, pretrain_dir=source,
                        **{'model.model_img.sincos': False})
  mesh = partitioning.make_mesh(config)
  model = clip.from_config(config)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(5), mesh)
  loaded = pretrained.load_pretrained_params(source, state.params)
  saved = ocp.StandardCheckpointer().restore(os.path.join(source, 'checkpoints', '1',
                                                                'params'))
  assert loaded['image']['pos_embedding'].shape == (1, 36, 32)
  np.testing.assert_array_equal(loaded['text']['token_embedding']['embedding'],
                                saved['text']['token_embedding']['embedding'])
  # Fine-tuning from it starts a new optimiser at step 0 and runs.
  train.train_and_evaluate(config, str(tmp_path / 'tuned'))
  wider = micro_config(demo_dir, **{'model.clr.proj_dim_out': 24,
                                    'model.model_img.sincos': False})
  state = state_lib.create_train_state(wider, clip.from_config(wider), jax.random.PRNGKey(0),
                                   partitioning.make_mesh(wider))
  with pytest.raises(ValueError, match=r'pretrain_dir.*image/projection/kernel has shape'):
    pretrained.load_pretrained_params(source, state.params)
  sincos = micro_config(demo_dir)
  state = state_lib.create_train_state(sincos, clip.from_config(sincos),
                                   jax.random.PRNGKey(0), partitioning.make_mesh(sincos))
  with pytest.raises(ValueError, match=r"unexpected \['image/pos_embedding'\]"):
    pretrained.load_pretrained_params(source, state.params)
  scanned = micro_config(demo_dir, **{'model.model_img.sincos': False,
                                      'model.scan_layers': True})
  state = state_lib.create_train_state(scanned, clip.from_config(scanned),
                                        jax.random.PRNGKey(0), partitioning.make_mesh(scanned))
  # Unrolled blocks go into a scanned model stacked, each block's weights in its layer.
  loaded = pretrained.load_pretrained_params(source, state.params)
  blocks = loaded['image']['encoder']['blocks']['mlp']['Dense_0']['kernel']
  unrolled = saved['image']['encoder']
  for layer in range(blocks.shape[0]):
    np.testing.assert_array_equal(blocks[layer],
                                  unrolled[f'block_{layer:02d}']['mlp']['Dense_0']['kernel'])


def test_batch_that_does_not_divide_the_devices_is_refused(demo_dir):
  config = micro_config(demo_dir, batch_size=10)
  with pytest.raises(ValueError, match=r'batch_size=10 does not divide over the 4 devices'):
    partitioning.make_mesh(config, devices=jax.devices() * 4)
  config = micro_config(demo_dir, eval_batch_size=6)
  with pytest.raises(ValueError, match=r'eval_batch_size=6 does not divide over the 4 devices'):
    partitioning.make_mesh(config, devices=jax.devices() * 4)
  config = micro_config(demo_dir, grad_accum_steps=4)  # micro-batches of 2
  with pytest.raises(ValueError, match=r'grad_accum_steps=2 does not divide over the 4 dev'):
    partitioning.make_mesh(config, devices=jax.devices() * 4)
  config = micro_config(demo_dir, **{'partitioning.num_partitions': 3})
  with pytest.raises(ValueError, match='num_partitions=3 does not divide the 4 devices'):
    partitioning.make_mesh(config, devices=jax.devices() * 4)


@pytest.mark.parametrize('field,value,message', [
    ('aug.area_range', (0.0, 1.0), 'area_range'),
    ('eval_batch_size', 0, 'eval_batch_size=0'),
    ('checkpoint_every_steps', -1, 'checkpoint_every_steps=-1'),
    ('model.model_txt.transformer.num_heads', 3, 'model_txt.hidden_size=32 does not divide'),
    ('eval_templates', 'openai81', 'eval_templates'),
    ('model.activation', 'relu', "activation='relu'"),
    ('model.attention', 'flash', "attention='flash'"),
    ('model.model_img.cls_position', True, 'cls_position=True needs a learned position'),
    ('model.model_txt.pool', 'last', "model_txt.pool='last'"),
    ('aug.pixel_std', (0.2, 0.0, 0.2), r'pixel_std=\(0.2, 0.0, 0.2\)'),
    ('aug.txt.tokenizer', 'clip_bpe',
     'vocab_size=30523: the clip_bpe tokenizer gives ids up to 49407'),
])
def test_config_checks_name_the_field(demo_dir, field, value, message):
  with pytest.raises(ValueError, match=message):
    train.check_config(micro_config(demo_dir, **{field: value}))


def test_fields_added_since_a_run_was_saved_are_no_change_at_their_defaults(demo_dir):
  config = micro_config(demo_dir)
  saved = saved_config.as_json(config)
  del saved['model']['activation'], saved['aug']['pixel_mean']  # a config saved before them
  assert resume.changes_since(saved, config) == {}
  config.model.activation = 'gelu'
  assert resume.changes_since(saved, config) == {
      'model.activation': [None, 'gelu']}


def test_missing_training_data_is_reported_before_training(tmp_path, demo_dir):
  config = micro_config(demo_dir, laion_path=str(tmp_path / 'no-such-dir'))
  with pytest.raises(FileNotFoundError, match='laion_path'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints' / '1')


def test_schedule_warms_up_then_decays_to_the_floor(demo_dir):
  config = micro_config(demo_dir, total_steps=100, warmup_epochs=10 * 8 / 96,
                        learning_rate=2.56e-3, batch_size=8, min_abs_lr=1e-6)
  schedule = optimizer.learning_rate_schedule(config)
  peak = 2.56e-3 * 8 / 256
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(peak)
  assert float(schedule(100)) == pytest.approx(1e-6)
  assert float(schedule(5)) == pytest.approx(peak / 2)


@pytest.mark.parametrize('decay_set,decayed,kept', [
    # FLIP decays its class token and logit_scale; not its position table.
    ('flip', {'cls', 'logit_scale'}, {'image_pos', 'text_pos'}),
    # open_clip decays the position tables; not the class embedding or logit_scale.
    ('open_clip', {'image_pos', 'text_pos'}, {'cls', 'logit_scale'}),
    ('kernels', set(), {'cls', 'logit_scale', 'image_pos', 'text_pos'}),
])
def test_each_decay_set_decays_what_its_trainer_decays(demo_dir, decay_set, decayed, kept):
  config = micro_config(demo_dir, **{'model.model_img.sincos': False,
                                     'model.scan_layers': True, 'decay_set': decay_set})
  model = clip.from_config(config)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), *state_lib.dummy_inputs(config)))
  mask = optimizer.weight_decay_mask(params['params'], decay_set)
  blocks = mask['image']['encoder']['blocks']  # stacked: biases and scales are [layers, D]
  assert blocks['mlp']['Dense_0']['kernel'] and blocks['attention']['query']['kernel']
  assert not blocks['mlp']['Dense_0']['bias'] and not blocks['attention']['query']['bias']
  assert not blocks['norm_mlp']['scale'] and not mask['image']['encoder']['norm_out']['scale']
  assert mask['text']['token_embedding']['embedding'] and mask['image']['projection']['kernel']
  named = {'cls': mask['image']['cls'], 'logit_scale': mask['logit_scale'],
           'image_pos': mask['image']['pos_embedding'],
           'text_pos': mask['text']['pos_embedding']}
  assert {k for k, v in named.items() if v} == decayed
  assert {k for k, v in named.items() if not v} == kept
  # The start-up log names the groups with their sizes.
  text = optimizer.describe_decay(config, params['params'])
  assert f"on the '{decay_set}' set" in text and 'logit_scale x1 (1)' in text
  with pytest.raises(ValueError, match="decay_set='some'"):
    checks.check(micro_config(demo_dir, decay_set='some'))


def test_several_hosts_are_detected_from_the_environment():
  import main  # pylint: disable=g-import-not-at-top
  assert not main.launched_on_several_hosts({})
  assert not main.launched_on_several_hosts({'TPU_WORKER_HOSTNAMES': 'w0'})
  assert main.launched_on_several_hosts({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'})
  assert main.launched_on_several_hosts({'SLURM_NTASKS': '4'})
  assert main.launched_on_several_hosts({'JAX_COORDINATOR_ADDRESS': 'host0:1234'})


@pytest.mark.parametrize('overrides,mesh_shape,message', [
    ({'partitioning.num_partitions': 3}, {'data': 2, 'model': 3},
     'model_img.transformer.num_heads=2 does not divide over the 3 devices of the model'),
    ({'partitioning.strategy': 'fsdp'}, {'data': 5, 'model': 1},
     'model_img.hidden_size=32 does not divide over the 5 devices of the data axis'),
])
def test_model_dimensions_must_divide_over_their_mesh_axis(demo_dir, overrides, mesh_shape,
                                                          message):
  mesh = types.SimpleNamespace(shape=mesh_shape)
  with pytest.raises(ValueError, match=message):
    partitioning.check_divisibility(micro_config(demo_dir, **overrides), mesh)


def test_mesh_larger_than_the_devices_and_unknown_strategy_are_refused(demo_dir):
  with pytest.raises(ValueError, match='num_partitions=8 does not divide the 4 devices'):
    partitioning.make_mesh(micro_config(demo_dir, **{'partitioning.num_partitions': 8}),
                           devices=jax.devices() * 4)
  with pytest.raises(ValueError, match="strategy='zero2'"):
    checks.check(micro_config(demo_dir, **{'partitioning.strategy': 'zero2'}))
  with pytest.raises(ValueError, match='grad_accum_steps=3'):
    checks.check(micro_config(demo_dir, grad_accum_steps=3))


def test_first_moment_dtype_as_flip_behaves_or_bfloat16_for_good(demo_dir):
  params = {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones((4,))}
  grads = {'kernel': jnp.full((4, 4), 0.1), 'bias': jnp.full((4,), 0.1)}

  def moment_dtypes(**overrides):
    tx = optimizer.make_optimizer(micro_config(demo_dir, **overrides))
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    adam = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, 'mu'))
            if hasattr(s, 'mu')][0]
    return adam.mu['kernel'].dtype, adam.nu['kernel'].dtype

  # FLIP's opt_mu_dtype: its AdamW never casts the moment back, so it is float32.
  assert moment_dtypes(opt_mu_dtype='bfloat16') == (jnp.float32, jnp.float32)
  # opt.mu_dtype keeps it in bfloat16 (half the memory); the second moment stays float32.
  assert moment_dtypes(**{'opt.mu_dtype': 'bfloat16'}) == (jnp.bfloat16, jnp.float32)
  with pytest.raises(ValueError, match='opt_mu_dtype'):
    checks.check(micro_config(demo_dir, opt_mu_dtype='float8'))
  with pytest.raises(ValueError, match='opt.mu_dtype'):
    checks.check(micro_config(demo_dir, **{'opt.mu_dtype': 'float8'}))


@pytest.mark.parametrize('field,value,message', [
    ('model.clr.clr_loss', False, 'clr_loss=False'),
    ('model.model_txt.mask_ratio', 0.3, 'model_txt.mask_ratio=0.3'),
    ('model.model_img.transformer.droppath_rate', 1.0, 'droppath_rate=1.0'),
    ('model.model_img.transformer.remat_policy', 'some', "remat_policy='some'"),
    ('aug.txt.tokenizer', 'sentencepiece', "tokenizer='sentencepiece'"),
])
def test_flip_fields_refuse_values_they_cannot_mean(demo_dir, field, value, message):
  with pytest.raises(ValueError, match=message):
    checks.check(micro_config(demo_dir, **{field: value}))


def test_flip_recipes_evaluate_after_the_first_epoch_and_every_vis_epochs(
    tmp_path, demo_dir, caplog):
  """FLIP's train.py evaluates after the first virtual epoch and each epoch that
  vis_every_epochs divides, and its checkpointer deletes nothing (configs/cfg_flip_*.py)."""
  from configs import cfg_flip_base  # pylint: disable=g-import-not-at-top
  flip = cfg_flip_base.get_config()
  assert flip.eval_every_vis_epochs and flip.keep_checkpoints == 0
  config = micro_config(demo_dir, total_steps=36, eval_every_steps=0, eval_at_end=False,
                        vis_every_epochs=2.0, checkpoint_every_steps=6, warmup_epochs=4.0,
                        eval_every_vis_epochs=flip.eval_every_vis_epochs,
                        keep_checkpoints=flip.keep_checkpoints)
  assert optimizer.steps_per_epoch(config) == 12
  train.train_and_evaluate(config, str(tmp_path))
  evaluated = [r['step'] for r in metrics_rows(tmp_path) if 'zeroshot/top1' in r]
  assert evaluated == [12, 24]
  assert sorted(map(int, os.listdir(tmp_path / 'checkpoints'))) == [6, 12, 18, 24, 30, 36]
  assert any('The warmup (48 steps) is longer than the run (36 steps)' in r.getMessage()
             for r in caplog.records if r.levelname == 'WARNING')
