"""Long runs on preemptible machines: kill -9 and resume trains exactly as an uninterrupted
run; SIGTERM finishes the step, saves, exits 143, and the same command resumes there."""

import os
import re
import signal
import subprocess
import time

from tests.conftest import ROOT, main_command, metrics_rows


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


def test_kill_9_then_the_same_command_trains_the_same_batches_and_losses(tmp_path, demo_dir):
  flags = ['--config.total_steps=150', '--config.checkpoint_every_steps=10',
           '--config.eval_at_end=False', '--config.vis_every_epochs=0']
  reference = tmp_path / 'reference'
  done = subprocess.run(main_command(reference, demo_dir, *flags), cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  interrupted = tmp_path / 'interrupted'
  run = _start(interrupted, demo_dir, tmp_path / 'first.log', *flags)
  try:
    _wait_for(lambda: os.path.isdir(interrupted / 'checkpoints' / '30'), run)
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=60) == -signal.SIGKILL
  finally:
    run.kill()
  again = subprocess.run(main_command(interrupted, demo_dir, *flags), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed_at = int(re.search(r'Resuming from .* at step (\d+)', again.stderr).group(1))
  assert 30 <= resumed_at < 150
  expected, got = _losses(reference), _losses(interrupted)
  assert sorted(got) == list(range(1, 151))
  assert got == expected  # every step, before and after the kill, bit for bit


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
  import pytest  # pylint: disable=g-import-not-at-top
  import checkpoints  # pylint: disable=g-import-not-at-top
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
  assert sorted(os.listdir(workdir / 'checkpoints'), key=lambda s: (len(s), s))[-1] == '4'
