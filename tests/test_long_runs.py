"""Long runs on preemptible machines: kill -9 (even during a save) and resume trains exactly
as an uninterrupted run, as does the same command on 8 devices; SIGTERM finishes the step,
saves, exits 143, and the same command resumes there."""

import os
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT, cpu_devices, main_command, metrics_rows


def _losses(workdir):
  """step -> train_loss, the last row of each step winning (a resumed run rewrites some)."""
  return {r['step']: r['train_loss'] for r in metrics_rows(workdir) if 'train_loss' in r}


def _start(workdir, demo_dir, log, *flags):
  return subprocess.Popen(main_command(workdir, demo_dir, *flags), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=open(log, 'w'))


def _wait_for(condition, process, seconds=300):
  deadline = time.time() + seconds
  while not condition():
    assert process.poll() is None, 'the run ended before the test could interrupt it'
    assert time.time() < deadline, 'timed out'
    time.sleep(0.02)


FLAGS = ['--config.total_steps=40', '--config.checkpoint_every_steps=10',
         '--config.eval_at_end=False', '--config.vis_every_epochs=0']


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, demo_dir):
  """Per-step losses of one run of FLAGS on one device, from start to end."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  done = subprocess.run(main_command(workdir, demo_dir, *FLAGS), cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return _losses(workdir)


def test_kill_9_during_a_save_then_the_same_command_trains_the_same_losses(
    tmp_path, demo_dir, uninterrupted):
  interrupted = tmp_path / 'interrupted'
  saving_every_step = [*FLAGS, '--config.checkpoint_every_steps=2']
  run = _start(interrupted, demo_dir, tmp_path / 'first.log', *saving_every_step)

  def partial_save():
    """The step of an unfinished save at step 16 or later, or None."""
    try:
      names = os.listdir(interrupted / 'checkpoints')
    except FileNotFoundError:
      return None
    steps = [int(m.group(1)) for m in map(re.compile(r'(\d+)\.orbax-checkpoint-tmp').match,
                                         names) if m]
    return max(steps) if steps and max(steps) >= 16 else None

  try:
    _wait_for(partial_save, run)
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=60) == -signal.SIGKILL
  finally:
    run.kill()
  killed_during = partial_save()
  assert killed_during is not None
  again = subprocess.run(main_command(interrupted, demo_dir, *saving_every_step), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed_at = int(re.search(r'Resuming from .* at step (\d+)', again.stderr).group(1))
  assert 14 <= resumed_at < killed_during  # the last finished save, never the partial one
  got = _losses(interrupted)
  assert sorted(got) == list(range(1, 41))
  assert got == uninterrupted  # every step, before and after the kill, bit for bit


def test_main_on_8_devices_trains_the_one_device_losses(tmp_path, demo_dir, uninterrupted):
  """Data parallel over 4 devices, each parameter split over them (FSDP) and over 2 more
  (tensor parallel): the same per-step losses as one device, to float rounding."""
  workdir = tmp_path / 'mesh'
  env = cpu_devices(8)
  done = subprocess.run(main_command(workdir, demo_dir, *FLAGS,
                                     '--config.partitioning.strategy=fsdp',
                                     '--config.partitioning.num_partitions=2'),
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'mesh data 4 x model 2' in done.stderr, done.stderr[-3000:]
  got = _losses(workdir)
  assert sorted(got) == sorted(uninterrupted)
  assert max(abs(got[step] - uninterrupted[step]) for step in got) < 1e-5


def test_sigterm_saves_the_step_and_the_next_start_resumes_there(tmp_path, demo_dir):
  workdir = tmp_path / 'preempted'
  log = tmp_path / 'run.log'
  # No periodic checkpoints: only the notice makes one.
  flags = ['--config.total_steps=100000', '--config.checkpoint_every_steps=0',
           '--config.save_every_epochs=0', '--config.eval_at_end=False']
  run = _start(workdir, demo_dir, log, *flags)
  try:
    _wait_for(lambda: 'step 5/' in log.read_text(), run)
    sent = time.time()
    run.send_signal(signal.SIGTERM)
    status = run.wait(timeout=120)
    took = time.time() - sent
  finally:
    run.kill()
  text = log.read_text()
  assert status == 143, text[-3000:]
  found = re.search(r'preempted at step (\d+); checkpoint saved to (\S+)', text)
  assert found, text[-3000:]
  step = int(found.group(1))
  assert os.listdir(workdir / 'checkpoints') == [str(step)]
  assert took < 60, took
  print(f'SIGTERM to exit: {took:.1f} s')

  more = subprocess.run(main_command(workdir, demo_dir, f'--config.total_steps={step + 2}',
                                     '--config.eval_at_end=False'), cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert more.returncode == 0, more.stderr[-3000:]
  assert f'at step {step}' in more.stderr
  steps = [r['step'] for r in metrics_rows(workdir) if 'train_loss' in r]
  assert steps[-2:] == [step + 1, step + 2]


def test_partial_and_damaged_checkpoints(tmp_path, demo_dir):
  from trainer import checkpoints  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  config = lambda steps, **kw: micro_config(demo_dir, total_steps=steps, eval_at_end=False,
                                             checkpoint_every_steps=1, **kw)
  train.train_and_evaluate(config(2), str(workdir))
  # A save killed half-way leaves orbax's temporary folder: never taken as the latest.
  (workdir / 'checkpoints' / '3.orbax-checkpoint-tmp-1795000000').mkdir()
  (workdir / 'checkpoints' / '3.orbax-checkpoint-tmp-1795000000' / 'junk').write_text('x')
  train.train_and_evaluate(config(3), str(workdir))
  assert [r['step'] for r in metrics_rows(workdir) if 'train_loss' in r][-1] == 3
  # A truncated newest checkpoint stops the run, naming it and the way back.
  for root, _, files in os.walk(workdir / 'checkpoints' / '3' / 'params'):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(3)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'checkpoints/3 cannot be restored .*--config.resume_step=2'):
    train.train_and_evaluate(config(4), str(workdir))
  train.train_and_evaluate(config(4, resume_step=2), str(workdir))
  assert max(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()) == 4
  # The damaged step was moved aside once step 2 was restored, not deleted.
  assert os.listdir(workdir / 'checkpoints_after_2') == ['3']


def _bad_shards(tmp_path):
  """Three kinds of training data of which no record can be read."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from input_pipeline import demo_data  # pylint: disable=g-import-not-at-top
  random_bytes = tmp_path / 'random'
  random_bytes.mkdir()
  (random_bytes / '00000.tfrecord').write_bytes(np.random.RandomState(0).bytes(5000))
  cut = tmp_path / 'cut'
  cut.mkdir()
  good = tmp_path / 'good'
  good.mkdir()
  demo_data.write_shards(str(good), [('000', b'not an image', 'a red circle')] * 5, 1,
                         ('tfrecord',), 32)
  (cut / '00000.tfrecord').write_bytes((good / 'train' / '00000.tfrecord').read_bytes()[:100])
  return {'random bytes': random_bytes, 'cut to 100 bytes': cut,
          'jpg not an image': good / 'train'}


def test_unreadable_training_data_stops_at_once_naming_the_files(tmp_path, demo_dir):
  from input_pipeline import training_pairs  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  for kind, folder in _bad_shards(tmp_path).items():
    config = micro_config(demo_dir, laion_path=str(folder))
    with pytest.raises(ValueError, match=r'none of the first 1000 records of .*00000.tfrecord'):
      training_pairs.check_readable(config, training_pairs.list_shards(config.laion_path))
  # The whole command, bounded in time (it used to spin forever).
  done = subprocess.run(main_command(tmp_path / 'run', demo_dir,
                                     f'--config.laion_path={tmp_path / "random"}',
                                     '--config.total_steps=2'),
                        cwd=ROOT, capture_output=True, text=True, timeout=180)
  assert done.returncode != 0 and 'none of the first 1000 records' in done.stderr


def test_one_run_per_workdir(tmp_path, demo_dir):
  import fcntl  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  from trainer import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'shared'
  workdir.mkdir()
  with open(workdir / '.lock', 'a+') as other:  # another run holds it
    other.write('pid 4242 on elsewhere\n')
    other.flush()
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(workdir_lib.WorkdirBusy, match=r'in use by another run \(pid 4242'):
      train.train_and_evaluate(micro_config(demo_dir, total_steps=1), str(workdir))
  assert not os.path.exists(workdir / 'checkpoints')  # nothing of the refused run
  # Released (as when the other run ends or crashes): the next run goes ahead.
  train.train_and_evaluate(micro_config(demo_dir, total_steps=1, eval_at_end=False),
                           str(workdir))
  assert os.listdir(workdir / 'checkpoints') == ['1']


def test_killed_again_and_again_a_run_ends_as_an_uninterrupted_one(tmp_path, demo_dir):
  """tests/chaos.py at a size that fits CI: six kills (SIGKILL and SIGTERM, while training,
  saving or evaluating), then the metrics rows, TensorBoard's scalars and the last
  checkpoint compared with an uninterrupted run's."""
  from tests import chaos  # pylint: disable=g-import-not-at-top
  summary = chaos.run(demo_dir, tmp_path, kills=6, seed=0)
  assert summary['kills'] == 6, summary
  assert summary['by_signal']['SIGKILL'] and summary['by_signal']['SIGTERM'], summary
  assert summary['differences'] == [], summary
