"""The device mesh and how arrays are placed on it.

Axes: `data` (the batch is split over it) and `model` (`partitioning.num_partitions` devices).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  model = config.partitioning.num_partitions
  if model < 1 or len(devices) % model:
    raise ValueError(f'config.partitioning.num_partitions={model} does not divide the '
                     f'{len(devices)} devices')
  data = len(devices) // model
  if config.batch_size % data:
    raise ValueError(f'config.batch_size={config.batch_size} does not divide over the '
                     f'{data} devices of the data axis ({len(devices)} devices / '
                     f'num_partitions={model})')
  return Mesh(np.asarray(devices).reshape(data, model), ('data', 'model'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


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
