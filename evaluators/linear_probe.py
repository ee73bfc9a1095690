"""Linear probe: logistic regression on frozen image embeddings, in JAX.

The weight decay is chosen from a sweep on a held-out part of the train split; the probe is
then refitted on the whole train split and scored on the test split (top-1). The features
are placed on the mesh split over `data`, so an ImageNet-sized set fits as training does.
"""

import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from evaluators import common
from input_pipeline import eval_data


def _on_mesh(mesh: Mesh, x: np.ndarray, rows: int):
  """Host array (identical on every host) padded to `rows`, split over `data`."""
  x = np.pad(x, [(0, rows - len(x))] + [(0, 0)] * (x.ndim - 1))
  sharding = NamedSharding(mesh, P('data'))
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def _fit(features, labels, weights, weight_decay, *, num_classes, steps):
  """Full-batch logistic regression by Adam: mean cross-entropy + wd / 2 |W|^2."""
  dim = features.shape[1]
  params = {'w': jnp.zeros((dim, num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(optax.cosine_decay_schedule(0.05, steps))

  def loss(params):
    logits = features @ params['w'] + params['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return (ce * weights).sum() / weights.sum() + weight_decay / 2 * jnp.sum(params['w'] ** 2)

  def step(_, carry):
    params, opt_state = carry
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
  return params


def fit_logistic_regression(features, labels, num_classes: int, weight_decay: float, *,
                            mesh: Mesh, steps: int = 500):
  """(w [E, C], b [C]) fitted to features [N, E] and labels [N] on the mesh."""
  data = mesh.shape['data']
  rows = -(-len(features) // data) * data
  params = _fit(_on_mesh(mesh, features.astype(np.float32), rows),
                _on_mesh(mesh, labels.astype(np.int32), rows),
                _on_mesh(mesh, np.ones(len(features), np.float32), rows),
                jnp.float32(weight_decay), num_classes=num_classes, steps=steps)
  return np.asarray(params['w'].addressable_data(0)), np.asarray(params['b'].addressable_data(0))


def top1(w, b, features, labels) -> float:
  return float(np.mean(np.argmax(features @ w + b, axis=1) == labels))


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int,
                 weight_decays: Sequence[float], *, mesh: Mesh, holdout: float = 0.2,
                 steps: int = 500, seed: int = 0) -> Dict[str, float]:
  """Chooses the weight decay on a held-out share of the train split, refits on all of it,
  and returns the test top-1, the chosen weight decay and its held-out top-1."""
  order = np.random.RandomState(seed).permutation(len(train_x))
  cut = max(1, int(len(train_x) * holdout))
  held, kept = order[:cut], order[cut:]
  scores = []
  for wd in weight_decays:
    w, b = fit_logistic_regression(train_x[kept], train_y[kept], num_classes, wd, mesh=mesh,
                                   steps=steps)
    scores.append(top1(w, b, train_x[held], train_y[held]))
  best = int(np.argmax(scores))  # the first (smallest listed) of equals
  w, b = fit_logistic_regression(train_x, train_y, num_classes, weight_decays[best],
                                 mesh=mesh, steps=steps)
  return {'top1': top1(w, b, test_x, test_y), 'weight_decay': float(weight_decays[best]),
          'heldout_top1': scores[best]}


class LinearProbe:

  def __init__(self, ecfg, config, towers: common.Towers):
    self.towers, self.ecfg = towers, ecfg
    kwargs = common.images_kwargs(config, ecfg, towers.batch_size)
    self.test = eval_data.classification_images(ecfg, **kwargs)
    train_cfg = ecfg.copy_and_resolve_references()
    train_cfg.split, train_cfg.max_images = ecfg.train_split, ecfg.train_max_images
    self.train = eval_data.classification_images(train_cfg, **kwargs)

  def __call__(self, state, rng) -> Dict[str, float]:
    train_x, train_y, _ = self.towers.images(state, self.train, rng)
    test_x, test_y, skipped = self.towers.images(state, self.test, rng)
    metrics = linear_probe(train_x, train_y, test_x, test_y,
                           len(self.train.classnames), tuple(self.ecfg.weight_decays),
                           mesh=self.towers.mesh, steps=self.ecfg.probe_steps)
    metrics.update(train_images=float(len(train_y)), images=float(len(test_y)),
                   skipped_images=float(skipped))
    return metrics
