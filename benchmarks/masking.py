"""Cost of each masking policy relative to unmasked training, measured side by side.

  python -m benchmarks.masking [--sizes=tiny,B/16] [--batch_size=32] [--steps=5] [--rounds=5]

For each model size and each policy at 50% masking, the policy's train step and the
unmasked one take turns over --rounds rounds (each timing --steps steps), so that both see
the same machine. Per policy, as {min, median, max} over the rounds: `step_seconds`,
`step_ratio` (policy step / unmasked step of the same round), `sampler_share` (its sampler
alone / its step) and, for the attentive policy, whose step includes the EMA teacher's
forward pass (1 view), `teacher_share`. The last line printed is one JSON object.
"""

import functools
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax

from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import interleaved_seconds, ratio_spread, spread, stepping
from configs import default, presets, tiny
from models import pixel_normalization
from trainer import partitioning
from trainer import step as step_lib

flags.DEFINE_list('sizes', ['tiny', 'B/16'], 'Model sizes: tiny (configs/tiny.py) or a name '
                  'of configs/default.py SIZES (B/16, L/16, H/14), as benchmarks.memory.')
flags.DEFINE_list('policies', ['random', 'gaussian', 'cluster', 'attentive'], 'Policies.')
flags.DEFINE_integer('batch_size', 32, 'Batch size.')
flags.DEFINE_integer('steps', 5, 'Timed train steps per round (after 2 warm-up steps).')
flags.DEFINE_integer('rounds', 5, 'Rounds in which the unmasked and each policy\'s step take '
                     'turns.')
FLAGS = flags.FLAGS


def size_config(size):
  if size == 'tiny':
    return tiny.get_config()
  if size in presets.SIZES:
    config = default.get_config()
    presets.set_size(config, size)
    return config
  raise ValueError(f'--sizes: unknown size {size!r}; expected tiny or one of '
                   f'{sorted(presets.SIZES)}')


def calls_of(config, policy_name, mask_ratio, batch):
  """{'step': one train step, 'sampler': the policy's sampler, ['teacher': the EMA
  teacher's forward pass]} as calls to time."""
  config = config.copy_and_resolve_references()
  config.model.model_img.mask_ratio = mask_ratio
  config.model.model_img.masking.policy = policy_name
  mesh = partitioning.make_mesh(config)
  # Not donated: the teacher's call reads the first state's weights after steps have run.
  model, policy, _, state, step_fn = step_lib.new_training(config, mesh,
                                                           jax.random.PRNGKey(0),
                                                           donate=False)
  key = jax.random.PRNGKey(1)
  calls = {'step': stepping(step_fn, state, batch, key)}
  images = jax.jit(pixel_normalization.normalize)(batch['image'])
  scores = None
  if policy.needs_scores:
    teacher_fn = jax.jit(functools.partial(step_lib.teacher_forward, model))
    calls['teacher'] = lambda: teacher_fn(state.ema_params, images)
    scores = teacher_fn(state.ema_params, images)[1]
  sampler_fn = jax.jit(policy.__call__)
  calls['sampler'] = lambda: sampler_fn(key, images, scores)
  return calls


def main(argv):
  del argv
  results = {}
  for size in FLAGS.sizes:
    config = size_config(size)
    config.batch_size = FLAGS.batch_size
    batch = synthetic_batch(config, partitioning.make_mesh(config))
    unmasked = calls_of(config, 'none', 0.0, batch)['step']
    row = {}
    for name in FLAGS.policies:
      calls = {f'policy_{part}': call for part, call in
               calls_of(config, name, 0.5, batch).items()}
      seconds = interleaved_seconds({'unmasked': unmasked, **calls}, FLAGS.rounds,
                                    FLAGS.steps)
      step = seconds['policy_step']
      row[name] = {'step_seconds': spread(step),
                   'step_ratio': ratio_spread(step, seconds['unmasked']),
                   'unmasked_step_seconds': spread(seconds['unmasked']),
                   'sampler_share': ratio_spread(seconds['policy_sampler'], step)}
      if 'policy_teacher' in seconds:
        row[name]['teacher_share'] = ratio_spread(seconds['policy_teacher'], step)
      print(size, name, json.dumps(row[name]), flush=True)
    results[size] = row
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
