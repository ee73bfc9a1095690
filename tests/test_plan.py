"""tools/plan.py: slices by name, the collectives read from a compiled program, and the real
train step compiled for a TPU slice that is not there (when the TPU compiler is installed:
`make test` installs it, as `make plan` does)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from configs import tiny
from tests.conftest import ROOT
from tools import plan
from trainer import fit

def one_layer_tiny():
  """The tiny recipe with one block per tower: what compiles for a TPU in seconds."""
  config = tiny.get_config()
  for tower in (config.model.model_img, config.model.model_txt):
    tower.transformer.num_layers = 1
  return config


needs_compiler = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason='the TPU compiler (libtpu) is not installed: make plan and make test install it')


@pytest.mark.parametrize('name, topology, devices', [
    ('v3-8', 'v3:2x2', 8), ('v3-256', 'v3:8x16', 256), ('v3-512', 'v3:16x16', 512),
    ('v4-128', 'v4:4x4x4', 64), ('v5p-64', 'v5p:2x4x4', 32), ('v5e-16', 'v5e:4x4', 16),
    ('v5litepod-256', 'v5e:16x16', 256), ('v6e-4', 'v6e:2x2', 4)])
def test_slices_are_read_by_the_names_they_are_rented_by(name, topology, devices):
  slice_ = plan.parse_slice(name)
  assert slice_.topology == topology
  assert slice_.chips * (2 if slice_.chip.generation == 'v3' else 1) == devices


@pytest.mark.parametrize('name, message', [
    ('v3-12', r'v3 slices have 8, 32, .* cores'), ('v9-8', 'expected GENERATION-N'),
    ('v5e-3', r'v5e slices have 1, 4, 8')])
def test_a_slice_that_is_not_rented_is_refused_naming_what_is(name, message):
  with pytest.raises(ValueError, match=message):
    plan.parse_slice(name)


def test_collectives_are_counted_with_their_bytes_and_traffic():
  hlo = '\n'.join([
      '  %all-reduce.1 = (f32[128]{0:T(128)S(1)}, bf16[4,32]{1,0:T(4,128)(2,1)}) '
      'all-reduce(%a, %b), channel_id=4, replica_groups={{0,1,2,3}}, to_apply=%add',
      "  %all-gather.2 = f32[64,8]{1,0} all-gather(%c), dimensions={0}, "
      "replica_groups=mesh['data'=2,'model'=2] {'data'}",
      '  %reduce-scatter.3 = f32[16]{0} reduce-scatter(%d), replica_groups=[1,4]<=[4]',
      '  %all-gather-start.4 = (f32[8]{0}, f32[32]{0}) all-gather-start(%e), '
      'replica_groups={{0,1,2,3}}',
      # The TPU compiler's reduce-scatter: an all-reduce sliced, in a computation of its own.
      '%all-reduce-scatter.21 (input.21: f32[128,128]) -> f32[32,128] {',
      '  %all-reduce.380 = f32[128,128]{1,0:T(8,128)} all-reduce(%input.21), channel_id=105, '
      'replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add.55.clone',
      '}'])
  found = plan.collectives(hlo, devices=4)
  assert found['all-reduce'] == {'count': 1, 'bytes': 128 * 4 + 4 * 32 * 2,
                                 'traffic': int((128 * 4 + 256) * 2 * 3 / 4)}
  assert found['all-gather'] == {'count': 2, 'bytes': 64 * 8 * 4 + 32 * 4,
                                 'traffic': int(64 * 8 * 4 / 2) + int(32 * 4 * 3 / 4)}
  assert found['reduce-scatter'] == {'count': 2, 'bytes': 64 + 128 * 32 * 4,
                                     'traffic': (64 + 128 * 32 * 4) * 3}


def test_a_collective_in_a_loops_body_counts_once_per_trip():
  hlo = '\n'.join([
      '%body.1 (p: (s32[], f32[8])) -> (s32[], f32[8]) {',
      '  %fusion.3 = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused.4',
      '}',
      '%fused.4 (q: f32[8]) -> f32[8] {',
      '  %all-reduce.5 = f32[8]{0} all-reduce(%q), replica_groups={{0,1}}, to_apply=%add',
      '}',
      '%condition.2 (p: (s32[], f32[8])) -> pred[] {',
      '  %constant.7 = s32[]{:T(256)} constant(24)',
      '  ROOT %lt = pred[] compare(%i, %constant.7), direction=LT',
      '}',
      'ENTRY %main (a: f32[8]) -> f32[8] {',
      '  %while.9 = (s32[], f32[8]) while(%t), condition=%condition.2, body=%body.1',
      '  %all-gather.10 = f32[16]{0} all-gather(%a), replica_groups={{0,1}}, dimensions={0}',
      '}'])
  found = plan.collectives(hlo, devices=2)
  assert found['all-reduce'] == {'count': 24, 'bytes': 24 * 32, 'traffic': 24 * 32}
  assert found['all-gather'] == {'count': 1, 'bytes': 64, 'traffic': 32}


def test_remat_adds_its_recomputation_to_a_steps_flops():
  config = tiny.get_config()
  assert plan.remat_extra_flops(config) == 0
  config.model.model_img.transformer.remat_policy = 'minimal'
  assert 0 < plan.remat_extra_flops(config) < 1 / 6  # the image tower's share of 1/6
  for tower in (config.model.model_img, config.model.model_txt):
    tower.transformer.remat_policy = 'full'
  assert plan.remat_extra_flops(config) == pytest.approx(1 / 3)


@needs_compiler
def test_the_train_step_compiled_for_a_slice_reports_its_memory_and_collectives():
  config = one_layer_tiny()
  result = plan.plan(config, plan.parse_slice('v5e-4'), remedies=())
  assert (result['devices'], result['mesh'], result['per_device_batch']) == (
      4, {'data': 4, 'model': 1}, config.batch_size / 4)
  configured, = result['rows']
  assert configured['fits'] and 0 < configured['gib_per_device'] < 1
  # The gradients are summed over the four devices: at least the parameters' bytes.
  params = sum(x.size * 4 for x in jax_leaves(config))
  # (the figure is rounded to a thousandth of a GiB)
  assert configured['collectives']['all-reduce']['gib'] * 2 ** 30 >= params - 2 ** 30 / 2000
  assert configured['images_per_sec'] > 0
  evaluation = result['evaluation']
  assert evaluation['eval_batch_size'] == config.eval_batch_size
  assert evaluation['fits'] and 0 < evaluation['gib_per_device'] < 1


def jax_leaves(config):
  import jax  # pylint: disable=g-import-not-at-top
  from models import clip  # pylint: disable=g-import-not-at-top
  from trainer import state as state_lib  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda r: clip.from_config(config).init(
      r, *state_lib.dummy_inputs(config))['params'], jax.random.PRNGKey(0))
  return jax.tree.leaves(shapes)


@needs_compiler
def test_a_step_that_does_not_fit_gets_the_settings_that_make_it_fit():
  config = one_layer_tiny()
  slice_ = plan.parse_slice('v5e-4')
  devices = plan.tpu_devices(slice_)
  with plan.jax_config.enable_compilation_cache(False):
    configured = fit.compile_train_step(config, devices)
  # A chip a little smaller than the step: a bfloat16 first moment (an eighth of the
  # arguments, about) makes it fit; gradient accumulation does not lower the moments.
  hbm = (configured.total - configured.arguments / 16) / 2 ** 30
  small = plan.dataclasses.replace(slice_, chip=plan.dataclasses.replace(slice_.chip,
                                                                          hbm_gib=hbm))
  remedies = [r for r in fit.REMEDIES if r[0] in ('gradient accumulation x2',
                                                   'bfloat16 first moment')]
  result = plan.plan(config, small, devices, remedies=remedies)
  rows = {r['setting']: r for r in result['rows']}
  assert list(rows) == ['as configured', 'gradient accumulation x2', 'bfloat16 first moment']
  assert not rows['as configured']['fits']
  assert rows['bfloat16 first moment']['fits']
  assert rows['bfloat16 first moment']['overrides'] == {'opt.mu_dtype': 'bfloat16'}
  assert (rows['bfloat16 first moment']['arguments_gib']
          < rows['as configured']['arguments_gib'])


@needs_compiler
def test_the_command_prints_a_table_and_one_json_line(tmp_path):
  done = subprocess.run([sys.executable, '-m', 'tools.plan', '--config=configs/tiny.py',
                         '--config.batch_size=64', '--slice=v5e-4', '--noremedies',
                         '--config.model.model_img.transformer.num_layers=1',
                         '--config.model.model_txt.transformer.num_layers=1'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  assert lines[0].startswith('v5e-4 (v5e:2x2, 4 devices, mesh 4 x 1): batch 64, 16 per device')
  assert json.loads(lines[-1])['rows'][0]['setting'] == 'as configured'
  assert done.stderr.strip() == ''  # the TPU compiler's and TensorFlow's start-up notes


def test_the_slice_table_plans_each_recipe_on_its_paper_slice_and_as_many_v5e_and_v6e_chips():
  from tools import slice_table  # pylint: disable=g-import-not-at-top
  assert [s.name for s in slice_table.slices_for('v3-256')] == ['v3-256', 'v5e-128', 'v6e-128']
  assert [s.chips for s in slice_table.slices_for('v3-512')] == [256, 256, 256]
  result = {'slice': 'v5e-128', 'masking': 'no masking', 'per_device_batch': 512.0,
            'tflops_per_step': 7760.0,
            'rows': [{'setting': 'as configured', 'fits': False, 'gib_per_device': 31.2,
                      'arguments_gib': 1.6, 'temporaries_gib': 28.1, 'outputs_gib': 1.5,
                      'images_per_sec': 80000, 'compile_seconds': 90.0}],
            'evaluation': {'gib_per_device': 2.5, 'fits': True}}
  assert slice_table.table_row('cfg_flip_base', 'B/16', result) == (
      '| cfg_flip_base (B/16) | v5e-128 | no masking | 512 | 31.2 (1.6 / 28.1 / 1.5) | no | '
      '7,760 T | 80,000 | 2.5 (fits) | 90.0 |')
