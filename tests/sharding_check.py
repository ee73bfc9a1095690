"""Runs in a subprocess with 8 simulated CPU devices (see test_sharding.py); prints JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharding_check DEMO_DIR
"""

import json
import os
import re
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from input_pipeline.tokenizer import BertTokenizer
from input_pipeline import training_pairs
from foreign_weights import layout
from models import clip
from tests.conftest import micro_config
from trainer import checkpoints
from trainer import partitioning
from trainer import state as state_lib
from trainer import step as step_lib

MESHES = {'one_device': ('dp', 1, 1), 'dp': ('dp', 1, 8), 'fsdp': ('fsdp', 1, 8),
          'dp_tp': ('dp', 2, 8), 'fsdp_tp': ('fsdp', 2, 8),
          'dp_states': ('dp', 1, 8), 'dp_states_tp': ('dp', 2, 8)}  # ZeRO-1: partition_states
# The meshes whose compiled step's collectives are counted.
COUNTED = ('dp', 'dp_states', 'dp_states_tp')


def config_for(demo_dir, **overrides):
  """The micro test model with 4 heads, so that a model axis of 4 divides them, and scanned
  layers, as H/14's recipe (and any run with remat) has them; unrolled with the optimiser
  state split, as L/16's recipe has them, where gradients are reduce-scattered."""
  scanned = not overrides.get('partitioning.partition_states', False)
  return micro_config(demo_dir, total_steps=10, warmup_epochs=0.0, learning_rate=0.01,
                      **{'model.scan_layers': scanned,  # overridden where given
                         'model.model_img.transformer.num_heads': 4,
                         'model.model_txt.transformer.num_heads': 4, **overrides})


def run(config, devices, batch, steps=2, count_collectives=False):
  mesh = partitioning.make_mesh(config, devices)
  partitioning.check_divisibility(config, mesh)
  _, _, _, state, step_fn = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  global_batch = partitioning.global_batch(mesh, batch)
  activations = activation_specs(step_fn, state, global_batch)
  found = (collectives(step_fn.lower(state, global_batch, jax.random.PRNGKey(1)).compile())
           if count_collectives else None)
  losses = []
  for _ in range(steps):
    state, metrics = step_fn(state, global_batch, jax.random.PRNGKey(1))
    losses.append(float(metrics['train_loss']))
  return state, losses, activations, found


def collectives(compiled):
  """How many of each cross-device reduction the compiled step holds."""
  text = compiled.as_text()
  return {kind: len(re.findall(rf'= [^=]* {kind}(?:-start)?\(', text))
          for kind in ('all-reduce', 'reduce-scatter')}


def activation_specs(step_fn, state, batch):
  """The distinct PartitionSpecs that the traced step's sharding constraints ask for."""
  specs = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'sharding_constraint':
        specs.add(tuple(None if a is None else str(a) for a in eqn.params['sharding'].spec))
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if hasattr(sub, 'eqns'):
            visit(sub)
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            visit(sub.jaxpr)

  visit(jax.make_jaxpr(step_fn)(state, batch, jax.random.PRNGKey(1)).jaxpr)
  return sorted(specs, key=str)


# The attention key bias adds the same amount to every logit of a query, so its gradient is
# zero up to rounding, and AdamW's first steps (update ~ lr * g / |g|) turn that rounding into
# steps of up to lr whose sign depends on summation order. It is compared apart.
KEY_BIAS = '/key/bias'


def flat_params(state):
  """'/'-joined names -> values, blocks stacked as a scan has them whatever the layout."""
  return layout.stack_blocks({
      '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
      for path, v in jax.tree_util.tree_leaves_with_path(state.params)})


def max_diff(params, reference, key_bias=False):
  return max(float(np.max(np.abs(params[k] - reference[k]))) for k in params
             if (KEY_BIAS in k) == key_bias)


def differences(losses, params, reference_losses, reference_params):
  """How far a run's losses and parameters are from a reference run's."""
  return {'losses': losses,
          'max_loss_diff': max(abs(a - b) for a, b in zip(losses, reference_losses)),
          'max_param_diff': max_diff(params, reference_params),
          'max_key_bias_diff': max_diff(params, reference_params, key_bias=True)}


def spec_of(state, *path):
  """The spec of a block's parameter, of the first block where the layers are unrolled."""
  leaf = state.params
  for key in path:
    leaf = leaf[key] if key in leaf else leaf['block_00']
  return [None if a is None else str(a) for a in leaf.sharding.spec]


def optimizer_moment_spec(state):
  """Sharding of AdamW's first moment of the first image block's MLP kernel."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
    name = jax.tree_util.keystr(path)
    if '.mu' in name and re.search(
        r"\['image'\]\['encoder'\]\['(blocks|block_00)'\]\['mlp'\]\['Dense_0'\]\['kernel'\]",
        name):
      return [None if a is None else str(a) for a in leaf.sharding.spec]
  raise KeyError('no first moment of the MLP kernel in the optimiser state')


def main(demo_dir):
  devices = jax.devices()
  assert len(devices) == 8, devices
  base = config_for(demo_dir)
  batch = next(training_pairs.train_dataset(base, BertTokenizer(16), training_pairs.list_shards(
      base.laion_path), seed=0).as_numpy_iterator())
  out = {'equivalence': {}, 'specs': {}, 'activations': {}, 'collectives': {}}
  # One device's run of each layout: unrolled blocks are initialised from other keys.
  references = {}

  def reference(config):
    if config.model.scan_layers not in references:
      state, losses, _, _ = run(config_for(demo_dir, **{
          'model.scan_layers': config.model.scan_layers}), devices[:1], batch)
      references[config.model.scan_layers] = (losses, flat_params(state))
    return references[config.model.scan_layers]

  for name, (strategy, partitions, count) in MESHES.items():
    config = config_for(demo_dir, **{'partitioning.strategy': strategy,
                                     'partitioning.num_partitions': partitions,
                                     'partitioning.partition_states': 'states' in name})
    state, losses, activations, found = run(config, devices[:count], batch,
                                            count_collectives=name in COUNTED)
    out['activations'][name] = activations
    if found:
      out['collectives'][name] = found
    params = flat_params(state)
    if name == 'one_device':
      references[config.model.scan_layers] = (losses, params)
    out['equivalence'][name] = differences(losses, params, *reference(config))
    mlp = ('image', 'encoder', 'blocks', 'mlp', 'Dense_0', 'kernel')
    query = ('image', 'encoder', 'blocks', 'attention', 'query', 'kernel')
    out['specs'][name] = {'mlp_kernel': spec_of(state, *mlp),
                          'query_kernel': spec_of(state, *query),
                          'opt_mu_mlp_kernel': optimizer_moment_spec(state)}
    if name == 'dp_tp':
      tp_state, tp_config = state, config
  # Micro-batches with the optimiser state split: their gradients summed, then scattered.
  config = config_for(demo_dir, **{'partitioning.partition_states': True,
                                   'grad_accum_steps': 4})
  state, losses, _, _ = run(config, devices[:2], batch)
  out['equivalence']['dp_states_accumulate_4'] = differences(losses, flat_params(state),
                                                             *reference(config))

  # A checkpoint written on the 4x2 mesh restores on 1 device and on a 2x4 mesh.
  with tempfile.TemporaryDirectory() as tmp:
    manager = checkpoints.checkpoint_manager(tmp, tp_config)
    checkpoints.save_checkpoint(manager, tp_state)
    manager.wait_until_finished()
    saved = flat_params(tp_state)
    out['restore'] = {}
    for name, (partitions, count) in {'one_device': (1, 1), 'mesh_2x4': (4, 8)}.items():
      config = config_for(demo_dir, **{'partitioning.num_partitions': partitions})
      mesh = partitioning.make_mesh(config, devices[:count])
      model = clip.from_config(config)
      fresh = state_lib.create_train_state(config, model, jax.random.PRNGKey(7), mesh)
      restored = checkpoints.restore_checkpoint(manager, fresh, manager.latest_step())
      params = flat_params(restored)
      out['restore'][name] = {
          'step': int(restored.step), 'mesh': dict(mesh.shape),
          'max_param_diff': max(float(np.max(np.abs(params[k] - saved[k]))) for k in saved),
          'mlp_kernel_spec': spec_of(restored, 'image', 'encoder', 'blocks', 'mlp',
                                     'Dense_0', 'kernel')}

  # Memory levers train as dp on 8 devices does: remat policies, bfloat16, exact gradient
  # accumulation, chunked loss.
  out['levers'] = {}
  dp_state, dp_losses, _, _ = run(config_for(demo_dir), devices, batch, steps=3)
  dp_params = flat_params(dp_state)
  for name, overrides in {
      'remat_minimal': {'model.model_img.transformer.remat_policy': 'minimal',
                        'model.model_txt.transformer.remat_policy': 'minimal'},
      'remat_full': {'model.model_img.transformer.remat_policy': 'full',
                     'model.model_txt.transformer.remat_policy': 'full'},
      'bfloat16': {'model.dtype': 'bfloat16'},
      'accumulate_4': {'grad_accum_steps': 4},
      'loss_chunk_2': {'model.clr.loss_chunk': 2},
  }.items():
    # 4 micro-batches of 2 divide over a data axis of 2, not 8.
    count = 2 if name == 'accumulate_4' else 8
    state, losses, _, _ = run(config_for(demo_dir, **overrides), devices[:count], batch, steps=3)
    out['levers'][name] = differences(losses, flat_params(state), dp_losses, dp_params)

  # The sigmoid loss, its blocks passed round the data axis, trains as on one device.
  out['sigmoid'], one_device = {}, {}
  views = 'model.model_img.masking.num_views'
  for name, count, overrides in (('dp', 8, {}), ('dp_tp', 8, {'partitioning.num_partitions': 2}),
                                 ('accumulate_4', 2, {'grad_accum_steps': 4}),
                                 ('two_views', 8, {views: 2})):
    sigmoid = {'model.loss': 'sigmoid', views: overrides.get(views, 1)}
    if sigmoid[views] not in one_device:
      state, losses, _, _ = run(config_for(demo_dir, **sigmoid), devices[:1], batch, steps=3)
      one_device[sigmoid[views]] = (losses, flat_params(state))
    state, losses, _, _ = run(config_for(demo_dir, **{**sigmoid, **overrides}), devices[:count],
                              batch, steps=3)
    out['sigmoid'][name] = differences(losses, flat_params(state), *one_device[sigmoid[views]])
  print(json.dumps(out))


if __name__ == '__main__':
  main(__import__('pathlib').Path(sys.argv[1]))
