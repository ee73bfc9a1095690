"""Train-step time of a config at several mask ratios, measured in one process.

  python -m benchmarks.step_time --config=configs/tiny.py --ratios=0.0,0.5

Prints one JSON object as its last line: per ratio the median step seconds, the number of
patches kept, and the ratio of its step time to the first ratio's.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

import partitioning
import train_step
from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import median_step_seconds

config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
flags.DEFINE_list('ratios', ['0.0', '0.5'], 'Mask ratios to time.')
flags.DEFINE_integer('batch_size', 0, 'Batch size (0: the config\'s).')
flags.DEFINE_integer('steps', 20, 'Timed steps per ratio (after 2 warm-up steps).')
FLAGS = flags.FLAGS


def time_steps(config, steps):
  mesh = partitioning.make_mesh(config)
  _, policy, _, state, step_fn = train_step.new_training(config, mesh, jax.random.PRNGKey(0))
  batch = synthetic_batch(config, mesh)
  return (median_step_seconds(step_fn, state, batch, jax.random.PRNGKey(1), steps),
          policy.num_keep)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  results = {}
  for ratio in FLAGS.ratios:
    config.model.model_img.mask_ratio = float(ratio)
    median, kept = time_steps(config, FLAGS.steps)
    results[ratio] = {'step_seconds': median, 'kept_patches': kept}
  base = results[FLAGS.ratios[0]]['step_seconds']
  for row in results.values():
    row['step_ratio'] = row['step_seconds'] / base
  print(json.dumps({'device': jax.devices()[0].device_kind, 'batch_size': config.batch_size,
                    'image_size': config.image_size, 'mask_ratio': results}))


if __name__ == '__main__':
  app.run(main)
