"""A run as a recipe: check the config and the data, build the model and its state, plan the
resume, restore, then train, evaluating and saving as the cadence says (or only evaluate).

The parts are in trainer/, one module per subject; the evaluations in evaluators/, the data
in input_pipeline/, the towers in models/ and the masking policies in masking/.
"""

import dataclasses
import itertools
import time
from typing import Any, Dict

from absl import logging
from clu import periodic_actions
import jax

import evaluators
from input_pipeline import feeder as feeder_lib
from input_pipeline import tokenizer as tokenizer_lib
from input_pipeline import training_pairs
import masking
from masking import text as text_lib
from models import clip
from trainer.cadence import Cadence
from trainer import checkpoints
from trainer import checks
from trainer import cluster_calibration
from trainer import console
from trainer import fit
from trainer.evaluations import Evaluations
from trainer.log_window import LogWindow
from trainer import mask_pictures
from trainer import metric_writers
from trainer.objective import objective_of
from trainer import optimizer
from trainer import partitioning
from trainer import preemption
from trainer import pretrained
from trainer import resume
from trainer import saved_config
from trainer import state as state_lib
from trainer import step as step_lib
from trainer import text_counts
from trainer import workdir as workdir_lib

# The TensorBoard image of the masks on training examples.
PICTURES = 'masked_examples'


class Interrupted(Exception):
  """A second Ctrl-C stopped training at once; the message says what was saved."""


class NonFiniteLossError(FloatingPointError):
  """Raised when training produced NaN or infinite values; nothing was saved after them."""


@dataclasses.dataclass(frozen=True)
class Parts:
  """What a run builds once from its config."""
  mesh: Any
  model: clip.CLIP
  tokenizer: Any
  objective: Any
  init_rng: Any
  train_rng: Any
  eval_rng: Any


def check_config(config):
  """Every start-up check of a config, each naming the field: the trainer's and the
  evaluations'."""
  checks.check(config)
  evaluators.check(config)


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs training (or `eval_only`); returns the last metrics written."""
  check_config(config)
  shards = None
  if not config.eval_only:  # the training data is checked before anything is written
    shards = training_pairs.list_shards(config.laion_path)
    training_pairs.check_readable(config, shards, jax.process_index(), jax.process_count())
  paths = workdir_lib.Workdir(workdir)
  with workdir_lib.held(paths):
    console.log_to(paths, jax.process_index())
    return _run(config, paths, shards)


def _run(config, workdir: workdir_lib.Workdir, shards) -> Dict[str, Any]:
  mesh = partitioning.make_mesh(config)
  partitioning.check_divisibility(config, mesh)
  _log_devices(mesh, workdir)
  policy = masking.get_policy(config, train=True)
  parts = Parts(mesh, clip.from_config(config), tokenizer_lib.from_config(config),
                objective_of(config, policy),
                *jax.random.split(jax.random.PRNGKey(config.seed_jax), 3))

  plan = resume.plan_resume(config, workdir)
  if config.eval_only:  # before anything large is built
    _check_something_to_evaluate(config, plan, workdir)
  if plan.resumes:
    policy = cluster_calibration.from_checkpoint(config, policy, plan.run_state)
  built = evaluators.build(config, parts.model, mesh, parts.tokenizer)  # checks their data
  state = state_lib.create_train_state(config, parts.model, parts.init_rng, mesh,
                                       parts.objective)
  _log_model(config, state)
  if plan.resumes:
    state, plan = resume.restore(plan, state, config)
  elif config.pretrain_dir:
    state = pretrained.into_state(config.pretrain_dir, state, parts.objective)
  start_step = int(state.step)
  if config.eval_only and not plan.resumes:  # pretrain_dir's weights, at their own step
    start_step = pretrained.pretrained_step(config.pretrain_dir)

  cadence = Cadence.of_config(config)
  again = ((config.eval_only or start_step >= cadence.total_steps)
           and metric_writers.evaluated_at(workdir, start_step, built))
  if again:
    logging.info('Evaluating step %d again: its results in metrics.jsonl are replaced, its '
                 'TensorBoard events go to %s', start_step, workdir.reevaluated)
  writer = metric_writers.create_writer(workdir, None if config.eval_only else start_step,
                                        again)
  if not config.eval_only:
    saved_config.save(config, workdir)  # once restored: the config the checkpoints go on with
  if isinstance(writer, metric_writers.RunWriter) and not again:
    writer.write_config(start_step, saved_config.as_text(config),
                        saved_config.flat(saved_config.as_json(config)))
  evaluations = Evaluations(built, writer, parts.eval_rng,
                            masked=masking.get_policy(config, train=False).name != 'none')

  if config.eval_only:
    results = evaluations.run(state, start_step)
  elif start_step >= cadence.total_steps:
    logging.info('The run in %s already reached step %d of %d.', workdir.root, start_step,
                 cadence.total_steps)
    results = evaluations.run(state, start_step) if config.eval_at_end else {}
  else:
    return _train(config, workdir, shards, parts, policy, state, plan, evaluations, cadence)
  evaluations.log_results()
  return results


def _train(config, workdir, shards, parts: Parts, policy, state, plan: resume.Plan,
           evaluations: Evaluations, cadence: Cadence) -> Dict[str, Any]:
  """The training loop, from the state's step to the cadence's last; returns the last
  metrics written."""
  start_step, writer = int(state.step), evaluations.writer
  position = resume.input_position(plan.run_state)
  first_batch, batches = _training_batches(config, parts, shards, position)
  if cluster_calibration.needed(config, policy, plan.run_state):
    policy, evaluations = _calibrate(config, workdir, parts, first_batch, evaluations)
  # On their own thread: a notice is answered even while the input is stalled.
  feeder = feeder_lib.Feeder(itertools.chain([first_batch], batches))
  # Shown masked in TensorBoard every vis_every_epochs.
  examples = mask_pictures.training_examples(first_batch, workdir, resumed=plan.resumes)
  text_reduction = _text_reduction(config, parts, shards, workdir)
  step_fn = step_lib.jit_train_step(config, parts.model, policy, parts.objective, state,
                                    parts.mesh, text_reduction=text_reduction)
  logging.info('Training steps %d..%d, batch %d, %s, %s; compiling the first step...',
               start_step, cadence.total_steps, config.batch_size, masking.describe(policy),
               text_lib.describe(text_reduction))
  _log_text_examples(text_reduction, parts, first_batch)
  progress = periodic_actions.ReportProgress(num_train_steps=cadence.total_steps,
                                             writer=writer, every_steps=config.log_every_steps,
                                             every_secs=None)
  window = LogWindow(config.batch_size, cadence.total_steps,
                     plan.run_state.get('pending_metrics', []))
  checkpointer = checkpoints.Checkpointer(plan.manager, writer.flush)
  results = {}
  if plan.resumes and plan.source is plan.manager:  # stopped between a save and its evaluations
    results.update(evaluations.run(state, start_step,
                                   evaluations.unwritten(start_step, cadence, workdir)))
    if cadence.pictures_due(start_step) and not metric_writers.written_at_start(
        writer, PICTURES):
      _draw_pictures(writer, parts, policy, state, examples, start_step)
  started_at, step = time.time(), start_step
  # Compiled now, so that a step too large for the devices is refused before it runs.
  step_fn = fit.checked_step(config, step_fn, state, fit.batch_shapes(parts.mesh, first_batch),
                             jax.ShapeDtypeStruct(parts.train_rng.shape, parts.train_rng.dtype),
                             parts.mesh)
  with preemption.Notice() as notice:
    try:
      for step in range(start_step + 1, cadence.total_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          local_batch = _next_batch(feeder, notice, window)
          if local_batch is None:  # a notice while the input is stalled
            _stop_for_notice(notice, state, window, checkpointer, progress,
                             plan.carry(config, policy, position, window.host_rows()))
          position = int(local_batch.pop('position')[-1])
          state, metrics = step_fn(state, partitioning.global_batch(parts.mesh, local_batch),
                                   parts.train_rng)
        window.add(metrics)
        checkpointer.check_for_errors()  # a failed save stops the run
        if step == start_step + 1:
          window.compiled(metrics, since=started_at)
        else:
          window.stepped()
        progress(step)
        if cadence.log_due(step):
          _stop_unless_finite(window, checkpointer, step)
          results.update(window.close(step, writer))
        if cadence.checkpoint_due(step):
          _save(state, window, checkpointer, progress,
                plan.carry(config, policy, position, window.host_rows()))
        if notice.reached(step):
          _stop_for_notice(notice, state, window, checkpointer, progress,
                           plan.carry(config, policy, position, window.host_rows()))
        due = evaluations.due(step, cadence)
        if due:
          with progress.timed('eval'):
            results.update(evaluations.run(state, step, due))
          window.resume_clock()  # evaluation is not training time
        if cadence.pictures_due(step):
          _draw_pictures(writer, parts, policy, state, examples, step)
    except KeyboardInterrupt as e:  # a second Ctrl-C: stop at once, saying where things are
      _finish_after_error(checkpointer, writer)
      intact = checkpointer.manager.latest_step()
      raise Interrupted(
          f'stopped at once by a second Ctrl-C during step {step}; '
          + (f'the last checkpoint is step {intact} in {checkpointer.directory}: the same '
             'command resumes from it' if intact is not None else 'no checkpoint was written')
      ) from e
    except BaseException:
      _finish_after_error(checkpointer, writer)
      raise
    else:
      checkpointer.wait()
      writer.flush()
    finally:
      feeder.close()
  evaluations.log_results()
  logging.info('Done: steps %d..%d in %s, final loss %s. Logs and metrics.jsonl in %s; '
               'checkpoints in %s', start_step, cadence.total_steps,
               console.duration(time.time() - started_at),
               f"{results['train_loss']:.4f}" if 'train_loss' in results else 'n/a',
               workdir.root, checkpointer.directory)
  return results


def _text_reduction(config, parts: Parts, shards, workdir):
  """The run's text reduction; frequency reduction's token counts are the run's own,
  counted on its first start."""
  counts = None
  if config.model.model_txt.masking.policy == 'frequency':
    counts = text_counts.load_or_count(config, parts.tokenizer, shards,
                                       workdir.text_token_counts)
  return text_lib.from_config(config, parts.tokenizer, counts)


def _log_text_examples(reduction, parts: Parts, first_batch):
  """Which tokens of the first batch's first captions the text tower encodes."""
  if reduction.policy == 'none':
    return
  for caption, kept in text_lib.examples(reduction, parts.tokenizer, first_batch['tokens'],
                                         parts.train_rng):
    logging.info('  %r -> %r', caption, kept)


def _training_batches(config, parts: Parts, shards, position: int):
  """This host's batches from `position` on in its stream: (the first, the rest)."""
  batches = training_pairs.train_dataset(
      config, parts.tokenizer, shards, process_index=jax.process_index(),
      process_count=jax.process_count(),
      seed=training_pairs.host_seed(config.seed_tf, jax.process_index()),
      start_position=position).as_numpy_iterator()
  _log_training_data(config, shards)
  return next(batches), batches


def _calibrate(config, workdir, parts: Parts, first_batch, evaluations: Evaluations):
  """The cluster policy calibrated on the first batch, and the evaluations that use it."""
  policy = cluster_calibration.calibrate(config, first_batch['image'], parts.init_rng)
  saved_config.save(config, workdir)  # with the calibrated threshold, for masked evaluation
  if evaluations.masked:  # masked inference uses the calibrated threshold
    evaluations = dataclasses.replace(evaluations, built=evaluators.build(
        config, parts.model, parts.mesh, parts.tokenizer))
  return policy, evaluations


def _next_batch(feeder, notice, window: LogWindow):
  """The next local batch, or None when a notice came while waiting for it."""
  waited_from = time.time()
  # One host alone cannot save (the save is collective): on several, the notice is answered
  # at the next step, when the hosts agree on it.
  batch = feeder.next(lambda: jax.process_count() == 1 and notice.signum is not None)
  window.waited_for_input(time.time() - waited_from)
  return batch


def _stop_unless_finite(window: LogWindow, checkpointer, step: int, state=None):
  """Stops (NonFiniteLossError) before anything computed from non-finite values is saved."""
  if window.all_finite() and (state is None or state_lib.is_finite(state)):
    return
  checkpointer.wait()
  where = checkpointer.last_good()
  logging.error('Training stopped: the loss or the model\'s state became NaN or infinite '
                'by step %d; nothing after it was saved; %s.', step, where)
  raise NonFiniteLossError(f'non-finite loss or state by step {step}; {where}')


def _draw_pictures(writer, parts: Parts, policy, state, examples, step: int):
  writer.write_images(step, {PICTURES: mask_pictures.example_grid(
      parts.model, policy, state, examples, parts.eval_rng, parts.mesh)[None]})


def _save(state, window: LogWindow, checkpointer, progress, carried: dict):
  _stop_unless_finite(window, checkpointer, int(state.step), state)
  with progress.timed('checkpoint'):
    checkpointer.save(state, carried)


def _stop_for_notice(notice, state, window: LogWindow, checkpointer, progress, carried: dict):
  """Saves `state` (unless saved at its step) and stops with Preempted."""
  done = int(state.step)
  if checkpointer.last_saved != done:
    _save(state, window, checkpointer, progress, carried)
  checkpointer.wait()
  stopped = preemption.Preempted(notice.signum, done, checkpointer.directory)
  logging.warning('%s', stopped)
  raise stopped


def _finish_after_error(checkpointer, writer):
  """As a run stops on an error, finishes the saves under way and writes out the TensorBoard
  events held back, as a normal end does; the error that stopped the run is the one to
  tell."""
  checkpointer.finish_after_error()
  try:
    writer.flush()
  except Exception:  # pylint: disable=broad-except
    pass


def _check_something_to_evaluate(config, plan: resume.Plan, workdir):
  if not evaluators.eval_configs(config):
    raise ValueError('config.eval_only=True needs config.eval_dataset or config.evals')
  if not plan.resumes and not config.pretrain_dir:
    raise FileNotFoundError(f'config.eval_only=True: no checkpoint in {workdir.shown()} and no '
                            'config.pretrain_dir to evaluate')


# --- The start-up block on the console --------------------------------------------------------

def _log_devices(mesh, workdir: workdir_lib.Workdir):
  logging.info('Devices: %d %s (%d on this host, process %d of %d), mesh %s',
               jax.device_count(), jax.default_backend(), jax.local_device_count(),
               jax.process_index(), jax.process_count(),
               ' x '.join(f'{axis} {size}' for axis, size in mesh.shape.items()))
  logging.info('Workdir: %s (checkpoints/, metrics.jsonl, TensorBoard events; every log line '
               'in %s)', workdir.shown(), workdir_lib.LOG_FILE)


def _log_model(config, state):
  counts = clip.parameter_counts(state.params)
  logging.info('Model: %s parameters (image tower %s, text tower %s%s)',
               f"{counts['total']:,}", f"{counts['image']:,}", f"{counts['text']:,}",
               f", other {counts['other']:,}" if counts['other'] > 1 else '')
  if not config.eval_only:
    optimizer.log_decay_groups(config, state.params)


def _log_training_data(config, shards):
  own_files = training_pairs.host_files(shards.files, jax.process_index(), jax.process_count())
  logging.info('Training data: %d %s files in %s (this host reads %d), %s pairs per virtual '
               'epoch of %d steps', len(shards.files), shards.format, config.laion_path,
               len(own_files), f'{config.samples_per_epoch:,}',
               optimizer.steps_per_epoch(config))
