"""Cost of each masking policy relative to unmasked training, measured in one run.

  python -m benchmarks.masking [--sizes=tiny,B/16] [--batch_size=32] [--steps=5]

For each model size: the median train-step time with no masking, then for each policy at
50% masking its median step time (`step_ratio` = policy step / unmasked step) and the
median time of its sampler alone (`sampler_share` = sampler / policy step). The attentive
policy's step includes the EMA teacher's forward pass (1 view); `teacher_share` is that
forward pass's share of the step. The last line printed is one JSON object.
"""

import functools
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax

import partitioning
import train_step
from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import median_seconds, median_step_seconds
from configs import default, tiny
from models import pixels

flags.DEFINE_list('sizes', ['tiny', 'B/16'], 'Model sizes: tiny (configs/tiny.py) or a name '
                  'of configs/default.py SIZES (B/16, L/16, H/14), as benchmarks.memory.')
flags.DEFINE_list('policies', ['random', 'gaussian', 'cluster', 'attentive'], 'Policies.')
flags.DEFINE_integer('batch_size', 32, 'Batch size.')
flags.DEFINE_integer('steps', 5, 'Timed train steps per measurement (after 2 warm-up steps).')
FLAGS = flags.FLAGS


def size_config(size):
  if size == 'tiny':
    return tiny.get_config()
  if size in default.SIZES:
    config = default.get_config()
    default.set_size(config, size)
    return config
  raise ValueError(f'--sizes: unknown size {size!r}; expected tiny or one of '
                   f'{sorted(default.SIZES)}')


def measure(config, policy_name, mask_ratio, batch, repeats):
  """(step seconds, sampler seconds, teacher seconds or None) for one policy."""
  config = config.copy_and_resolve_references()
  config.model.model_img.mask_ratio = mask_ratio
  config.model.model_img.masking.policy = policy_name
  mesh = partitioning.make_mesh(config)
  model, policy, _, state, step_fn = train_step.new_training(config, mesh, jax.random.PRNGKey(0),
                                                        donate=False)
  key = jax.random.PRNGKey(1)
  step = median_step_seconds(step_fn, state, batch, key, repeats)
  scores = teacher = None
  images = jax.jit(pixels.normalize)(batch['image'])
  if policy.needs_scores:
    teacher_fn = jax.jit(functools.partial(train_step.teacher_forward, model))
    teacher = median_seconds(lambda: teacher_fn(state.ema_params, images), repeats)
    scores = teacher_fn(state.ema_params, images)[1]
  sampler_fn = jax.jit(policy.__call__)
  sampler = median_seconds(lambda: sampler_fn(key, images, scores), repeats)
  return step, sampler, teacher


def main(argv):
  del argv
  results = {}
  for size in FLAGS.sizes:
    config = size_config(size)
    config.batch_size = FLAGS.batch_size
    batch = synthetic_batch(config, partitioning.make_mesh(config))
    # The unmasked step is timed before and after the policies; the faster of the two
    # stands, since a noisy machine only ever adds time.
    unmasked = measure(config, 'none', 0.0, batch, FLAGS.steps)[0]
    row = {}
    for name in FLAGS.policies:
      step, sampler, teacher = measure(config, name, 0.5, batch, FLAGS.steps)
      row[name] = {'step_seconds': step, 'sampler_share': sampler / step}
      if teacher is not None:
        row[name]['teacher_share'] = teacher / step
      print(size, name, json.dumps(row[name]), flush=True)
    unmasked = min(unmasked, measure(config, 'none', 0.0, batch, FLAGS.steps)[0])
    for name in FLAGS.policies:
      row[name]['step_ratio'] = row[name]['step_seconds'] / unmasked
    results[size] = {'unmasked_step_seconds': unmasked, **row}
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
