"""Runs in a subprocess with 8 simulated CPU devices (see test_sigmoid_loss.py); prints JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sigmoid_ring_check

For data axes of 1, 2 and 8 devices (and 4 x 2 with a model axis): the sigmoid loss passed
round the ring, and its gradients, against the loss of the whole batch on one device, as
the largest difference relative to the largest magnitude of each.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from jax.sharding import Mesh

from models import clip
from models import sigmoid_loss

BATCH, DIM, VIEWS = 32, 16, 2


def inputs():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  zimg = clip.l2_normalize(jax.random.normal(keys[0], (VIEWS, BATCH, DIM)))
  ztxt = clip.l2_normalize(jax.random.normal(keys[1], (BATCH, DIM)))
  # Near-matching pairs and a scale and bias away from their initial values, so that the
  # positives' and the negatives' terms both weigh in the gradients.
  zimg = clip.l2_normalize(zimg + 2 * ztxt)
  return zimg, ztxt, np.float32(np.log(30.0)), np.float32(-3.0)


def relative(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def main():
  devices = jax.devices()
  assert len(devices) == 8, devices
  args = inputs()
  whole = lambda zi, zt, s, b: jax.vmap(sigmoid_loss.sigmoid_loss, (0, None, None, None))(
      zi, zt, s, b).sum()
  want, want_grads = jax.value_and_grad(whole, argnums=(0, 1, 2, 3))(*args)
  out = {}
  for name, (data, model) in {'1': (1, 1), '2': (2, 1), '8': (8, 1), '4x2': (4, 2)}.items():
    mesh = Mesh(np.asarray(devices[:data * model]).reshape(data, model), ('data', 'model'))
    ring = lambda zi, zt, s, b, mesh=mesh: sigmoid_loss.ring_loss(zi, zt, s, b, mesh).sum()
    got, grads = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2, 3)))(*args)
    out[name] = {'loss': relative(got, want),
                 **{part: relative(g, w) for part, g, w in zip(
                     ('image_grads', 'text_grads', 'scale_grad', 'bias_grad'), grads,
                     want_grads)}}
  print(json.dumps(out))


if __name__ == '__main__':
  main()
