"""Train-step time of a config at several mask ratios, measured side by side.

  python -m benchmarks.step_time --config=configs/tiny.py --ratios=0.0,0.5 [--rounds=5]

The ratios' train steps take turns over --rounds rounds. Prints one JSON object as its last
line: per ratio the patches kept and, as {min, median, max} over the rounds, the step
seconds and the ratio of its step time to the first ratio's in the same round.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import interleaved_seconds, ratio_spread, spread, stepping
from trainer import partitioning
from trainer import step as step_lib

config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
flags.DEFINE_list('ratios', ['0.0', '0.5'], 'Mask ratios to time.')
flags.DEFINE_integer('batch_size', 0, 'Batch size (0: the config\'s).')
flags.DEFINE_integer('steps', 10, 'Timed steps per ratio and round (after 2 warm-up steps).')
flags.DEFINE_integer('rounds', 5, 'Rounds in which the ratios take turns.')
FLAGS = flags.FLAGS


def training_call(config):
  """(one train step as a call, the patches its policy keeps)."""
  mesh = partitioning.make_mesh(config)
  _, policy, _, state, step_fn = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  batch = synthetic_batch(config, mesh)
  return stepping(step_fn, state, batch, jax.random.PRNGKey(1)), policy.num_keep


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  calls, kept = {}, {}
  for ratio in FLAGS.ratios:
    config.model.model_img.mask_ratio = float(ratio)
    calls[ratio], kept[ratio] = training_call(config)
  seconds = interleaved_seconds(calls, FLAGS.rounds, FLAGS.steps)
  first = seconds[FLAGS.ratios[0]]
  results = {ratio: {'kept_patches': kept[ratio], 'step_seconds': spread(seconds[ratio]),
                     'step_ratio': ratio_spread(seconds[ratio], first)}
             for ratio in FLAGS.ratios}
  print(json.dumps({'device': jax.devices()[0].device_kind, 'batch_size': config.batch_size,
                    'image_size': config.image_size, 'mask_ratio': results}))


if __name__ == '__main__':
  app.run(main)
