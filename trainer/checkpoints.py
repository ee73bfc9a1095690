"""Checkpoints: orbax items per part of the train state, saved, restored and kept.

A checkpoint is WORKDIR/checkpoints/STEP/ with one item per part of the train state
(`params`, `opt_state`, `ema_params`) and `run_state`, a JSON object of what else a resumed
run needs to go on exactly (resume.py writes and reads it).
"""

import os
import re
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from trainer import console
from trainer import state as state_lib
from trainer.state import TrainState
from trainer import workdir as workdir_lib


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


class NonFiniteCheckpoint(CheckpointError):
  """A checkpoint whose weights are not finite: never evaluated or trained from."""


class SaveFailed(CheckpointError):
  """Writing a checkpoint failed (disk full, no permission); the run stops at once."""


def first_line(error: Exception, limit: int = 300) -> str:
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
             first_line(e))
    intact = _finished_steps(directory)
    resume = (f'step {intact[-1]} is intact: fix the cause (disk space, permissions) and run '
              'the same command to resume from it' if intact else
              'no checkpoint was written yet: fix the cause and start again')
    raise SaveFailed(f'saving a checkpoint to {directory} failed ({type(e).__name__}: '
                     f'{cause}); the partial save was removed; {resume}') from e


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


def restore_or_explain(manager: ocp.CheckpointManager, state: TrainState, step: int):
  """(restored state, run_state), or a CheckpointError naming the damaged checkpoint and how
  to resume from the one before it."""
  try:
    return restore_checkpoint(manager, state, step), restore_run_state(manager, step)
  except Exception as e:  # orbax and tensorstore raise many kinds for a damaged checkpoint
    cause = first_line(e)
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
  spoilt = [n for name in items for n in state_lib.non_finite_names(restored[name], f'{name}/')]
  if spoilt:
    raise NonFiniteCheckpoint(f'holds NaN or infinite values in {len(spoilt)} tensors, '
                              f'{spoilt[0]} first')
  return state.replace(step=jax.device_put(np.int32(step), state.step.sharding),
                       **{name: restored[name] for name in items})


def latest_step_dir(path: str) -> str:
  """`path` may be a run's workdir, its checkpoints/ folder, or one step's folder."""
  if os.path.isdir(os.path.join(path, 'params')):
    return os.path.abspath(path)
  path = workdir_lib.checkpoints_in(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path!r}: no such checkpoint directory')
  step = ocp.CheckpointManager(path).latest_step()
  if step is None:
    raise FileNotFoundError(f'{path!r} holds no checkpoint')
  return os.path.join(path, str(step))




class Checkpointer:
  """The run's own checkpoints as its loop writes them: asynchronous saves (orbax), each
  failure turned into SaveFailed, and the step of the last one written."""

  def __init__(self, manager: ocp.CheckpointManager, flush_metrics=lambda: None):
    """`flush_metrics` writes out the metrics held back, before each save: what a run
    resumed from a checkpoint does not write again is on disk when the checkpoint is."""
    self.manager = manager
    self.last_saved = manager.latest_step()
    self._flush_metrics = flush_metrics

  @property
  def directory(self) -> str:
    return str(self.manager.directory)

  def save(self, state: TrainState, run_state: dict):
    """Starts saving `state` at its step; training waits only for the copy to the host."""
    step = int(state.step)
    self._flush_metrics()
    started = time.time()
    saving(self.manager, save_checkpoint, self.manager, state, run_state)
    console.detail('Checkpoint %d: training waited %.2f s (the write goes on in the '
                   'background)', step, time.time() - started)
    self.last_saved = step

  def check_for_errors(self):
    """Raises SaveFailed as soon as a save under way has failed."""
    saving(self.manager, self.manager.check_for_errors)

  def wait(self):
    """Waits for the saves under way (SaveFailed if one fails)."""
    saving(self.manager, self.manager.wait_until_finished)

  def last_good(self) -> str:
    """Where a run stopped now would resume from, in words."""
    return (f'the last good checkpoint is step {self.last_saved} in {self.directory}'
            if self.last_saved is not None else 'no checkpoint was written')

  def finish_after_error(self):
    """As a run stops on an error: finishes the saves under way (removing one that fails
    too), staying quiet, since the error that stopped the run is the one to tell."""
    try:
      self.wait()
    except Exception:  # pylint: disable=broad-except
      pass
