"""Where a run goes on from, and what a checkpoint carries so that it goes on exactly.

A run resumes from its workdir's newest checkpoint (or `resume_step`'s), else from another
run's (`resume_dir`), else starts anew (from `pretrain_dir`'s weights when given). Each
checkpoint carries a `run_state`: every host's position in its input stream, the calibrated
cluster threshold, the metrics of the steps since the last log row and the config it was
trained with, against which a resume's config is compared.
"""

import dataclasses
import json
import os
import time
from typing import Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from configs import default
from trainer import checkpoints
from trainer import pretrained
from trainer import saved_config
from trainer.state import TrainState
from trainer import workdir as workdir_lib

# Fields that define what a run trains: a resume may change them only when the user says so.
TRAINED = ('model.', 'aug.', 'batch_size', 'image_size', 'laion_path', 'samples_per_epoch',
           'seed_jax', 'seed_tf', 'shuffle_buffer', 'num_parallel_reads')
# What gives evaluated numbers: eval_only compares these with the checkpoint's config.
EVALUATED = ('model.', 'image_size', 'aug.eval_pad', 'aug.pixel_mean', 'aug.pixel_std',
             'aug.txt.')
# Set by the run itself (the calibrated cluster threshold), or how to resume, not a choice.
NOT_COMPARED = ('model.model_img.masking.threshold', 'resume_step', 'resume_dir',
                'pretrain_dir', 'accept_config_changes')


class ConfigChanged(ValueError):
  """A resume would change what the run trains; the message lists the changes."""


@dataclasses.dataclass
class Plan:
  """Where the run goes on from."""
  manager: ocp.CheckpointManager  # the workdir's own checkpoints, which the run writes
  source: ocp.CheckpointManager  # where it resumes from: `manager`, or resume_dir's
  step: Optional[int] = None  # the step it resumes at; None: a new run
  run_state: dict = dataclasses.field(default_factory=dict)
  # The resume_step this run went back to (carried by its checkpoints, so that the same
  # command line started again goes on from them rather than back again).
  rolled_back_to: Optional[int] = None

  @property
  def resumes(self) -> bool:
    return self.step is not None

  def carry(self, config, policy, position: int, pending_rows) -> dict:
    """The run_state of a checkpoint this run saves (run_state below)."""
    return run_state(config, policy, position, pending_rows, self.rolled_back_to)


def plan_resume(config, workdir: workdir_lib.Workdir) -> Plan:
  """Which checkpoint the run resumes from, with its run_state; refuses a resume whose
  config changes what is trained (ConfigChanged) and logs the other changes."""
  foreign = config.resume_dir and pretrained.foreign_format(config.resume_dir)
  if foreign:
    raise ValueError(f'config.resume_dir={config.resume_dir!r} is {foreign} checkpoint, '
                     'whose optimiser state does not map onto this one; start from its '
                     'weights with config.pretrain_dir instead')
  checkpoints.check_writable(workdir.checkpoints)
  manager = checkpoints.checkpoint_manager(workdir.checkpoints, config)
  source = manager
  if config.resume_dir and manager.latest_step() is None:
    source = other_run(config.resume_dir)
  if source.latest_step() is None:
    if config.pretrain_dir:
      pretrained.check_pretrained(config.pretrain_dir, config)
    return Plan(manager, source)
  if (source is manager and not config.eval_only
      and _went_on_after_going_back(source, config.resume_step)):
    step = source.latest_step()  # the same command line, started again
    logging.warning('config.resume_step=%d was applied before and the run went on to step %d: '
                    'it resumes there', config.resume_step, step)
  else:
    step = step_to_resume(source, config.resume_step)
  carried = checkpoints.restore_run_state(source, step) or {}
  plan = Plan(manager, source, step, carried, carried.get('rolled_back_to'))
  if config.eval_only and source is not manager:  # its results go to this workdir alone
    return plan
  # The config the checkpoint was trained with; older checkpoints have config.json beside.
  trained_with = carried.get('config') or saved_config.read(
      workdir_lib.run_of(str(source.directory)).config_json)
  if config.eval_only:
    check_evaluated_as_trained(config, source, step, trained_with)
  else:
    record_config_changes(config, workdir, step, trained_with)
  return plan


def restore(plan: Plan, state: TrainState, config) -> Tuple[TrainState, Plan]:
  """Restores `state` from the planned checkpoint: (state, the plan with the run_state as
  restored). Resumed at an earlier step of its own (resume_step), the run moves its later
  checkpoints aside once that step is restored."""
  logging.info('Resuming from %s at step %d', plan.source.directory, plan.step)
  if config.pretrain_dir:
    logging.warning('config.pretrain_dir=%s is not loaded: the run resumes from its own '
                    'checkpoint (pretrain_dir only starts a new run)', config.pretrain_dir)
  state, carried = checkpoints.restore_or_explain(plan.source, state, plan.step)
  restored = dataclasses.replace(plan, run_state=carried or {})
  if plan.source is plan.manager and not config.eval_only:
    if plan.step != plan.manager.latest_step():  # config.resume_step, back from the newest
      restored = dataclasses.replace(restored, rolled_back_to=plan.step)
    moved = checkpoints.set_aside_later(str(plan.manager.directory), plan.step)
    if moved:
      logging.warning('config.resume_step=%d: the later checkpoints were moved to %s',
                      plan.step, moved)
      manager = checkpoints.checkpoint_manager(str(plan.manager.directory), config)
      restored = dataclasses.replace(restored, manager=manager, source=manager)
  return state, restored


def _went_on_after_going_back(source: ocp.CheckpointManager, resume_step: int) -> bool:
  """Whether the newest checkpoint was written by a run that went back to `resume_step`
  and on from there."""
  newest = source.latest_step()
  if resume_step <= 0 or newest == resume_step:
    return False
  return (checkpoints.restore_run_state(source, newest) or {}).get(
      'rolled_back_to') == resume_step


def step_to_resume(manager: ocp.CheckpointManager, resume_step: int) -> int:
  """The newest step, or `resume_step` (> 0). Nothing is deleted here: restore moves the
  later steps out of the way once this one is restored."""
  steps = sorted(manager.all_steps())
  if resume_step <= 0:
    return steps[-1]
  if resume_step not in steps:
    raise checkpoints.CheckpointError(f'config.resume_step={resume_step}: no such checkpoint '
                                      f'in {manager.directory}; it holds steps {steps}')
  return resume_step


def other_run(path: str) -> ocp.CheckpointManager:
  """The checkpoints of another run (config.resume_dir: its workdir or checkpoints/ folder),
  read only: nothing is created or deleted there."""
  directory = workdir_lib.checkpoints_in(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'config.resume_dir={path!r}: no such directory')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True))
  if manager.latest_step() is None:
    raise FileNotFoundError(f'config.resume_dir={path!r} holds no checkpoint (expected a '
                            'run\'s workdir or its checkpoints/ folder)')
  return manager


# --- What a checkpoint carries ---------------------------------------------------------------

def run_state(config, policy, position: int, pending_rows, rolled_back_to=None) -> dict:
  """The run_state saved with a checkpoint (a collective: every host's input position)."""
  positions = multihost_utils.process_allgather(np.int64(position))
  return {
      'rolled_back_to': rolled_back_to,
      'input_positions': [int(p) for p in np.ravel(positions)],
      'cluster_threshold': (config.model.model_img.masking.threshold
                            if policy.name == 'cluster' else None),
      # The metrics of the steps since the last log row: a resumed run writes the same rows
      # as an uninterrupted one.
      'pending_metrics': pending_rows,
      'config': saved_config.as_json(config)}


def input_position(carried: dict) -> int:
  """Where this host's input stream resumes: its saved position when the host count is the
  one the checkpoint was written with; else the start of the stream (a new host count
  splits the files another way, so no saved position applies)."""
  positions = (carried or {}).get('input_positions')
  if not positions:
    return 0
  if len(positions) != jax.process_count():
    logging.warning('The checkpoint was written by %d hosts and %d run now: the input '
                    'streams restart (the data order differs from an uninterrupted run)',
                    len(positions), jax.process_count())
    return 0
  return positions[jax.process_index()]


# --- Config differences --------------------------------------------------------------------

def changes_since(previous: dict, config) -> dict:
  """{field: [value then, value now]} for the fields that differ. A field added to the
  project after the saved config was written is no change while it keeps its default, which
  is what the run trained with."""
  flat = saved_config.flat
  before, now = flat(previous), flat(saved_config.as_json(config))
  defaults = flat(saved_config.as_json(default.get_config()))
  return {k: [before.get(k), now.get(k)] for k in sorted(before.keys() | now.keys())
          if before.get(k) != now.get(k) and not k.startswith(NOT_COMPARED) and
          not (k not in before and k in defaults and now.get(k) == defaults[k])}


def check_resume(config, saved) -> dict:
  """The changes since `saved` (the config the resumed checkpoint was trained with, a dict;
  None: unknown); ConfigChanged when some change what is trained and
  config.accept_config_changes is off."""
  if saved is None:
    return {}
  changes = changes_since(saved, config)
  trained = {k: v for k, v in changes.items() if k.startswith(TRAINED)}
  if trained and not config.accept_config_changes:
    listed = '; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in trained.items())
    raise ConfigChanged(
        f'the checkpoints in this workdir were trained with another config ({listed}); '
        'start a new run in another --workdir, or resume with these changes by adding '
        '--config.accept_config_changes=True')
  return changes


def check_evaluated_as_trained(config, source, step: int, saved):
  """eval_only of a run's own checkpoint: refuses (ConfigChanged) a config whose model,
  image size, pixel statistics or tokens differ from `saved`, the config the checkpoint was
  trained with (None: unknown), since its rows would go into that run's metrics as if they
  were its own."""
  run = workdir_lib.run_of(str(source.directory))
  if saved is None or config.accept_config_changes:
    return
  changed = {k: v for k, v in changes_since(saved, config).items() if k.startswith(EVALUATED)}
  if changed:
    listed = '; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())
    raise ConfigChanged(
        f'eval_only: checkpoint {source.directory}/{step} was trained with another config '
        f'({listed}), and these results would go into its run\'s metrics; evaluate it in '
        f'another --workdir with --config.resume_dir={run.root}, or add '
        '--config.accept_config_changes=True')


def record_config_changes(config, workdir: workdir_lib.Workdir, step: int, saved):
  """Refuses (ConfigChanged) or logs and records in WORKDIR/config_changes.jsonl how the
  config differs from `saved`, the one the resumed checkpoint was trained with (None:
  unknown)."""
  changes = check_resume(config, saved)
  if not changes or jax.process_index() > 0:
    return
  logging.warning('Resuming at step %d with config changes: %s', step, '; '.join(
      f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items()))
  with open(workdir.config_changes, 'a') as f:
    f.write(json.dumps({'step': step, 'time': time.strftime('%Y-%m-%d %H:%M:%S'),
                        'changes': changes}) + '\n')
