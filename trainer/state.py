"""The train state (with the EMA teacher) and its construction, placed on the mesh."""

from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from trainer.objective import Objective
from trainer import optimizer
from trainer import partitioning


class TrainState(train_state.TrainState):
  # EMA copy of the image tower (and A-CLIP's projector): the attentive policy's teacher.
  ema_params: Any = None


def teacher_part(params):
  """The parameters the EMA teacher tracks."""
  return {k: v for k, v in params.items() if k in ('image', 'projector')}


def dummy_inputs(config):
  size = config.image_size
  return (jnp.zeros((1, size, size, 3), jnp.float32),
          jnp.zeros((1, config.aug.txt.max_len), jnp.int32))


def _boxed_params(config, model):
  return jax.eval_shape(lambda rng: model.init(rng, *dummy_inputs(config)),
                        jax.random.PRNGKey(0))['params']


def _weights_and_moments(config, boxed, mesh):
  specs = nn.get_partition_spec(boxed)
  params = partitioning.param_shardings(specs, mesh, partitioning.logical_rules(config))
  moments = params
  if config.partitioning.partition_states:
    moments = partitioning.param_shardings(specs, mesh, partitioning.optimizer_rules(config))
  return params, moments


def weight_and_moment_shardings(config, model, mesh):
  """NamedShardings of the parameters and of each parameter's optimiser moments, from the
  parameters' logical axis names. With partitioning.partition_states the moments follow
  the FSDP rules (split over `data`) whatever the weights do."""
  return _weights_and_moments(config, _boxed_params(config, model), mesh)


def state_shardings(config, model, mesh, objective: Objective, tx):
  """NamedShardings of every TrainState leaf (weight_and_moment_shardings')."""
  boxed = _boxed_params(config, model)
  params, moments = _weights_and_moments(config, boxed, mesh)
  repl = partitioning.replicated(mesh)
  opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding,
                                    jax.eval_shape(tx.init, nn.unbox(boxed)), moments,
                                    transform_non_params=lambda _: repl)
  return TrainState(step=repl, apply_fn=model.apply, params=params, tx=tx,
                    opt_state=opt_state,
                    ema_params=teacher_part(params) if objective.use_teacher else None)


def _initial_state(config, model, objective: Objective, tx):
  """rng -> a new TrainState (unplaced)."""
  def init(rng):
    params = nn.unbox(model.init(rng, *dummy_inputs(config))['params'])
    ema = jax.tree.map(jnp.copy, teacher_part(params)) if objective.use_teacher else None
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, ema_params=ema)
  return init


def create_train_state(config, model, rng, mesh,
                       objective: Objective = Objective()) -> TrainState:
  """A new state, each array already placed on the mesh as the sharding rules say."""
  tx = optimizer.make_optimizer(config)
  shardings = state_shardings(config, model, mesh, objective, tx)
  # Plain jit: out_shardings place the parameters, and init's dummy one-example forward
  # pass has no activations worth placing (one example cannot be split over `data`).
  return jax.jit(_initial_state(config, model, objective, tx), out_shardings=shardings)(rng)


def abstract_train_state(config, model, mesh, objective: Objective = Objective()) -> TrainState:
  """create_train_state's result as shapes, dtypes and shardings alone (nothing is
  allocated): what a step is compiled for on devices that are not there."""
  tx = optimizer.make_optimizer(config)
  shapes = jax.eval_shape(_initial_state(config, model, objective, tx), jax.random.PRNGKey(0))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      state_shardings(config, model, mesh, objective, tx))


def with_params(state: TrainState, params, objective: Objective) -> TrainState:
  """`state` with new weights (pretrained ones), the EMA teacher starting from them."""
  return state.replace(params=params, ema_params=(
      jax.tree.map(jnp.copy, teacher_part(params)) if objective.use_teacher else None))


def shardings_of(state: TrainState) -> TrainState:
  return jax.tree.map(lambda x: x.sharding, state)


def _finite_flags(tree):
  """Per leaf: whether it holds no NaN or infinity (leaves that are not floats do not)."""
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(
      x.dtype, jnp.floating) else jnp.bool_(True), tree)


_leaves_finite = jax.jit(_finite_flags)
# One flag for the whole tree, reduced on the device: the check before every save.
_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(jax.tree.leaves(_finite_flags(tree)))))


def non_finite_names(tree, prefix: str = ''):
  """The '/'-joined names of the tensors of `tree` holding a NaN or an infinity."""
  flags = jax.device_get(_leaves_finite(tree))
  return [prefix + '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
          for path, ok in jax.tree_util.tree_leaves_with_path(flags) if not ok]


def is_finite(state: TrainState) -> bool:
  """Whether every float in the parameters and the optimiser state is finite: a checkpoint
  is never written from a state that a non-finite learning rate or update has spoilt."""
  return bool(_all_finite((state.params, state.opt_state)))
