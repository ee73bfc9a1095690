"""FLIP's training code is the reference for the optimisation: its schedule in steps, its
decay set and AdamW, restated in tests/flip_reference.py from its source."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
import masking
from models import clip
from tests import flip_reference
from tests.test_flip import HEADS, flip_model_config, flip_params, our_params
from trainer import objective as objective_lib
from trainer import optimizer
from trainer import partitioning
from trainer import state as state_lib
from trainer import step as step_lib


@pytest.mark.parametrize('recipe', sorted(flip_reference.FLIP_RECIPES))
@pytest.mark.parametrize('batch_size', [65536, 32768, 16384, 4096])
def test_every_flip_recipe_has_flips_steps_and_learning_rate_at_every_step(recipe,
                                                                           batch_size):
  config = importlib.import_module(f'configs.{recipe}').get_config()
  config.batch_size = batch_size
  total = flip_reference.flip_total_steps(config.num_epochs, config.samples_per_epoch,
                                          batch_size)
  assert optimizer.total_steps(config) == total
  steps = np.arange(total + 1)
  flips = flip_reference.flip_learning_rate(
      steps, learning_rate=config.learning_rate, batch_size=batch_size,
      warmup_epochs=config.warmup_epochs, num_epochs=config.num_epochs,
      samples_per_epoch=config.samples_per_epoch)
  ours = np.asarray(jax.jit(jax.vmap(optimizer.learning_rate_schedule(config)))(steps))
  peak = config.learning_rate * batch_size / 256
  assert np.abs(ours - flips).max() <= 1e-6 * peak


def test_flip_default_batch_trains_flips_190000_steps():
  config = default.get_config()
  assert optimizer.total_steps(config) == 190_000 and optimizer.warmup_steps(config) == 760


def _batches(config, count, seed=0):
  rng = np.random.default_rng(seed)
  size = config.image_size
  for _ in range(count):
    tokens = rng.integers(1000, 30000, (config.batch_size, config.aug.txt.max_len))
    tokens[:, 9:] = 0
    yield {'image': rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8),
           'tokens': tokens.astype(np.int32),
           'skipped': np.zeros((config.batch_size,), np.int32)}


def train_beside_flip(workdir, demo_dir, mask_ratio, steps=3, **overrides):
  """`steps` of this project's training and of FLIP's restated one, from the same
  FLIP-initialised micro model and batches: ([(our loss, FLIP's)], [(our learning rate,
  FLIP's)], {parameter: largest gap after the last step}, our final state)."""
  config = flip_model_config(demo_dir, scan_layers=False)
  # 12 steps per epoch: warmup over 3 steps, so that steps 1 and 2 learn at 1/3 and 2/3 of
  # the peak, then the cosine.
  config.warmup_epochs, config.num_epochs, config.learning_rate = 0.25, 1.0, 0.08
  config.model.model_img.mask_ratio = mask_ratio
  config.update(overrides)
  weights = flip_params(config)
  flip_reference.write_t5x_checkpoint(str(workdir / 'init'), weights, 1,
                                      with_optimizer_state=False)
  model, params = our_params(config, str(workdir / 'init'))
  mesh = partitioning.make_mesh(config)
  policy = masking.get_policy(config)
  objective = objective_lib.objective_of(config, policy)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(3), mesh, objective)
  state = state.replace(params=params)
  step = step_lib.jit_train_step(config, model, policy, objective, state, mesh,
                                 donate=False)
  rng = jax.random.PRNGKey(7)

  flip = jax.tree.map(np.asarray, weights)
  mu = jax.tree.map(np.zeros_like, flip)
  nu = jax.tree.map(np.zeros_like, flip)
  count, losses, rates = 0, [], []
  grad_fn = jax.value_and_grad(flip_reference.flip_train_loss)
  for index, batch in enumerate(_batches(config, steps)):
    state, metrics = step(state, partitioning.global_batch(mesh, batch), rng)
    # The same kept patches: FLIP's and this project's random masks differ only in order.
    mask_rng = jax.random.split(jax.random.fold_in(rng, index))[0]
    images = clip.normalize_pixels(model, jnp.asarray(batch['image']))
    keep_idx, _ = step_lib.sample_views(policy, mask_rng, images, None, 1)
    loss, grads = grad_fn(jax.tree.map(jnp.asarray, flip), images,
                          jnp.asarray(batch['tokens']), keep_idx, 8, HEADS, jnp)
    learning_rate = float(flip_reference.flip_learning_rate(
        count, learning_rate=config.learning_rate, batch_size=config.batch_size,
        warmup_epochs=config.warmup_epochs, num_epochs=config.num_epochs,
        samples_per_epoch=config.samples_per_epoch))
    losses.append((float(metrics['train_loss']), float(loss)))
    rates.append((float(metrics['learning_rate']), learning_rate))
    flip, mu, nu, count = flip_reference.flip_adamw_step(
        flip, jax.tree.map(np.asarray, grads), mu, nu, count, learning_rate,
        b1=config.opt.b1, b2=config.opt.b2, weight_decay=config.opt.weight_decay)

  flip_reference.write_t5x_checkpoint(str(workdir / 'after'), flip, steps + 1,
                                      with_optimizer_state=False)
  _, expected = our_params(config, str(workdir / 'after'))
  gaps = {}
  for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                  jax.tree.leaves(expected)):
    gaps[jax.tree_util.keystr(path)] = float(np.abs(np.asarray(ours) - np.asarray(theirs)).max())
  return losses, rates, gaps, state


def without_key_biases(gaps):
  # A key bias only shifts every logit of a query alike: its true gradient is 0, and Adam
  # turns the float noise of either computation into steps of the learning rate's size.
  return {k: v for k, v in gaps.items() if "'key'" not in k or "'bias'" not in k}


@pytest.mark.parametrize('mask_ratio', [0.0, 0.5])
def test_three_steps_equal_flips_training_code(tmp_path, demo_dir, mask_ratio):
  losses, rates, gaps, state = train_beside_flip(tmp_path, demo_dir, mask_ratio)
  for ours, flips in losses:
    assert ours == pytest.approx(flips, abs=1e-5), losses
  for ours, flips in rates:
    assert ours == pytest.approx(flips, rel=1e-6), rates
  assert rates[-1][1] > 0
  compared = without_key_biases(gaps)
  worst = max(compared, key=compared.get)
  assert compared[worst] <= 1e-5, (worst, compared[worst])
  # The class token and logit_scale are decayed as FLIP decays them: they moved.
  assert float(state.params['logit_scale']) != pytest.approx(np.log(1 / 0.07), abs=1e-7)


def test_another_decay_set_drifts_from_flip(tmp_path, demo_dir):
  """The check tells decay sets apart: leaving FLIP's class token undecayed shows in it."""
  _, _, gaps, _ = train_beside_flip(tmp_path, demo_dir, 0.0, decay_set='kernels')
  assert gaps["['image']['cls']"] > 1e-5
