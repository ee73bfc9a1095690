"""Gradients reduce-scattered onto the optimiser state's shards: ZeRO-1's exchange.

Under partitioning.partition_states the weights are whole on every device while AdamW's
moments are split over `data`, so each device needs only its slice of the gradients' sum.
Differentiated as one program, the towers' gradients come out whole, and whether their sum
becomes a reduce-scatter or an all-reduce handing every device all of it is the compiler's
guess. Here each device of the data axis runs the towers on its own examples with its own
copy of the weights (a vmap over the data axis of weights stacked [shards, ...], each copy
on its device), so that its gradient stays its own until `reduce` sums the copies with
jax.lax.psum_scatter, each device receiving the slice its moments hold. The new weights'
all-gather after the update stays.

Compiled for v3-256 (make plan), L/16's recipe (unrolled) needs 14.1 GiB per device either
way, with 146 weight gradients reduce-scattered where the compiler alone made 121 so; for
v5p-512 the TPU compiler turns these reduce-scatters back into one all-reduce and a slice,
as it did the unscattered step's. Only for unrolled layers: under a scan the stacked
copies cost memory (L/16 with full remat, v3-256: 8.0 GiB per device instead of 5.9,
though 1.0 GiB of gradient all-reduces became reduce-scatters; H/14's recipe on v3-512:
17.2 GiB, refused, instead of 9.9), so scanned runs keep the compiler's choice.

The towers' dropout is drawn per device (one key per shard), so a run with dropout draws
other masks than the same run on one device; with dropout at 0, as every recipe has it, the
step is the unscattered step's up to summation order.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models import clip
from trainer import partitioning
from trainer import state as state_lib

AXIS = 'data'


class GradientScatter(NamedTuple):
  mesh: Mesh
  weight_specs: Any  # PartitionSpec of each parameter (its placement, whole over `data`)
  moment_specs: Any  # PartitionSpec of each parameter's moments (split over `data`)
  rules: Any  # the logical axis rules inside a shard, where `batch` is no longer split

  @property
  def shards(self) -> int:
    return self.mesh.shape[AXIS]

  def stack(self, params):
    """One copy of the weights per device of the data axis, [shards, ...], each copy where
    its device already holds the weights."""
    def copies(weight, spec):
      stacked = jnp.broadcast_to(weight, (self.shards, *weight.shape))
      return jax.lax.with_sharding_constraint(
          stacked, NamedSharding(self.mesh, P(AXIS, *spec)))
    return jax.tree.map(copies, params, self.weight_specs)

  def towers(self, towers):
    """`towers(params, images, keep_idx, valid, tokens, dropout_rng)` run by each device on
    its own examples with its own copy of the weights (from `stack`); the embeddings come
    back in the batch's order, as `towers` gives them."""
    shards = self.shards

    def split(x, axis):
      return x.reshape(*x.shape[:axis], shards, x.shape[axis] // shards, *x.shape[axis + 1:])

    def merge(x, axis):
      return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])

    def on_shards(stacked, images, keep_idx, valid, tokens, dropout_rng):
      views = lambda x: None if x is None else split(x, 1)  # [V, B, K]
      in_axes = (0, 0, None if keep_idx is None else 1, None if valid is None else 1, 0, 0)
      with nn.logical_axis_rules(self.rules):
        features, ztxt = jax.vmap(towers, in_axes=in_axes, out_axes=(1, 0),
                                  spmd_axis_name=AXIS)(
            stacked, split(images, 0), views(keep_idx), views(valid), split(tokens, 0),
            jax.random.split(dropout_rng, shards))
      return merge(features, 1), merge(ztxt, 0)

    return on_shards

  def reduce(self, stacked_grads):
    """The sum of every device's gradient, each device receiving the slice of it that its
    moments hold (all of it where they are not split)."""
    def scatter(grad, moment_spec):
      grad = grad[0]
      if AXIS not in tuple(moment_spec):
        return jax.lax.psum(grad, AXIS)
      return jax.lax.psum_scatter(grad, AXIS, scatter_dimension=tuple(moment_spec).index(AXIS),
                                  tiled=True)

    in_specs = jax.tree.map(lambda spec: P(AXIS, *spec), self.weight_specs,
                            is_leaf=lambda x: isinstance(x, P))
    return jax.shard_map(
        lambda grads: jax.tree.map(scatter, grads, self.moment_specs,
                                   is_leaf=lambda x: isinstance(x, P)),
        mesh=self.mesh, in_specs=(in_specs,), out_specs=self.moment_specs)(stacked_grads)


def of_config(config, model, mesh: Mesh):
  """The scatter a run of `config` on `mesh` uses, None where gradients are not scattered:
  they are where the optimiser state is split over a data axis of more than one device
  while the weights are whole (under FSDP the weights are split too) and the layers are
  unrolled."""
  if (not config.partitioning.partition_states or config.partitioning.strategy != 'dp'
      or mesh.shape[AXIS] == 1 or clip.scans_layers(config)):
    return None
  weights, moments = state_lib.weight_and_moment_shardings(config, model, mesh)
  specs = lambda tree: jax.tree.map(lambda s: s.spec, tree)
  return GradientScatter(mesh, specs(weights), specs(moments),
                         partitioning.rules_within_a_shard(config))
