"""Peak memory and step time of each remat policy, to pick one before launching on a pod.

  python -m benchmarks.memory [--sizes=B/16,L/16] [--batch_size=8] [--remat=none,minimal,full]
                             [--dtype=float32|bfloat16] [--steps=2]

Memory comes from the compiled programs' own analysis, in GiB, for FLIP's recipe at 50%
random masking: `peak_gib` of the whole train step (arguments + outputs + temporaries -
aliased buffers), and `backward_temp_gib`, the temporaries of the loss's forward and
backward pass alone, which is what a remat policy changes. The step time is the median of
a few steps on this machine. The last line printed is one JSON object.

Run it at the per-device batch of the target slice (global batch / data-axis size): at small
batches the weights, gradients and AdamW update set the peak and no policy changes it.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax

from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import median_step_seconds
from configs import default
from configs import presets
from models import clip
from trainer import partitioning
from trainer import step as step_lib

flags.DEFINE_list('sizes', ['B/16', 'L/16'], 'Model sizes from configs/default.py SIZES.')
flags.DEFINE_list('remat', ['none', 'minimal', 'full'], 'Remat policies.')
flags.DEFINE_integer('batch_size', 8, 'Global batch size.')
flags.DEFINE_integer('steps', 2, 'Timed steps (after one warm-up step); 0: memory only.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (config.model.dtype).')
FLAGS = flags.FLAGS
GIB = 2 ** 30


def measure(config, steps):
  mesh = partitioning.make_mesh(config)
  model, policy, _, state, step_fn = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  batch = synthetic_batch(config, mesh)
  key = jax.random.PRNGKey(1)
  compiled = step_fn.lower(state, batch, key).compile()
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  result = {'peak_gib': peak / GIB, 'temp_gib': memory.temp_size_in_bytes / GIB,
            'state_gib': memory.argument_size_in_bytes / GIB,
            'backward_temp_gib': backward_temp_bytes(model, policy, state.params, batch) / GIB}
  if steps:
    result['step_seconds'] = median_step_seconds(compiled, state, batch, key, steps, warmup=1)
    result['images_per_second'] = config.batch_size / result['step_seconds']
  return result


def backward_temp_bytes(model, policy, params, batch):
  """Temporaries of the loss's forward and backward pass alone: what remat trades away.

  At small batches the whole step's peak is set by the optimizer update over the weights,
  which no remat policy changes; this isolates the activations.
  """
  def gradients(params, batch):
    images = clip.normalize_pixels(model, batch['image'])
    keep = policy(jax.random.PRNGKey(0), images)
    keep_idx, valid = keep if keep is not None else (None, None)

    def loss(params):
      zimg, ztxt, scale = model.apply({'params': params}, images, batch['tokens'],
                                      keep_idx, valid)
      return clip.contrastive_loss(zimg, ztxt, scale)
    return jax.grad(loss)(params)

  compiled = jax.jit(gradients).lower(params, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
  del argv
  results = {'device': jax.devices()[0].device_kind, 'batch_size': FLAGS.batch_size,
             'dtype': FLAGS.dtype}
  for size in FLAGS.sizes:
    for policy in FLAGS.remat:
      config = default.get_config()
      presets.set_size(config, size)
      config.batch_size = config.eval_batch_size = FLAGS.batch_size
      config.model.dtype = FLAGS.dtype
      for tower in ('model_img', 'model_txt'):
        config.model[tower].transformer.remat_policy = policy
      results.setdefault(size, {})[policy] = measure(config, FLAGS.steps)
      print(size, policy, json.dumps(results[size][policy]), flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
