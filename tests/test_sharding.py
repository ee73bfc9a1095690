"""Sharded training on 8 simulated CPU devices computes what one device does.

The checks run in one subprocess (tests/sharding_check.py), because the device count is
fixed when JAX starts.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cpu_devices

# Float32 sums in another order: losses and parameters after two AdamW steps (learning
# rate 0.01) agree to this. The attention key bias, whose gradient is rounding noise, can
# differ by up to the learning rate (see sharding_check.KEY_BIAS).
LOSS_TOLERANCE = 1e-4
PARAM_TOLERANCE = 1e-4
KEY_BIAS_TOLERANCE = 2 * 0.01


@pytest.fixture(scope='module')
def report(demo_dir):
  env = cpu_devices(8)
  done = subprocess.run([sys.executable, '-m', 'tests.sharding_check', str(demo_dir)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_training(result):
  assert result['max_loss_diff'] < LOSS_TOLERANCE, result
  assert result['max_param_diff'] < PARAM_TOLERANCE, result
  assert result['max_key_bias_diff'] <= KEY_BIAS_TOLERANCE, result


@pytest.mark.parametrize('mesh', ['dp', 'fsdp', 'dp_tp', 'fsdp_tp', 'dp_states',
                                  'dp_states_tp', 'dp_states_accumulate_4'])
def test_sharded_steps_match_one_device(report, mesh):
  assert_same_training(report['equivalence'][mesh])


def test_parameters_are_sharded_as_the_rules_say(report):
  """Kernels are stacked over a leading `layers` axis, which stays whole."""
  specs = report['specs']
  assert specs['dp']['mlp_kernel'] in ([], [None, None, None], [None, None, 'model'])
  assert specs['fsdp']['mlp_kernel'][:2] == [None, 'data']
  assert specs['dp_tp']['mlp_kernel'] == [None, None, 'model']
  assert specs['dp_tp']['query_kernel'] == [None, None, 'model', None]
  assert specs['fsdp_tp']['mlp_kernel'] == [None, 'data', 'model']
  assert specs['fsdp_tp']['opt_mu_mlp_kernel'] == [None, 'data', 'model']  # ZeRO-3: state too
  # partition_states: weights replicated, optimiser state split over `data` (ZeRO-1); these
  # runs' layers are unrolled, so a kernel has no `layers` axis.
  assert 'data' not in specs['dp_states']['mlp_kernel']
  assert specs['dp_states']['opt_mu_mlp_kernel'][:1] == ['data']
  assert specs['dp_states_tp']['opt_mu_mlp_kernel'] == ['data', 'model']


def test_split_optimizer_state_has_its_gradients_reduce_scattered(report):
  """With the moments split over `data` (ZeRO-1) each device receives only its slice of the
  gradients' sum (trainer/gradient_scatter.py); replicated moments take all of it."""
  found = report['collectives']
  assert found['dp']['reduce-scatter'] == 0
  for mesh in ('dp_states', 'dp_states_tp'):
    assert found[mesh]['reduce-scatter'] > 0, found
    assert found[mesh]['all-reduce'] <= found['dp']['all-reduce'] + found['dp_states_tp'][
        'all-reduce'] - found['dp_states']['all-reduce'], found


def test_activations_are_placed_by_logical_axis_names(report):
  """Every constrained activation is split over `data` by its batch; heads and MLP width
  over `model`; under FSDP a token's width stays whole (the batch took `data` first)."""
  activations = {name: [tuple(spec) for spec in specs]
                 for name, specs in report['activations'].items()}
  assert activations['one_device']  # the rules apply on one device too (a 1 x 1 mesh)
  for mesh in ('dp', 'fsdp', 'dp_tp', 'fsdp_tp'):
    specs = activations[mesh]
    assert all(spec[0] == 'data' for spec in specs), (mesh, specs)
    assert ('data', None, 'model', None) in specs  # queries, keys, values [b, l, heads, kv]
    assert ('data', None, 'model') in specs  # MLP hidden [b, l, mlp]
    assert ('data', None, None) in specs  # tokens [b, l, embed]
    assert ('data', None) in specs  # embeddings [b, joint]
  assert not any('data' in spec[1:] for spec in activations['fsdp_tp'])


def test_checkpoint_from_a_4x2_mesh_restores_on_1_device_and_on_2x4(report):
  restore = report['restore']
  assert restore['one_device']['mesh'] == {'data': 1, 'model': 1}
  assert restore['mesh_2x4']['mesh'] == {'data': 2, 'model': 4}
  for result in restore.values():
    assert result['step'] == 2 and result['max_param_diff'] == 0.0
  assert restore['mesh_2x4']['mlp_kernel_spec'] == [None, None, 'model']


@pytest.mark.parametrize('lever', ['remat_minimal', 'remat_full', 'accumulate_4',
                                   'loss_chunk_2'])
def test_memory_levers_compute_the_same_training(report, lever):
  """Against dp on 8 devices."""
  assert_same_training(report['levers'][lever])


def test_bfloat16_compute_trains(report):
  losses = report['levers']['bfloat16']['losses']
  assert all(l == l for l in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize('mesh', ['dp', 'dp_tp', 'accumulate_4', 'two_views'])
def test_the_sigmoid_loss_round_the_devices_trains_as_on_one(report, mesh):
  assert_same_training(report['sigmoid'][mesh])
