"""Memory per device and time of the image-text losses as devices are added.

  python -m benchmarks.sigmoid_loss [--devices=1,2,4,8] [--local_batch=1024] [--dim=768]
                                    [--rounds=3] [--repeats=3]

For each data-axis size D the global batch is D x local_batch, and each loss is compiled
with its gradients for embeddings split over the D devices:

  sigmoid_ring      the sigmoid loss as training computes it, blocks passed round the ring
  sigmoid_gathered  the same loss written on the global batch, placed as XLA chooses
  softmax           the softmax loss as training computes it (written on the global batch)

`temp_mib` is the temporaries of the compiled program per device (its own memory analysis):
the logits and whatever else the loss needs beyond its inputs and gradients. Times are the
median of `repeats` calls per round, the losses timed in turns. On a machine without
accelerators the devices are simulated CPU devices sharing its cores, so a time there shows
work done, not interconnect. The last line printed is one JSON object.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Without accelerators, simulated CPU devices stand in for them (the flag touches only the
# CPU client).
os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''),
                                    '--xla_force_host_platform_device_count=8']).strip()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks import timing
from models import clip
from models import sigmoid_loss

flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Data-axis sizes to measure.')
flags.DEFINE_integer('local_batch', 1024, 'Pairs per device.')
flags.DEFINE_integer('dim', 768, 'Embedding width.')
flags.DEFINE_integer('rounds', 3, 'Rounds of timing; 0: memory only.')
flags.DEFINE_integer('repeats', 3, 'Calls timed per loss and round.')
FLAGS = flags.FLAGS
MIB = 2 ** 20


def losses(mesh):
  """Each loss as a function of (zimg, ztxt, logit_scale, bias) -> scalar."""
  return {
      'sigmoid_ring': lambda zi, zt, s, b: sigmoid_loss.ring_loss(zi, zt, s, b, mesh),
      'sigmoid_gathered': sigmoid_loss.sigmoid_loss,
      'softmax': lambda zi, zt, s, b: clip.contrastive_loss(zi, zt, s),
  }


def embeddings(key, batch, dim):
  images, texts = jax.random.normal(key, (2, batch, dim))
  return clip.l2_normalize(images), clip.l2_normalize(texts)


def measure(devices, local_batch, dim, rounds, repeats):
  mesh = Mesh(np.asarray(devices).reshape(len(devices), 1), ('data', 'model'))
  split, whole = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  zimg, ztxt = embeddings(jax.random.PRNGKey(0), len(devices) * local_batch, dim)
  inputs = (jax.device_put(zimg, split), jax.device_put(ztxt, split),
            jax.device_put(jnp.log(10.0), whole), jax.device_put(jnp.float32(-10.0), whole))
  result, calls = {}, {}
  for name, loss in losses(mesh).items():
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)),
                       in_shardings=(split, split, whole, whole)).lower(*inputs).compile()
    result[name] = {'temp_mib': round(compiled.memory_analysis().temp_size_in_bytes / MIB, 3)}
    calls[name] = lambda compiled=compiled: compiled(*inputs)
  if rounds:
    seconds = timing.interleaved_seconds(calls, rounds, repeats)
    for name in calls:
      result[name]['ms'] = timing.spread([1e3 * s for s in seconds[name]], 3)
      result[name]['vs_softmax'] = timing.ratio_spread(seconds[name], seconds['softmax'])
  return result


def main(_):
  available = jax.devices()
  sizes = [int(d) for d in FLAGS.devices if int(d) <= len(available)]
  out = {'backend': jax.default_backend(), 'local_batch': FLAGS.local_batch, 'dim': FLAGS.dim,
         'devices': {}}
  for size in sizes:
    out['devices'][size] = measure(available[:size], FLAGS.local_batch, FLAGS.dim,
                                   FLAGS.rounds, FLAGS.repeats)
    print(f'{size} devices: ' + ', '.join(f'{name} {m["temp_mib"]} MiB'
                                          for name, m in out['devices'][size].items()))
  skipped = [d for d in FLAGS.devices if int(d) > len(available)]
  if skipped:
    out['skipped'] = f'{skipped}: more than the {len(available)} devices here'
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
