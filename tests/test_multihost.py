"""Two main.py processes on this machine form one 4-device run, as hosts of a pod slice do.

Each process owns 2 simulated CPU devices; they meet through jax.distributed (the
coordinator named in JAX_COORDINATOR_ADDRESS, collectives over gloo), read their own shard
files, feed one global batch, write checkpoints together, and only process 0 writes logs.
"""

import os
import socket
import subprocess

from tests.conftest import ROOT, cpu_devices, main_command, metrics_rows


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(workdir, demo_dir, *overrides, processes=2, devices_per_process=2):
  port = _free_port()
  runs = []
  for index in range(processes):
    env = cpu_devices(devices_per_process, JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                      JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))
    runs.append(subprocess.Popen(main_command(workdir, demo_dir, *overrides), cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True))
  outputs = []
  try:
    for run in runs:
      _, stderr = run.communicate(timeout=600)
      outputs.append((run.returncode, stderr))
  finally:
    for run in runs:
      run.kill()
  return outputs


def test_two_processes_train_as_one_run_and_its_checkpoint_evaluates_on_one(tmp_path,
                                                                              demo_dir):
  workdir = tmp_path / 'pod'
  outputs = _launch(workdir, demo_dir, '--config.total_steps=4',
                    '--config.checkpoint_every_steps=2')
  for index, (code, log) in enumerate(outputs):
    assert code == 0, log[-4000:]
    assert f'Devices: 4 cpu (2 on this host, process {index} of 2)' in log
    # demo_dir holds 2 shards per format: each process reads its own one.
    assert 'Training data: 2 tfrecord files' in log and '(this host reads 1)' in log
    assert 'step 4/4 | loss' in log

  # One writer: one TensorBoard event file, every step logged once, the final evaluation once.
  assert len([f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]) == 1
  # A log file per process.
  assert 'step 4/4 | loss' in (workdir / 'train.log').read_text()
  assert 'step 4/4 | loss' in (workdir / 'train.1.log').read_text()
  rows = metrics_rows(workdir)
  assert [r['step'] for r in rows if 'train_loss' in r] == [1, 2, 3, 4]
  final = [r for r in rows if 'zeroshot/top1' in r]
  assert [r['step'] for r in final] == [4]
  # Both processes wrote their parts of each checkpoint into one directory.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']

  # The 4-device, 2-process checkpoint evaluates on one device in one process, to the same
  # accuracy: same weights, same unmasked images.
  alone = subprocess.run(main_command(workdir, demo_dir, '--config.eval_only=True'),
                         cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                         capture_output=True, text=True, timeout=600)
  assert alone.returncode == 0, alone.stderr[-4000:]
  assert 'Devices: 1 cpu (1 on this host, process 0 of 1)' in alone.stderr
  last = metrics_rows(workdir)[-1]
  assert last['step'] == 4
  assert abs(last['zeroshot/top1'] - final[0]['zeroshot/top1']) < 1e-6
  assert abs(last['zeroshot/top5'] - final[0]['zeroshot/top5']) < 1e-6
