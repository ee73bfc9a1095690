"""Resuming never loses checkpoints, never trains on something else than asked, and writes the
uninterrupted run's metrics."""

import json
import os
import re
import shutil
import signal
import threading
import time

import pytest

from input_pipeline import training_pairs
from tests.conftest import metrics_rows, micro_config, rows_without_timings
import train
from trainer import checkpoints
from trainer import metric_writers
from trainer import preemption
from trainer import resume
from trainer import saved_config


def _config(demo_dir, steps, **overrides):
  return micro_config(demo_dir, **{'total_steps': steps, 'eval_at_end': False,
                                   'checkpoint_every_steps': 1, **overrides})


def _steps(directory):
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def test_resume_step_moves_only_the_runs_own_later_checkpoints_and_only_once_restored(
    tmp_path, demo_dir):
  run = tmp_path / 'run'
  train.train_and_evaluate(_config(demo_dir, 4), str(run))
  assert _steps(run / 'checkpoints') == [2, 3, 4]
  other = tmp_path / 'other'
  shutil.copytree(run, other)
  # Another run's checkpoints are read, never touched.
  train.train_and_evaluate(_config(demo_dir, 4, resume_dir=str(other), resume_step=3),
                           str(tmp_path / 'new'))
  assert _steps(other / 'checkpoints') == [2, 3, 4]
  assert _steps(tmp_path / 'new' / 'checkpoints') == [4]
  # Evaluation moves nothing.
  train.train_and_evaluate(_config(demo_dir, 4, eval_only=True, resume_step=2), str(run))
  assert _steps(run / 'checkpoints') == [2, 3, 4]
  # A checkpoint that cannot be restored into this model: nothing is moved either.
  with pytest.raises(checkpoints.CheckpointError, match='cannot be restored'):
    train.train_and_evaluate(_config(demo_dir, 4, resume_step=2, accept_config_changes=True,
                                     **{'model.clr.proj_dim_out': 8}), str(run))
  assert _steps(run / 'checkpoints') == [2, 3, 4]
  # The run's own resume: once step 2 is restored, 3 and 4 are moved aside, not deleted.
  train.train_and_evaluate(_config(demo_dir, 4, resume_step=2), str(run))
  assert _steps(run / 'checkpoints_after_2') == [3, 4]
  assert _steps(run / 'checkpoints') == [2, 3, 4]


def test_resume_and_pretrain_dirs_that_hold_nothing_are_errors(tmp_path, demo_dir):
  with pytest.raises(FileNotFoundError, match=r"config.resume_dir='.*/no-such-run': no such"):
    train.train_and_evaluate(_config(demo_dir, 2, resume_dir=str(tmp_path / 'no-such-run')),
                             str(tmp_path / 'a'))
  assert not (tmp_path / 'no-such-run').exists()
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='config.resume_dir=.* holds no checkpoint'):
    train.train_and_evaluate(_config(demo_dir, 2, resume_dir=str(tmp_path / 'empty')),
                             str(tmp_path / 'b'))
  with pytest.raises(FileNotFoundError, match='config.pretrain_dir'):
    train.train_and_evaluate(_config(demo_dir, 2, pretrain_dir=str(tmp_path / 'typo')),
                             str(tmp_path / 'c'))
  assert not os.path.exists(tmp_path / 'c' / 'metrics.jsonl')


@pytest.mark.parametrize('field,value', [('seed_tf', 5), ('shuffle_buffer', 7),
                                         ('num_parallel_reads', 1)])
def test_every_change_of_the_data_stream_is_refused_even_without_config_json(
    tmp_path, demo_dir, field, value):
  run = tmp_path / 'run'
  train.train_and_evaluate(_config(demo_dir, 2), str(run))
  os.remove(run / 'config.json')  # the config travels with the checkpoint
  with pytest.raises(resume.ConfigChanged, match=field):
    train.train_and_evaluate(_config(demo_dir, 3, **{field: value}), str(run))


def test_a_corrupt_config_json_is_named(tmp_path, demo_dir):
  run = tmp_path / 'run'
  train.train_and_evaluate(_config(demo_dir, 2), str(run))
  (run / 'config.json').write_text('')
  with pytest.raises(ValueError, match=r'config.json is not a readable config'):
    saved_config.of_run(str(run))


def test_the_calibrated_threshold_survives_every_resume(tmp_path, demo_dir):
  run = tmp_path / 'run'
  cluster = {'model.model_img.masking.policy': 'cluster',
             'model.model_img.masking.calibrate': True}
  train.train_and_evaluate(_config(demo_dir, 2, **cluster), str(run))
  calibrated = saved_config.of_run(str(run)).model.model_img.masking.threshold
  assert calibrated != 0.5
  train.train_and_evaluate(_config(demo_dir, 3, **cluster), str(run))
  assert saved_config.of_run(str(run)).model.model_img.masking.threshold == calibrated


def _loss_rows(workdir):
  return [(r['step'], r['train_loss']) for r in metrics_rows(workdir) if 'train_loss' in r]


def test_after_a_preemption_or_a_kill_the_rows_are_the_uninterrupted_runs(
    tmp_path, demo_dir, monkeypatch):
  flags = dict(log_every_steps=4, checkpoint_every_steps=0, save_every_epochs=0.0)
  whole = tmp_path / 'whole'
  train.train_and_evaluate(_config(demo_dir, 6, **flags), str(whole))
  assert [s for s, _ in _loss_rows(whole)] == [4, 6]
  # Preempted at step 5: the step's metrics travel with its checkpoint.
  preempted = tmp_path / 'preempted'
  with monkeypatch.context() as patch:
    patch.setattr(preemption.Notice, 'reached', lambda self, step: step == 5)
    with pytest.raises(preemption.Preempted):
      train.train_and_evaluate(_config(demo_dir, 6, **flags), str(preempted))
  train.train_and_evaluate(_config(demo_dir, 6, **flags), str(preempted))
  assert _loss_rows(preempted) == _loss_rows(whole)
  # Killed after step 6 was logged but before it was saved: resumed at 3, the rows of 4..6
  # are written once, as before.
  killed = tmp_path / 'killed'
  every = dict(log_every_steps=1, checkpoint_every_steps=3)
  train.train_and_evaluate(_config(demo_dir, 6, **every), str(killed))
  before = _loss_rows(killed)
  shutil.rmtree(killed / 'checkpoints' / '6')
  with open(killed / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 7, "inp')  # and cut short as it wrote a line
  assert [r['step'] for r in metric_writers.read_rows(str(killed / 'metrics.jsonl'))][-1] == 6
  train.train_and_evaluate(_config(demo_dir, 6, **every), str(killed))
  assert _loss_rows(killed) == before
  lines = (killed / 'metrics.jsonl').read_text().splitlines()
  assert all(json.loads(line) for line in lines)


def test_a_notice_is_answered_while_the_input_is_stalled(tmp_path, demo_dir, monkeypatch):
  real = training_pairs.train_dataset

  class Stalling:
    """The real stream, whose fifth batch takes a minute to come; a SIGTERM is sent as the
    wait begins."""

    def __init__(self, *args, **kwargs):
      self.dataset = real(*args, **kwargs)

    def as_numpy_iterator(self):
      for index, batch in enumerate(self.dataset.as_numpy_iterator()):
        if index == 4:
          threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
          time.sleep(60)
        yield batch

  monkeypatch.setattr(training_pairs, 'train_dataset', Stalling)
  workdir = tmp_path / 'stalled'
  started = time.time()
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(_config(demo_dir, 10, checkpoint_every_steps=0,
                                     save_every_epochs=0.0), str(workdir))
  assert time.time() - started < 50  # not the minute the batch takes
  step = int(re.search(r'preempted at step (\d+)', str(stopped.value)).group(1))
  assert 1 <= step <= 4  # the last step whose batch came
  assert _steps(workdir / 'checkpoints') == [step]


def test_weights_holding_nan_are_refused_at_load_naming_the_tensor(tmp_path, demo_dir):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from models import clip  # pylint: disable=g-import-not-at-top
  from trainer import partitioning  # pylint: disable=g-import-not-at-top
  from trainer import state as state_lib  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  config = _config(demo_dir, 2)
  train.train_and_evaluate(config, str(workdir))
  # A step 3 whose text projection holds a NaN, written past the run's own guard.
  state = state_lib.create_train_state(config, clip.from_config(config), jax.random.PRNGKey(0),
                                       partitioning.make_mesh(config))
  manager = checkpoints.checkpoint_manager(str(workdir / 'checkpoints'), config)
  state = checkpoints.restore_checkpoint(manager, state, 2)
  kernel = state.params['text']['projection']['kernel']
  params = {**state.params, 'text': {**state.params['text'], 'projection': {
      'kernel': kernel.at[0, 0].set(jnp.nan)}}}
  checkpoints.save_checkpoint(manager, state.replace(step=3, params=params), {})
  manager.wait_until_finished()
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'checkpoints/3 cannot be restored .*NaN or infinite values in 1 '
                           r'tensors, params/text/projection/kernel first.*resume_step=2'):
    train.train_and_evaluate(_config(demo_dir, 2, eval_only=True), str(workdir))
  with pytest.raises(ValueError, match=r'pretrain_dir=.*parameter text/projection/kernel holds '
                                       'NaN or infinite values'):
    train.train_and_evaluate(_config(demo_dir, 2, pretrain_dir=str(workdir)),
                             str(tmp_path / 'from_it'))


def test_the_same_resume_step_command_started_again_goes_on_instead_of_back(tmp_path, demo_dir):
  run = tmp_path / 'run'
  train.train_and_evaluate(_config(demo_dir, 4), str(run))
  command = _config(demo_dir, 6, resume_step=2)
  train.train_and_evaluate(command, str(run))  # back to 2, then on to 6
  assert _steps(run / 'checkpoints_after_2') == [3, 4]
  assert _steps(run / 'checkpoints') == [4, 5, 6]  # step 2 itself no longer kept
  train.train_and_evaluate(_config(demo_dir, 8, resume_step=2), str(run))  # started again
  assert _steps(run / 'checkpoints') == [6, 7, 8]
  assert sorted(p.name for p in run.iterdir() if p.name.startswith('checkpoints_after')) == [
      'checkpoints_after_2']
  steps = [r['step'] for r in metrics_rows(run) if 'train_loss' in r]
  assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # the rows past 2 were written again once


def test_eval_only_of_a_runs_own_checkpoint_with_another_model_is_refused(tmp_path, demo_dir):
  run = tmp_path / 'run'
  train.train_and_evaluate(_config(demo_dir, 2), str(run))
  rows = metrics_rows(run)
  other = {'model.norm_eps': 1e-5}
  with pytest.raises(resume.ConfigChanged, match=r'eval_only: checkpoint .*/2 was trained with '
                                                 r'another config \(model.norm_eps: 1e-06 -> '
                                                 r"1e-05\).*--config.resume_dir="):
    train.train_and_evaluate(_config(demo_dir, 2, eval_only=True, **other), str(run))
  assert metrics_rows(run) == rows
  # Elsewhere, from resume_dir, its results are its own.
  train.train_and_evaluate(_config(demo_dir, 2, eval_only=True, resume_dir=str(run), **other),
                           str(tmp_path / 'elsewhere'))
  assert metrics_rows(run) == rows


def test_eval_only_with_nothing_to_evaluate_names_the_workdir(tmp_path, demo_dir):
  with pytest.raises(FileNotFoundError, match=f'no checkpoint in {tmp_path / "empty"} and no '
                                              'config.pretrain_dir'):
    train.train_and_evaluate(_config(demo_dir, 2, eval_only=True), str(tmp_path / 'empty'))


@pytest.mark.parametrize('stop', ['preempted', 'killed'])
def test_a_stop_between_a_save_and_its_evaluations_evaluates_that_step_on_resume(
    tmp_path, demo_dir, monkeypatch, stop):
  from tests import chaos  # pylint: disable=g-import-not-at-top
  from trainer import cadence  # pylint: disable=g-import-not-at-top
  from trainer import evaluations  # pylint: disable=g-import-not-at-top
  flags = dict(log_every_steps=1, eval_every_steps=2, eval_at_end=True,
               **{'evals.retrieval.every_steps': 0})
  monkeypatch.setattr(cadence.Cadence, 'pictures_due', lambda self, step: step % 2 == 0)
  whole = tmp_path / 'whole'
  train.train_and_evaluate(_config(demo_dir, 4, **flags), str(whole))
  stopped = tmp_path / 'stopped'
  run = evaluations.Evaluations.run

  def dies_at_2(self, state, step, names=None):
    if step == 2 and names:
      raise RuntimeError('killed during the evaluation of step 2')
    return run(self, state, step, names)

  with monkeypatch.context() as patch:
    if stop == 'preempted':  # SIGTERM during step 2: saved and stopped before evaluating
      patch.setattr(preemption.Notice, 'reached', lambda self, step: step == 2)
      with pytest.raises(preemption.Preempted):
        train.train_and_evaluate(_config(demo_dir, 4, **flags), str(stopped))
    else:  # killed while evaluating step 2, its checkpoint written
      patch.setattr(evaluations.Evaluations, 'run', dies_at_2)
      with pytest.raises(RuntimeError, match='killed'):
        train.train_and_evaluate(_config(demo_dir, 4, **flags), str(stopped))
  assert 2 in _steps(stopped / 'checkpoints')
  train.train_and_evaluate(_config(demo_dir, 4, **flags), str(stopped))
  assert rows_without_timings(stopped) == rows_without_timings(whole)
  assert sum('zeroshot/top1' in r for r in metrics_rows(stopped)) == 2  # steps 2 and 4, once
  # The mask pictures of step 2 too, of the same examples.
  pictures = chaos._summaries(stopped, 'images')  # pylint: disable=protected-access
  assert [step for step, _ in pictures['masked_examples']] == [2, 4]
  assert pictures == chaos._summaries(whole, 'images')  # pylint: disable=protected-access
