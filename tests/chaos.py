"""A run killed again and again ends as an uninterrupted one.

  python -m tests.chaos --demo_dir=DIR --out=DIR [--kills=8] [--seed=0]

Trains the tests' micro run once without interruption, then the same command killed
--kills times at seeded random moments and started again after each kill until it
finishes. Each moment is drawn: a step ahead of the run, what it is doing there (training
it, saving its checkpoint or evaluating it: the kill follows the log line that starts
that, by 0-0.3 s, drawn too) and the signal (SIGKILL or SIGTERM). Compares the two: every
metrics.jsonl row (timings aside), the TensorBoard scalars and pictures as TensorBoard
loads them (timings aside), and the last checkpoint's parameters, optimiser state and EMA
teacher, bit for bit. Prints one JSON object: the kills by signal and by what the run was
doing, and the differences found (none expected).
"""

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import time

import numpy as np

from tests.conftest import ROOT, TIMINGS, cpu_devices, main_command, rows_without_timings

TOTAL_STEPS, SAVE_EVERY, EVAL_EVERY = 20, 2, 4
FLAGS = (f'--config.total_steps={TOTAL_STEPS}', f'--config.checkpoint_every_steps={SAVE_EVERY}',
         f'--config.eval_every_steps={EVAL_EVERY}', '--config.evals.retrieval.every_steps=6',
         '--config.vis_every_epochs=0.25', '--config.model.model_img.masking.policy=attentive')
# The train.log line after which a kill falls in each phase of step s: the step's progress
# line (the save and evaluations of s follow), its checkpoint (its evaluations follow), the
# first of its evaluations (the others and its pictures follow).
PHASES = {'training': 'step {s}/', 'saving': 'Checkpoint {s}:', 'evaluating': ' at step {s}:'}


def _summaries(workdir, plugin: str):
  """{tag: [(step, value)]} of one kind ('scalars' or 'images') as TensorBoard's loader reads
  the workdir's event files (timings aside)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  loader = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.TENSORS: 0,
                                   event_accumulator.SCALARS: 0})
  loader.Reload()
  out = {}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for tag in loader.Tags()['tensors']:
    kind = loader.SummaryMetadata(tag).plugin_data.plugin_name
    if kind == plugin and tag.split('/')[-1] not in TIMINGS:
      out[tag] = [(e.step, tf.make_ndarray(e.tensor_proto).tolist())
                  for e in loader.Tensors(tag)]
  return out


def _state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step_dir = os.path.join(workdir, 'checkpoints', str(TOTAL_STEPS))
  return {item: ocp.StandardCheckpointer().restore(os.path.join(step_dir, item))
          for item in ('params', 'opt_state', 'ema_params')
          if os.path.isdir(os.path.join(step_dir, item))}


def _differences(a, b, where=''):
  import jax  # pylint: disable=g-import-not-at-top
  found = []
  for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                               jax.tree_util.tree_leaves_with_path(b)):
    if not np.array_equal(np.asarray(x), np.asarray(y)):
      found.append(f'{where}{jax.tree_util.keystr(path)}')
  if len(jax.tree.leaves(a)) != len(jax.tree.leaves(b)):
    found.append(f'{where}: other trees')
  return found


def _newest_checkpoint(workdir) -> int:
  folder = pathlib.Path(workdir) / 'checkpoints'
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
  return max(steps, default=0)


def _moment(rng, workdir):
  """(phase, step) of a moment ahead of the run."""
  newest = _newest_checkpoint(workdir)
  step = rng.randint(newest + 1, min(newest + 3, TOTAL_STEPS))
  phases = ['training']
  if step % SAVE_EVERY == 0:
    phases.append('saving')
  if step % EVAL_EVERY == 0:
    phases.append('evaluating')
  return rng.choice(phases), step


def _wait_for(workdir, line: str, process, timeout: float) -> bool:
  """Whether `line` appears in train.log before the process ends."""
  log, deadline = pathlib.Path(workdir) / 'train.log', time.time() + timeout
  seen = log.stat().st_size if log.exists() else 0  # earlier starts' lines
  while time.time() < deadline and process.poll() is None:
    if log.exists() and line in log.read_text()[seen:]:
      return True
    time.sleep(0.02)
  return False


def run(demo_dir, out, kills=8, seed=0, timeout=600):
  out = pathlib.Path(out)
  env = cpu_devices(1)
  whole, chaos = out / 'whole', out / 'chaos'
  done = subprocess.run(main_command(whole, demo_dir, *FLAGS), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  rng = random.Random(seed)
  killed = []
  while len(killed) < kills:
    if _newest_checkpoint(chaos) >= TOTAL_STEPS:
      break
    phase, step = _moment(rng, chaos)
    delay, signum = rng.uniform(0, 0.3), rng.choice([signal.SIGKILL, signal.SIGTERM])
    process = subprocess.Popen(main_command(chaos, demo_dir, *FLAGS), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if _wait_for(chaos, PHASES[phase].format(s=step), process, timeout):
      time.sleep(delay)
    if process.poll() is None:
      process.send_signal(signum)
      killed.append({'signal': signal.Signals(signum).name, 'phase': phase, 'step': step,
                     'exit': None})
    process.wait(timeout=timeout)
    if killed and killed[-1]['exit'] is None:
      killed[-1]['exit'] = process.returncode
      if process.returncode == 0:  # it had finished as the signal came
        killed.pop()
  done = subprocess.run(main_command(chaos, demo_dir, *FLAGS), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  differences = []
  if rows_without_timings(whole) != rows_without_timings(chaos):
    differences.append('metrics.jsonl rows')
  for kind in ('scalars', 'images'):
    if _summaries(whole, kind) != _summaries(chaos, kind):
      differences.append(f'TensorBoard {kind}')
  differences += _differences(_state(whole), _state(chaos), f'checkpoint {TOTAL_STEPS}')
  summary = {'kills': len(killed),
             'by_signal': {s: sum(k['signal'] == s for k in killed)
                           for s in ('SIGKILL', 'SIGTERM')},
             'by_phase': {p: sum(k['phase'] == p for k in killed) for p in PHASES},
             'killed': killed, 'differences': differences}
  return summary


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--demo_dir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--kills', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  print(json.dumps(run(pathlib.Path(args.demo_dir), args.out, args.kills, args.seed)))


if __name__ == '__main__':
  main()
