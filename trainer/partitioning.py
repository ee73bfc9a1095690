"""The device mesh and how arrays are placed on it.

Axes: `data` (the batch is split over it) and `model` (`partitioning.num_partitions`
devices, tensor parallel over attention heads and MLP width). Parameters carry logical axis
names (models/transformer.py); a short rules list maps them to mesh axes:

  dp    weights and optimiser state replicated over `data`
  fsdp  weights and optimiser state sharded over `data` along their `embed` axis (ZeRO-3)

With num_partitions > 1 either strategy also splits heads and MLP width over `model`.

Activations are named the same way inside the towers (`batch`, `length`, `embed`, `heads`,
`mlp`): `batch` goes to `data` first, so under FSDP an activation's `embed` stays whole
while a weight's is split.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STRATEGIES = ('dp', 'fsdp')


def logical_rules(config):
  """(logical axis, mesh axis) pairs for the configured strategy."""
  strategy = config.partitioning.strategy
  if strategy not in STRATEGIES:
    raise ValueError(f'config.partitioning.strategy={strategy!r}: expected one of '
                     f'{STRATEGIES}')
  rules = [tuple(rule) for rule in config.partitioning.rules]
  if strategy == 'fsdp':
    rules = [('embed', 'data')] + [r for r in rules if r[0] != 'embed']
  if not any(name == 'batch' for name, _ in rules):
    # First, so that no other logical axis of an activation can take `data` from the batch.
    rules = [('batch', 'data')] + rules
  return rules


def rules_within_a_shard(config):
  """logical_rules for code that runs on one device's share of the batch (under a
  shard_map or a vmap over `data`): there the batch is no longer split."""
  return [(name, None if name == 'batch' else axis) for name, axis in logical_rules(config)]


def optimizer_rules(config):
  """Rules for the optimiser state under partitioning.partition_states: FSDP's, so each
  moment is split over `data` along its `embed` axis."""
  return [('embed', 'data')] + [r for r in logical_rules(config) if r[0] != 'embed']


def jit(fn, mesh: Mesh, rules, **jit_kwargs):
  """jax.jit of `fn`, traced where the towers' logical activation constraints apply.

  Outside such a trace nn.with_logical_constraint does nothing, so the same model runs
  unsharded in tests and tools.
  """
  @functools.wraps(fn)
  def under_rules(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args, **kwargs)
  return jax.jit(under_rules, **jit_kwargs)


def make_mesh(config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  model = config.partitioning.num_partitions
  if model < 1 or len(devices) % model:
    raise ValueError(f'config.partitioning.num_partitions={model} does not divide the '
                     f'{len(devices)} devices')
  data = len(devices) // model
  micro_batch = config.batch_size // max(config.grad_accum_steps, 1)
  for field, size in (('batch_size', config.batch_size),
                      ('eval_batch_size', config.eval_batch_size),
                      ('batch_size / grad_accum_steps', micro_batch)):
    if size % data:
      raise ValueError(f'config.{field}={size} does not divide over the {data} devices of '
                       f'the data axis ({len(devices)} devices / num_partitions={model})')
  return Mesh(np.asarray(devices).reshape(data, model), ('data', 'model'))


def check_divisibility(config, mesh: Mesh):
  """Model dimensions split over `model` (and `data` under FSDP) must divide evenly."""
  model_size, data_size = mesh.shape['model'], mesh.shape['data']
  for tower in ('model_img', 'model_txt'):
    cfg = config.model[tower]
    for field, value in (('transformer.num_heads', cfg.transformer.num_heads),
                         ('transformer.mlp_dim', cfg.transformer.mlp_dim)):
      if value % model_size:
        raise ValueError(f'config.model.{tower}.{field}={value} does not divide over the '
                         f'{model_size} devices of the model axis')
    split = [name for name, on in (('fsdp', config.partitioning.strategy == 'fsdp'),
                                   ('partition_states', config.partitioning.partition_states))
             if on]
    if split and cfg.hidden_size % data_size:
      raise ValueError(f'config.model.{tower}.hidden_size={cfg.hidden_size} does not divide '
                       f'over the {data_size} devices of the data axis ({split[0]})')


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def param_shardings(logical_specs, mesh: Mesh, rules):
  """Logical PartitionSpecs (nn.get_partition_spec of boxed params) -> NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def global_batch(mesh: Mesh, local_batch):
  """Host-local numpy arrays -> global jax.Arrays split over the data axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def replicate(mesh: Mesh, tree):
  """Host values identical on every host -> arrays replicated on every device."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda idx: np.asarray(x)[idx]), tree)
