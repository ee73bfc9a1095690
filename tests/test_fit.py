"""A train step too large for its devices is refused before it runs, naming the settings that
make it fit (trainer/fit.py); where the devices say nothing of their memory, it runs."""

import os

import jax
import jax.numpy as jnp
import pytest

import train
from tests.conftest import micro_config
from trainer import fit
from trainer import partitioning
from trainer import step as step_lib

BF16_MOMENT = {'opt.mu_dtype': 'bfloat16'}
assert any(overrides == BF16_MOMENT for _, overrides, _ in fit.REMEDIES)


def test_a_step_that_does_not_fit_is_refused_before_it_runs_naming_what_fits(
    tmp_path, demo_dir, monkeypatch):
  # Two remedies stand for all of them (each is compiled when the step does not fit).
  monkeypatch.setattr(fit, 'REMEDIES', [r for r in fit.REMEDIES if r[0] in (
      'gradient accumulation x2', 'bfloat16 first moment')])
  config = micro_config(demo_dir, total_steps=2, eval_at_end=False)
  devices = jax.devices()
  configured = fit.compile_train_step(config, devices)
  smaller = fit.compile_train_step(fit.with_overrides(config, BF16_MOMENT), devices)
  assert smaller.total < configured.total
  limit = (smaller.total + configured.total) // 2
  monkeypatch.setattr(fit, 'device_memory', lambda devices: limit)
  workdir = tmp_path / 'run'
  with pytest.raises(fit.DoesNotFit) as refused:
    train.train_and_evaluate(config, str(workdir))
  message = str(refused.value)
  assert f'the train step (batch_size=8 over {len(devices)} cpu devices) needs ' in message
  assert f'each has {limit / 2 ** 30:.2f} GiB' in message
  assert 'bfloat16 first moment (' in message
  assert '+0% FLOPs): --config.opt.mu_dtype=bfloat16' in message
  assert not os.path.exists(workdir / 'checkpoints' / '1')  # no step ran

  # The settings it names train.
  config = fit.with_overrides(config, BF16_MOMENT)
  assert train.train_and_evaluate(config, str(tmp_path / 'fits'))['train_loss'] > 0


def test_when_nothing_fits_the_refusal_says_what_is_left(demo_dir, monkeypatch):
  # Two remedies stand for all of them: each is compiled, then both together.
  monkeypatch.setattr(fit, 'REMEDIES', [r for r in fit.REMEDIES
                                        if r[0] in ('remat full', 'bfloat16 first moment')])
  config = micro_config(demo_dir)
  mesh = partitioning.make_mesh(config)
  training = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  with pytest.raises(fit.DoesNotFit, match=r'What fits: none of remat full, bfloat16 first '
                     'moment, alone or together: a smaller batch_size or more devices'):
    fit.checked_step(config, training.step, training.state, fit.abstract_batch(config, mesh),
                     jax.ShapeDtypeStruct((2,), jnp.uint32), mesh, limit=1)
  # CPUs do not say what they hold: there, a step is never refused.
  assert fit.device_memory(jax.devices()) is None


def test_the_loss_is_offered_in_chunks_that_divide_the_batch_and_only_where_it_is_softmax(
    demo_dir):
  chunked = [r for r in fit.REMEDIES if r[0] == 'loss chunked x8']
  config = micro_config(demo_dir, batch_size=64)
  trial, = fit.remedy_trials(config, jax.devices(), lambda c: True, 1, chunked)
  assert trial.overrides == {'model.clr.loss_chunk': 8} and trial.compiled.total > 0
  # SigLIP's loss is formed in blocks already: the remedy is tried and refused, with why.
  trial, = fit.remedy_trials(micro_config(demo_dir, batch_size=64, **{'model.loss': 'sigmoid'}),
                             jax.devices(), lambda c: True, 1, chunked)
  assert trial.compiled is None and 'sigmoid loss is formed block by block' in trial.refusal


@pytest.mark.parametrize('need, limit, expected', [
    # An affine need: found from the line through two sizes, then checked one unit above.
    (lambda n: 1000 + 37 * n, 1000 + 37 * 203, 200),
    # A quadratic part (the logits) bends the line: the boundary is still exact.
    (lambda n: 1000 + 10 * n + n * n // 4, 1000 + 10 * 500 + 500 * 500 // 4, 496),
    # The compiler refuses beyond 96, whatever the line says.
    (lambda n: None if n > 96 else 100 * n, 10 ** 9, 96),
    # A flat need up to a cliff (a compiler rematerialising under pressure).
    (lambda n: 50 if n <= 328 else 10 ** 6, 100, 328),
    # Not even one unit fits.
    (lambda n: 100 * n, 50, 0),
])
def test_the_largest_fitting_size_is_the_boundary_in_few_compilations(need, limit, expected):
  calls = []

  def counted(n):
    assert n % 8 == 0 and n > 0
    calls.append(n)
    return need(n)

  assert fit.largest_fitting(counted, limit, unit=8) == expected
  assert len(calls) == len(set(calls)) <= 12
  if expected == 200:
    assert len(calls) <= 4  # 8, 32, the line's 200, and 208


def test_the_largest_batch_fits_its_limit_and_one_unit_more_does_not(demo_dir):
  config = micro_config(demo_dir, **{'model.model_img.transformer.num_layers': 1,
                                     'model.model_txt.transformer.num_layers': 1})
  devices = jax.devices()
  need = lambda batch: fit.compile_train_step(
      fit.with_overrides(config, {'batch_size': batch}), devices).total
  limit = (need(64) + need(72)) // 2
  assert fit.largest_batch(config, devices, limit) == 64
