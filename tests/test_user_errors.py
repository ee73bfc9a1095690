"""What a user can get wrong ends in one clear line, before anything is lost or written."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, main_command, metrics_rows, micro_config
import train
from trainer import checkpoints
from trainer import checks
from trainer import metric_writers
from trainer import resume


def _last_line(completed):
  return completed.stderr.strip().splitlines()[-1]


def test_flag_mistakes_end_in_one_line(tmp_path, demo_dir):
  misspelled = subprocess.run(main_command(tmp_path / 'run', demo_dir,
                                           '--config.model.model_img.mask_ration=0.5'),
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert misspelled.returncode == 1
  assert _last_line(misspelled) == (
      'error: --config.model.model_img.mask_ration: the config has no field mask_ration; '
      'did you mean mask_ratio? (configs/default.py lists every field)')
  no_workdir = [a for a in main_command(tmp_path / 'run', demo_dir)
                if not a.startswith('--workdir')]
  missing = subprocess.run(no_workdir, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert missing.returncode == 1 and _last_line(missing).startswith('error: --workdir is required')
  assert 'Traceback' not in misspelled.stderr + missing.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_help_exits_0_at_once_with_the_usage():
  started = time.time()
  shown = subprocess.run([sys.executable, 'main.py', '--help'], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
  assert shown.returncode == 0, shown.stderr
  # TensorFlow and the training modules are not imported for it (their import alone takes
  # seconds), so nothing of theirs is printed.
  assert time.time() - started < 30
  usage = shown.stdout.splitlines()
  assert ('  python main.py --workdir=DIR --config=configs/cfg_flip_base.py '
          '--config.laion_path=PATH') in usage
  assert not any('   --' in line for line in usage if line.startswith('  python'))
  assert '--workdir' in shown.stdout and shown.stderr == ''


def test_an_error_exit_removes_its_temporary_files(tmp_path, demo_dir):
  temporary = tmp_path / 'tmp'
  temporary.mkdir()
  failed = subprocess.run(main_command(tmp_path / 'run', demo_dir,
                                       f'--config.pretrain_dir={tmp_path / "nowhere"}'),
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TMPDIR=str(temporary)))
  assert failed.returncode == 1
  assert _last_line(failed).startswith('error: config.pretrain_dir')
  assert os.listdir(temporary) == []
  # The console shows the reason once; the log file ends with it too.
  assert failed.stderr.count('error: config.pretrain_dir') == 1
  assert 'error: config.pretrain_dir' in (tmp_path / 'run' / 'train.log').read_text()
  assert 'Traceback' not in failed.stderr and '--verbosity=1 shows where' in failed.stderr
  # --verbosity=1: where it was raised.
  shown = subprocess.run(main_command(tmp_path / 'run', demo_dir, '--verbosity=1',
                                      f'--config.pretrain_dir={tmp_path / "nowhere"}'),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert shown.returncode == 1 and 'Traceback (most recent call last)' in shown.stderr
  assert 'check_pretrained' in shown.stderr


def test_ctrl_c_during_start_up_ends_in_one_line(tmp_path, demo_dir):
  # Ctrl-C as a terminal gives it: a suite started as a background job of a script inherits
  # SIGINT ignored, and so would the run (which then trains on to its end).
  run = subprocess.Popen(main_command(tmp_path / 'run', demo_dir), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.time() + 120
    for line in run.stderr:  # the first line main.py logs, once JAX is up
      if 'Devices:' in line:
        break
      assert time.time() < deadline
    run.send_signal(signal.SIGINT)
    rest = run.stderr.read()
    assert run.wait(timeout=60) == 130
  finally:
    run.kill()
  assert rest.strip().splitlines()[-1] == (
      'interrupted (Ctrl-C) before training began; nothing was saved')
  assert 'Traceback' not in rest


def test_bad_data_path_is_refused_before_anything_is_written(tmp_path, demo_dir):
  workdir = tmp_path / 'run'
  with pytest.raises(FileNotFoundError, match='config.laion_path=.*nothing matches'):
    train.train_and_evaluate(micro_config(demo_dir, laion_path=str(tmp_path / 'nowhere')),
                             str(workdir))
  assert not os.path.exists(workdir)


def test_garbage_pretrain_dir_names_the_field_and_the_folder(tmp_path, demo_dir):
  garbage = tmp_path / 'garbage' / 'checkpoints' / '5'
  (garbage / 'params').mkdir(parents=True)
  for name in ('_CHECKPOINT_METADATA', 'params/_METADATA', 'params/_sharding'):
    (garbage / name).write_text('junk')
  with pytest.raises(ValueError, match=r"config.pretrain_dir='.*garbage'.*checkpoints/5 is "
                     'not a readable checkpoint'):
    train.train_and_evaluate(micro_config(demo_dir, total_steps=1, eval_at_end=False,
                                          pretrain_dir=str(tmp_path / 'garbage')),
                             str(tmp_path / 'run'))


def test_resume_refuses_a_config_that_trains_something_else_and_records_other_changes(
    tmp_path, demo_dir):
  workdir = str(tmp_path / 'run')
  config = lambda steps, **kw: micro_config(demo_dir, total_steps=steps, eval_at_end=False,
                                             **kw)
  train.train_and_evaluate(config(1), workdir)
  wider = config(2, **{'model.model_img.hidden_size': 48, 'batch_size': 16})
  with pytest.raises(resume.ConfigChanged,
                     match=r'batch_size: 8 -> 16; model.model_img.hidden_size: 32 -> 48.*'
                     '--config.accept_config_changes=True'):
    train.train_and_evaluate(wider, workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['batch_size'] == 8  # still the config the checkpoints hold
  train.train_and_evaluate(config(2, learning_rate=1e-3), workdir)  # allowed, recorded
  with open(os.path.join(workdir, 'config_changes.jsonl')) as f:
    recorded = [json.loads(line) for line in f]
  assert recorded[-1]['step'] == 1
  assert recorded[-1]['changes']['learning_rate'][1] == 1e-3
  assert recorded[-1]['changes']['total_steps'] == [1, 2]
  assert [r['step'] for r in metrics_rows(workdir) if 'train_loss' in r] == [1, 2]


def test_a_failed_save_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, demo_dir):
  workdir = str(tmp_path / 'run')
  config = lambda steps: micro_config(demo_dir, total_steps=steps, eval_at_end=False,
                                      checkpoint_every_steps=1)
  train.train_and_evaluate(config(1), workdir)
  # A disk that fills up: no file may grow past 200 kB (a checkpoint's weights are larger).
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
  try:
    with pytest.raises(checkpoints.SaveFailed,
                       match=r'saving a checkpoint to .*checkpoints failed \(.*File too large.*'
                       'the partial save was removed; step 1 is intact'):
      train.train_and_evaluate(config(4), workdir)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  train.train_and_evaluate(config(2), workdir)  # the same command, once there is room
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', '2']


def test_a_metrics_file_that_cannot_be_written_is_named_and_no_partial_save_is_left(
    tmp_path, demo_dir, monkeypatch):
  real = metric_writers.JsonlWriter.write_scalars

  def full_disk(self, step, scalars):
    if step >= 3:
      raise OSError(28, 'No space left on device')
    return real(self, step, scalars)

  monkeypatch.setattr(metric_writers.JsonlWriter, 'write_scalars', full_disk)
  workdir = tmp_path / 'run'
  with pytest.raises(OSError, match=r'cannot write the metrics in .*run \(metrics.jsonl, '
                                    r'TensorBoard events\): .*No space left on device; free'):
    train.train_and_evaluate(micro_config(demo_dir, total_steps=6, checkpoint_every_steps=1,
                                          eval_at_end=False), str(workdir))
  assert not [n for n in os.listdir(workdir / 'checkpoints') if 'tmp' in n]


def test_a_workdir_that_is_a_file_or_cannot_be_made_is_named(tmp_path, demo_dir):
  afile = tmp_path / 'afile'
  afile.write_text('x')
  with pytest.raises(NotADirectoryError, match=r'--workdir=.*afile is a file'):
    train.train_and_evaluate(micro_config(demo_dir, total_steps=1), str(afile))
  with pytest.raises(PermissionError, match=r'--workdir=.*afile/run cannot be written'):
    train.train_and_evaluate(micro_config(demo_dir, total_steps=1), str(afile / 'run'))


def test_an_impossible_mask_ratio_names_the_whole_field(demo_dir):
  with pytest.raises(ValueError, match=r'^config.model.model_img.mask_ratio=1.0: expected'):
    checks.check(micro_config(demo_dir, **{'model.model_img.mask_ratio': 1.0}))


def test_ctrl_c_twice_during_training_says_what_was_saved(tmp_path, demo_dir):
  log = tmp_path / 'run.log'
  run = subprocess.Popen(main_command(tmp_path / 'run', demo_dir, '--config.total_steps=100000',
                                      '--config.checkpoint_every_steps=3',
                                      '--config.eval_at_end=False'),
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, 'w'))
  try:
    deadline = time.time() + 300
    while 'step 7/' not in log.read_text():
      assert run.poll() is None and time.time() < deadline
      time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
  finally:
    run.kill()
  last = log.read_text().strip().splitlines()[-1]
  assert last.startswith('interrupted: stopped at once by a second Ctrl-C during step '), last
  assert 'the same command resumes from it' in last or 'no checkpoint' in last, last
