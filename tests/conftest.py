"""Shared fixtures: a small generated dataset and a micro model config that compiles fast."""

import atexit
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# The test process and every main.py it starts share one compilation cache, so that the
# micro model's programs compile once per session rather than once per run.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jax-compilation-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# Compilation dominates the tests' time and LLVM's optimisations of the CPU code most of it:
# without them the micro model compiles in about half the time and computes the same
# functions (the runs users make keep the default).
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']).strip()

import pytest  # pylint: disable=g-import-not-at-top

from configs import tiny
from input_pipeline import demo_data

MICRO_IMAGE = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def demo_dir(tmp_path_factory):
  """Demo data in both shard formats: 96 training pairs in 2 shards, 2 images per class."""
  out = tmp_path_factory.mktemp('demo')
  demo_data.generate(str(out), num_train=96, num_eval_per_class=2, num_shards=2,
                     image_size=MICRO_IMAGE, seed=0, formats=('tfrecord', 'tar'),
                     num_retrieval=24)
  return out


def cpu_devices(count, **env):
  """The environment of a process that sees `count` simulated CPU devices."""
  return dict(os.environ, JAX_PLATFORMS='cpu', **env, XLA_FLAGS=(
      f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"))


def micro_fields(demo_dir):
  """The fields that shrink the tiny recipe to compile and step in about a second."""
  fields = {
      'laion_path': str(demo_dir / 'train'),
      'eval_dataset': f'folder:{demo_dir / "zeroshot"}',
      'evals.retrieval.dataset': f'wds:{demo_dir / "wds_retrieval"}',
      'image_size': MICRO_IMAGE, 'batch_size': 8, 'eval_batch_size': 16,
      'shuffle_buffer': 16, 'samples_per_epoch': 96, 'num_parallel_reads': 2,
      'aug.txt.max_len': 16, 'model.clr.proj_dim_out': 16, 'log_every_steps': 1,
  }
  for tower in ('model_img', 'model_txt'):
    fields.update({f'model.{tower}.hidden_size': 32, f'model.{tower}.transformer.mlp_dim': 64,
                   f'model.{tower}.transformer.num_heads': 2,
                   f'model.{tower}.transformer.num_layers': 1})
  return fields


def micro_config(demo_dir, **overrides):
  """The tiny recipe shrunk by micro_fields, then `overrides` (dotted names) applied."""
  config = tiny.get_config()
  for key, value in {**micro_fields(demo_dir), **overrides}.items():
    target = config
    *parents, leaf = key.split('.')
    for name in parents:
      target = target[name]
    target[leaf] = value
  return config


def main_command(workdir, demo_dir, *overrides, config_file='configs/tiny.py'):
  """`python main.py` with the micro model on the demo data; run from ROOT."""
  flags = [f'--config.{key}={value}' for key, value in micro_fields(demo_dir).items()]
  return [sys.executable, 'main.py', f'--workdir={workdir}', f'--config={config_file}',
          *flags, *overrides]


def metrics_rows(workdir):
  """The JSON objects a run appended to WORKDIR/metrics.jsonl, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


# Metrics that time the machine: they differ between any two runs.
TIMINGS = ('images_per_sec', 'input_wait_fraction', 'steps_per_sec', 'uptime')


def rows_without_timings(workdir):
  """metrics_rows with the timings left out, and the rows that held only timings."""
  rows = [{k: v for k, v in r.items() if k not in TIMINGS} for r in metrics_rows(workdir)]
  return [r for r in rows if len(r) > 1]
