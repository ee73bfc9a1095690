"""SigLIP's sigmoid loss: big_vision's definition, open_clip's SigLipLoss, the same loss and
gradients passed round the devices' ring as on one device, and memory per device that stays
flat as devices are added."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny_openclip
from foreign_weights import open_clip_state
from models import clip
from models import sigmoid_loss
from tests.conftest import ROOT, cpu_devices, micro_config
from tests.test_open_clip import embeddings, init_params, micro_inputs, open_clip_embeddings
from tests.test_open_clip import reference
from trainer import checks
from trainer import optimizer


def big_vision_loss(zimg, ztxt, t, b):
  """big_vision/trainers/proj/image_text/siglip.py:291-306 (commit 0127fb6b), restated;
  `t` is exp of the learned parameter (big_vision/models/proj/image_text/two_towers.py:80)."""
  logits = jnp.dot(zimg, ztxt.T)
  logits = logits * t + b
  eye = jnp.eye(zimg.shape[0])
  m1_diag1 = -jnp.ones_like(logits) + 2 * eye
  loglik = jax.nn.log_sigmoid(m1_diag1 * logits)
  nll = -jnp.sum(loglik, axis=-1)
  return jnp.mean(nll)


def pairs(batch=24, dim=16, seed=0):
  """Embeddings whose pairs nearly match, so that positives and negatives both weigh in."""
  keys = jax.random.split(jax.random.PRNGKey(seed))
  ztxt = clip.l2_normalize(jax.random.normal(keys[0], (batch, dim)))
  zimg = clip.l2_normalize(jax.random.normal(keys[1], (batch, dim)) + 2 * ztxt)
  return zimg, ztxt


def test_the_loss_and_its_gradients_are_big_visions():
  zimg, ztxt = pairs()
  ours = jax.value_and_grad(sigmoid_loss.sigmoid_loss, argnums=(0, 1, 2, 3))
  theirs = jax.value_and_grad(lambda zi, zt, s, b: big_vision_loss(zi, zt, jnp.exp(s), b),
                              argnums=(0, 1, 2, 3))
  for scale, bias in ((np.log(10.0), -10.0), (np.log(40.0), -2.0)):
    (got, got_grads), (want, want_grads) = (f(zimg, ztxt, jnp.float32(scale), jnp.float32(bias))
                                            for f in (ours, theirs))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_grads, want_grads):
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(w))))


def test_the_loss_and_its_gradients_are_open_clips(tmp_path):
  zimg, ztxt = pairs(seed=1)
  scale, bias = np.float32(np.log(20.0)), np.float32(-5.0)
  np.savez(tmp_path / 'in.npz', zimg=zimg, ztxt=ztxt, logit_scale=scale, logit_bias=bias)
  reference('siglip', f'--inputs={tmp_path / "in.npz"}', '--out', tmp_path / 'out.npz')
  want = np.load(tmp_path / 'out.npz')
  got, grads = jax.value_and_grad(sigmoid_loss.sigmoid_loss, argnums=(0, 1, 2, 3))(
      zimg, ztxt, scale, bias)
  np.testing.assert_allclose(got, want['loss'], rtol=1e-6)
  for g, name in zip(grads, ('zimg', 'ztxt', 'logit_scale', 'logit_bias')):
    w = want[f'{name}_grad']
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(w))))


@pytest.fixture(scope='module')
def ring_report():
  done = subprocess.run([sys.executable, '-m', 'tests.sigmoid_ring_check'], cwd=ROOT,
                        env=cpu_devices(8), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('mesh', ['1', '2', '8', '4x2'])
def test_round_the_ring_the_loss_and_gradients_equal_the_whole_batchs(ring_report, mesh):
  """Relative to each quantity's largest magnitude, two views, float32: the ring adds its
  blocks in another order than the whole batch's sum, a few ulps apart (up to 1.005e-6
  seen on the scale's gradient), where a block missed or counted twice is off by percents."""
  assert set(ring_report[mesh]) == {'loss', 'image_grads', 'text_grads', 'scale_grad',
                                    'bias_grad'}
  for part, difference in ring_report[mesh].items():
    assert difference <= 4e-6, (mesh, part, difference)


def test_memory_per_device_stays_flat_as_devices_are_added():
  done = subprocess.run([sys.executable, '-m', 'benchmarks.sigmoid_loss', '--devices=2,4,8',
                         '--local_batch=512', '--dim=64', '--rounds=0'],
                        cwd=ROOT, env=cpu_devices(8), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  memory = {int(d): {name: m['temp_mib'] for name, m in losses.items()} for d, losses in
            json.loads(done.stdout.strip().splitlines()[-1])['devices'].items()}
  # Each device forms a 512 x 512 block of logits at a time (1 MiB in float32).
  assert memory[8]['sigmoid_ring'] <= memory[2]['sigmoid_ring'] < 8
  # Written on the global batch, the logits a device holds grow with the devices.
  assert memory[8]['sigmoid_gathered'] >= 3 * memory[2]['sigmoid_gathered']
  assert memory[8]['softmax'] >= 3 * memory[2]['softmax']


def sigmoid_config(demo_dir, **overrides):
  return micro_config(demo_dir, **{'model.loss': 'sigmoid', **overrides})


def test_the_model_starts_at_siglips_scale_and_bias_and_never_decays_the_bias(demo_dir):
  config = sigmoid_config(demo_dir)
  params = init_params(clip.from_config(config), micro_inputs(config))
  assert float(params['logit_scale']) == pytest.approx(np.log(10.0))
  assert float(params['logit_bias']) == -10.0
  for decay_set in ('all', *optimizer.DECAY_SETS):
    mask = optimizer.weight_decay_mask(params, decay_set)
    assert not mask['logit_bias'], decay_set
  softmax = micro_config(demo_dir)
  assert 'logit_bias' not in init_params(clip.from_config(softmax), micro_inputs(softmax))


@pytest.mark.parametrize('overrides, message', [
    ({'model.loss': 'hinge'}, r"^config.model.loss='hinge': expected one of \('softmax', "
                              r"'sigmoid'\)"),
    ({'model.clr.loss_chunk': 4}, '^config.model.clr.loss_chunk=4 chunks the softmax loss'),
    ({'model.sigmoid.scale_init': 0.0}, '^config.model.sigmoid.scale_init=0.0: expected'),
])
def test_settings_the_sigmoid_loss_cannot_take_are_refused_naming_the_field(
    demo_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    checks.check(sigmoid_config(demo_dir, **overrides))


def test_a_sigmoid_model_exports_to_open_clip_with_its_bias(demo_dir, tmp_path):
  config = tiny_openclip.get_config()
  config.model.loss = 'sigmoid'
  model = clip.from_config(config)
  inputs = micro_inputs(config)
  params = init_params(model, inputs)
  params = {**params, 'logit_bias': jnp.float32(-6.5), 'logit_scale': jnp.float32(3.0)}
  open_clip_state.export(params, config, str(tmp_path / 'export'))
  want, = open_clip_embeddings([tmp_path / 'export'], inputs, tmp_path)
  images, texts = embeddings(model, params, inputs)
  np.testing.assert_allclose(images, want['images'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(texts, want['texts'], atol=1e-4, rtol=0)
  assert float(want['logit_bias']) == -6.5 and float(want['logit_scale']) == 3.0
  # Read back, the folder is refused by a softmax model, which has no bias, naming the field.
  softmax = tiny_openclip.get_config()
  assert any('config.model.loss' in line for line in
             open_clip_state.folder_config_differences(str(tmp_path / 'export'), softmax))
