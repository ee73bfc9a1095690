"""Checkpoints: orbax items per part of the train state, resume, and weights-only loading."""

import os
import re
import shutil

from absl import logging
from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from foreign_weights import flip_t5x
from foreign_weights import open_clip_state
from train_step import TrainState


def checkpoint_manager(directory: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints or None,
                                           create=True))


CHECKPOINT_ITEMS = ('params', 'opt_state', 'ema_params')


RUN_STATE = 'run_state'


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, run_state=None):
  """Saves the train state and, when given, `run_state`: what else a resumed run needs to
  go on exactly (a JSON object: every host's input position, a calibrated threshold)."""
  items = {name: ocp.args.StandardSave(getattr(state, name)) for name in CHECKPOINT_ITEMS
           if getattr(state, name) is not None}
  if run_state is not None:
    items[RUN_STATE] = ocp.args.JsonSave(run_state)
  manager.save(int(state.step), args=ocp.args.Composite(**items))


def restore_run_state(manager: ocp.CheckpointManager, step: int):
  """The run_state saved with checkpoint `step`, or None (an older checkpoint has none)."""
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), RUN_STATE)):
    return None
  return manager.restore(step, args=ocp.args.Composite(
      **{RUN_STATE: ocp.args.JsonRestore()}))[RUN_STATE]


class CheckpointError(Exception):
  """A checkpoint that cannot be resumed from; the message says what to do."""


class SaveFailed(CheckpointError):
  """Writing a checkpoint failed (disk full, no permission); the run stops at once."""


def _first_line(error: Exception, limit: int = 300) -> str:
  """The first line of an error from orbax or tensorstore, whose messages run to pages."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def _finished_steps(directory: str):
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def check_writable(directory: str):
  """Fails at start-up, naming the directory, when checkpoints cannot be written there."""
  probe = os.path.join(directory, '.writable')
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise SaveFailed(f'cannot write checkpoints to {directory} ({type(e).__name__}: '
                     f'{e.strerror or e}); give the run a writable --workdir') from e


def saving(manager: ocp.CheckpointManager, call, *args, **kwargs):
  """`call` (a save, or a wait for one), with a failure of any save under way turned into
  SaveFailed: the partial save is removed and the message names the directory, the cause
  and the intact checkpoint to resume from."""
  try:
    return call(*args, **kwargs)
  except Exception as e:  # orbax raises what the file system or tensorstore raised
    directory = str(manager.directory)
    partial = [name for name in os.listdir(directory) if '.orbax-checkpoint-tmp' in name]
    for name in partial:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    os_error = re.search(r'([^:"]+) \[os_error_code=.(\d+).\]', str(e))
    cause = (f'{os_error.group(1).strip()}, errno {os_error.group(2)}' if os_error else
             _first_line(e))
    intact = _finished_steps(directory)
    resume = (f'step {intact[-1]} is intact: fix the cause (disk space, permissions) and run '
              'the same command to resume from it' if intact else
              'no checkpoint was written yet: fix the cause and start again')
    raise SaveFailed(f'saving a checkpoint to {directory} failed ({type(e).__name__}: '
                     f'{cause}); the partial save was removed; {resume}') from e


def step_to_resume(manager: ocp.CheckpointManager, resume_step: int) -> int:
  """The newest step, or `resume_step` (> 0). Nothing is deleted here: set_aside_later
  moves the later steps out of the way once this one is restored."""
  steps = sorted(manager.all_steps())
  if resume_step <= 0:
    return steps[-1]
  if resume_step not in steps:
    raise CheckpointError(f'config.resume_step={resume_step}: no such checkpoint in '
                          f'{manager.directory}; it holds steps {steps}')
  return resume_step


def set_aside_later(directory: str, step: int):
  """Moves the checkpoints after `step` out of `directory` (a run's own checkpoints/, which
  a run resumed at `step` will write again) into DIRECTORY_after_STEP[_N]/; returns where
  they went, or None when there were none."""
  later = [s for s in _finished_steps(directory) if s > step]
  if not later:
    return None
  target = f'{directory.rstrip(os.sep)}_after_{step}'
  suffix = 1
  while os.path.exists(target):
    suffix += 1
    target = f'{directory.rstrip(os.sep)}_after_{step}_{suffix}'
  os.makedirs(target)
  for s in later:
    os.rename(os.path.join(directory, str(s)), os.path.join(target, str(s)))
  return target


def other_run(path: str) -> ocp.CheckpointManager:
  """The checkpoints of another run (config.resume_dir: its workdir or checkpoints/ folder),
  read only: nothing is created or deleted there."""
  directory = os.path.abspath(path)
  if os.path.isdir(os.path.join(directory, 'checkpoints')):
    directory = os.path.join(directory, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'config.resume_dir={path!r}: no such directory')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True))
  if manager.latest_step() is None:
    raise FileNotFoundError(f'config.resume_dir={path!r} holds no checkpoint (expected a '
                            'run\'s workdir or its checkpoints/ folder)')
  return manager


def restore_or_explain(manager: ocp.CheckpointManager, state: TrainState, step: int):
  """(restored state, run_state), or a CheckpointError naming the damaged checkpoint and how
  to resume from the one before it."""
  try:
    return restore_checkpoint(manager, state, step), restore_run_state(manager, step)
  except Exception as e:  # orbax and tensorstore raise many kinds for a damaged checkpoint
    cause = _first_line(e)
    earlier = [s for s in sorted(manager.all_steps()) if s < step]
    advice = (f'resume from step {earlier[-1]} with --config.resume_step={earlier[-1]}'
              if earlier else 'there is no earlier one: move it away to start over')
    if 'shape' in cause:
      advice = ('the model of this config has other shapes than the checkpoint\'s: resume '
                'with the config it was trained with (config.json beside it)')
    raise CheckpointError(f'checkpoint {manager.directory}/{step} cannot be restored '
                          f'({type(e).__name__}: {cause}); {advice}') from e


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState, step: int):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  items = {name: ocp.args.StandardRestore(getattr(abstract, name)) for name in CHECKPOINT_ITEMS
           if getattr(state, name) is not None}
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return state.replace(step=jax.device_put(np.int32(step), state.step.sharding),
                       **{name: restored[name] for name in items})


def latest_step_dir(path: str) -> str:
  """`path` may be a run's workdir, its checkpoints/ folder, or one step's folder."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'params')):
    return path
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path!r}: no such checkpoint directory')
  step = ocp.CheckpointManager(path).latest_step()
  if step is None:
    raise FileNotFoundError(f'{path!r} holds no checkpoint')
  return os.path.join(path, str(step))


def resample_grid(embedding: np.ndarray, new_shape) -> np.ndarray:
  """Bilinearly resizes a [1, gh * gw, D] position embedding onto another square grid; a
  table with a class token's row first ([1, 1 + gh * gw, D], open_clip's) keeps that row."""
  def square(rows):
    side = int(round(np.sqrt(rows)))
    return side if side * side == rows else None

  cls_rows = 0
  if square(embedding.shape[1]) is None or square(new_shape[1]) is None:
    cls_rows = 1
  old_side, new_side = square(embedding.shape[1] - cls_rows), square(new_shape[1] - cls_rows)
  if old_side is None or new_side is None:
    raise ValueError(f'cannot resample position embedding {embedding.shape} -> {new_shape}: '
                     'grids must be square')
  grid = embedding[0, cls_rows:].reshape(old_side, old_side, -1)
  grid = jax.image.resize(grid, (new_side, new_side, grid.shape[-1]), 'bilinear')
  patches = np.asarray(grid).reshape(1, new_side * new_side, -1)
  return np.concatenate([embedding[:, :cls_rows], patches], axis=1).reshape(new_shape)


def foreign_format(path: str):
  """'a FLIP (t5x)' or 'an open_clip' when `path` holds another codebase's weights, else
  None."""
  path = os.path.abspath(path)
  if flip_t5x.find_step_dir(path) is not None:
    return 'a FLIP (t5x)'
  if open_clip_state.find(path) is not None:
    return 'an open_clip'
  return None


def check_pretrained(path: str):
  """Fails at start-up, naming config.pretrain_dir, when `path` holds no weights to load."""
  absolute = os.path.abspath(path)
  if flip_t5x.find_step_dir(absolute) is not None or open_clip_state.find(absolute):
    return
  try:
    latest_step_dir(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.pretrain_dir: {e}; expected a run of this project, a '
                            'FLIP release or an open_clip checkpoint') from e


def pretrained_step(path: str) -> int:
  """The training step of the weights `load_pretrained_params` reads from `path` (0 when the
  format does not say, as open_clip's files)."""
  absolute = os.path.abspath(path)
  step_dir = flip_t5x.find_step_dir(absolute)
  if step_dir is not None:
    return flip_t5x.step_of(step_dir)
  if open_clip_state.find(absolute) is not None:
    return 0
  name = os.path.basename(latest_step_dir(path))
  return int(name) if name.isdigit() else 0


def load_pretrained_params(path: str, params):
  """Weights of another run's checkpoint, without its optimiser state, fitted to `params`.

  `path` holds this project's checkpoints, a FLIP release in t5x's layout
  (foreign_weights/flip_t5x.py) or an open_clip checkpoint: `epoch_K.pt`, a state dict
  (`.pt`, `.bin`, `.pth`, `.safetensors`) or a Hugging Face style folder
  (foreign_weights/open_clip_state.py). Every tensor must find a parameter and every
  parameter a tensor; image position tables are resampled onto another patch grid, and a
  longer text position table keeps its first positions.
  """
  target = traverse_util.flatten_dict(params, sep='/')
  shapes = {name: value.shape for name, value in target.items()}
  absolute = os.path.abspath(path)
  if flip_t5x.find_step_dir(absolute) is not None:
    source = flip_t5x.load(absolute, shapes)
  elif open_clip_state.find(absolute) is not None:
    try:
      source = open_clip_state.to_params(open_clip_state.read_state_dict(absolute), shapes,
                                         path)
    except ValueError as e:
      raise ValueError(f'config.pretrain_dir={path!r}: {e}') from e
  else:
    try:
      step_dir = latest_step_dir(path)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'config.pretrain_dir: {e}') from e
    try:
      restored = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'params'))
    except Exception as e:  # orbax raises what the damaged files make its readers raise
      cause = _first_line(e, 200)
      raise ValueError(f'config.pretrain_dir={path!r}: {step_dir} is not a readable '
                       f'checkpoint ({type(e).__name__}: {cause})') from e
    source = traverse_util.flatten_dict(restored, sep='/')
  if source.keys() != target.keys():
    scanned = lambda keys: any('/blocks/' in k for k in keys)
    hint = (' (one was trained with model.scan_layers and the other without: set it as the '
            'checkpoint was written)' if scanned(source) != scanned(target) else '')
    raise ValueError(
        f'config.pretrain_dir={path!r}: its parameters differ from this model\'s{hint}; '
        f'missing {sorted(target.keys() - source.keys())}, unexpected '
        f'{sorted(source.keys() - target.keys())}')
  fitted = {}
  for name, want in target.items():
    value = np.asarray(source[name])
    if value.shape != want.shape:
      same_width = value.ndim == 3 and value.shape[2:] == want.shape[2:]
      if name == 'text/pos_embedding' and same_width and value.shape[1] > want.shape[1]:
        logging.info('Keeping the first %d of the %d text positions', want.shape[1],
                     value.shape[1])
        value = value[:, :want.shape[1]]
      elif name.startswith('image/') and name.endswith('pos_embedding') and same_width:
        logging.info('Resampling %s from %s to %s', name, value.shape, want.shape)
        value = resample_grid(value, want.shape)
      else:
        raise ValueError(f'config.pretrain_dir={path!r}: parameter {name} has shape '
                         f'{value.shape} in the checkpoint but {want.shape} in this model')
    fitted[name] = jax.device_put(value.astype(want.dtype), want.sharding)
  return traverse_util.unflatten_dict(fitted, sep='/')
