"""The training loop: data, steps, logs, evaluations, checkpoints, and a stop on NaN."""

import itertools
import json
import os
import time
from typing import Any, Dict

from absl import logging
from clu import periodic_actions
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

import atomic_files
import checkpoints
import config_checks
import console
import evaluators
import masking
import metrics_writer
import optimizer
import partitioning
import pictures
import preemption
import train_step
import workdir_lock
from input_pipeline import feeder as feeder_lib
from input_pipeline import laion
from input_pipeline import tokenizer as tokenizer_lib
from models import clip
from models import pixels


# Steps the host may dispatch before the device has finished them: enough to keep the device
# busy (on the CPU, where the host's own threads compute, two cost some throughput and four
# none); more would only lengthen the wait after a preemption notice (every step dispatched
# must finish before the checkpoint) and hold more batches in device memory.
_RUN_AHEAD_STEPS = 4


class Interrupted(Exception):
  """A second Ctrl-C stopped training at once; the message says what was saved."""


class NonFiniteLossError(FloatingPointError):
  """Raised when training produced NaN or infinite values; nothing was saved after them."""


def _summarize(pending):
  """Device metrics of the steps since the last summary -> their means (skips summed)."""
  rows = jax.device_get(pending)
  # In float64, so that a window whose first steps came back from a checkpoint (as Python
  # floats) gives the uninterrupted run's numbers.
  out = {k: float(np.mean(np.asarray([r[k] for r in rows], np.float64))) for k in rows[0]}
  out['skipped_records'] = float(np.sum([r['skipped_records'] for r in rows]))
  return out


def _all_finite(pending) -> bool:
  rows = jax.device_get(pending)
  return all(np.isfinite(r['train_loss']) and np.isfinite(r['grad_norm']) for r in rows)


def _host_rows(pending):
  """The pending metrics as plain floats, for the checkpoint's run state."""
  return [{k: float(v) for k, v in row.items()} for row in jax.device_get(pending)]


@jax.jit
def _state_finite(params, opt_state):
  """Whether every float in the parameters and the optimiser state is finite: a checkpoint
  is never written from a state that a non-finite learning rate or update has spoilt."""
  leaves = [x for x in jax.tree.leaves((params, opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def calibrate_cluster_policy(config, images, rng) -> masking.MaskingPolicy:
  """Sets masking.threshold so that the first batch's mean masked share is the target.

  Every host must mask with the same threshold, so process 0's value is broadcast.
  """
  masking_config = config.model.model_img.masking
  images = pixels.normalize(images, *pixels.of_config(config))
  threshold = masking.calibrate_threshold(
      rng, images, tuple(config.model.model_img.patches.size),
      masking_config.anchor_ratio, masking_config.target_mask_ratio)
  threshold = float(multihost_utils.broadcast_one_to_all(np.float32(threshold)))
  masked = float(masking.cluster_mask(rng, images,
                                      tuple(config.model.model_img.patches.size),
                                      masking_config.anchor_ratio, threshold).mean())
  logging.info('Cluster masking: threshold calibrated from %.4f to %.4f (masked share %.3f, '
               'target %.3f)', masking_config.threshold, threshold, masked,
               masking_config.target_mask_ratio)
  masking_config.threshold = threshold
  return masking.get_policy(config, train=True)


def apply_calibration(config, policy, run_state) -> masking.MaskingPolicy:
  """The cluster threshold a resumed run calibrated before, from its checkpoint, so that
  training, masked evaluation and the config.json tools read all use it."""
  threshold = (run_state or {}).get('cluster_threshold')
  masking_config = config.model.model_img.masking
  if threshold is None or masking_config.policy != 'cluster' or not masking_config.calibrate:
    return policy
  masking_config.threshold = threshold
  logging.info('Cluster masking: the threshold calibrated before, %.4f', threshold)
  return masking.get_policy(config, train=True)


def save_config(config, workdir: str):
  """WORKDIR/config.json: the run's config, for people and tools (tools/glip_table.py)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    atomic_files.write_text(os.path.join(workdir, 'config.json'),
                            config.to_json_best_effort(indent=2, sort_keys=True))


def input_position(run_state) -> int:
  """Where this host's input stream resumes: its saved position when the host count is the
  one the checkpoint was written with; else the start of the stream (a new host count
  splits the files another way, so no saved position applies)."""
  positions = (run_state or {}).get('input_positions')
  if not positions:
    return 0
  if len(positions) != jax.process_count():
    logging.warning('The checkpoint was written by %d hosts and %d run now: the input '
                    'streams restart (the data order differs from an uninterrupted run)',
                    len(positions), jax.process_count())
    return 0
  return positions[jax.process_index()]


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs training (or `eval_only`); returns the last metrics written."""
  config_checks.check(config)
  shards = None
  if not config.eval_only:  # the training data is checked before anything is written
    shards = laion.list_shards(config.laion_path)
    laion.check_readable(config, shards, jax.process_index(), jax.process_count())
  with workdir_lock.held(workdir):
    console.log_to(workdir, jax.process_index())
    return _run(config, workdir, shards)


def _saved_config_of(checkpoint_dir: str) -> str:
  """Where the config of the run that wrote `checkpoint_dir` was saved."""
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  return os.path.join(os.path.dirname(checkpoint_dir) if os.path.basename(checkpoint_dir) ==
                      'checkpoints' else checkpoint_dir, 'config.json')


def record_config_changes(config, workdir: str, resume_from, step: int, saved=None):
  """Refuses (config_checks.ConfigChanged) or logs and records how the config differs from
  the one the resumed checkpoint was trained with: `saved`, the config that checkpoint
  carries, or for older checkpoints the config.json beside them."""
  if saved is None:
    saved = config_checks.read_saved(_saved_config_of(str(resume_from.directory)))
  changes = config_checks.check_resume(config, saved)
  if not changes or jax.process_index() > 0:
    return
  logging.warning('Resuming at step %d with config changes: %s', step, '; '.join(
      f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items()))
  with open(os.path.join(workdir, 'config_changes.jsonl'), 'a') as f:
    f.write(json.dumps({'step': step, 'time': time.strftime('%Y-%m-%d %H:%M:%S'),
                        'changes': changes}) + '\n')


def _run(config, workdir: str, shards) -> Dict[str, Any]:
  mesh = partitioning.make_mesh(config)
  partitioning.check_divisibility(config, mesh)
  logging.info('Devices: %d %s (%d on this host, process %d of %d), mesh %s',
               jax.device_count(), jax.default_backend(), jax.local_device_count(),
               jax.process_index(), jax.process_count(),
               ' x '.join(f'{axis} {size}' for axis, size in mesh.shape.items()))
  logging.info('Workdir: %s (checkpoints/, metrics.jsonl, TensorBoard events; every log line '
               'in %s)', os.path.abspath(workdir) if '://' not in workdir else workdir,
               console.LOG_FILE)
  model = clip.from_config(config)
  tokenizer = tokenizer_lib.from_config(config)
  policy = masking.get_policy(config, train=True)
  rng = jax.random.PRNGKey(config.seed_jax)
  init_rng, train_rng, eval_rng = jax.random.split(rng, 3)

  objective = train_step.objective_of(config, policy)
  foreign = config.resume_dir and checkpoints.foreign_format(config.resume_dir)
  if foreign:
    raise ValueError(f'config.resume_dir={config.resume_dir!r} is {foreign} checkpoint, '
                     'whose optimiser state does not map onto this one; start from its '
                     'weights with config.pretrain_dir instead')
  own_checkpoints = os.path.join(workdir, 'checkpoints')
  checkpoints.check_writable(own_checkpoints)
  manager = checkpoints.checkpoint_manager(own_checkpoints, config)
  resume_from = manager
  if config.resume_dir and manager.latest_step() is None:
    resume_from = checkpoints.other_run(config.resume_dir)
  resume_step, run_state = None, None
  if resume_from.latest_step() is not None:
    resume_step = checkpoints.step_to_resume(resume_from, config.resume_step)
    run_state = checkpoints.restore_run_state(resume_from, resume_step) or {}
    if not config.eval_only:
      record_config_changes(config, workdir, resume_from, resume_step,
                            run_state.get('config'))
    policy = apply_calibration(config, policy, run_state)
  elif config.pretrain_dir:
    checkpoints.check_pretrained(config.pretrain_dir)
  evaluations = evaluators.build(config, model, mesh, tokenizer)  # checks the evaluation data
  state = train_step.create_train_state(config, model, init_rng, mesh, objective)
  counts = clip.parameter_counts(state.params)
  logging.info('Model: %s parameters (image tower %s, text tower %s%s)',
               f"{counts['total']:,}", f"{counts['image']:,}", f"{counts['text']:,}",
               f", other {counts['other']:,}" if counts['other'] > 1 else '')
  if not config.eval_only:
    optimizer.log_decay_groups(config, state.params)
  if resume_step is not None:
    logging.info('Resuming from %s at step %d', resume_from.directory, resume_step)
    if config.pretrain_dir:
      logging.warning('config.pretrain_dir=%s is not loaded: the run resumes from its own '
                      'checkpoint (pretrain_dir only starts a new run)', config.pretrain_dir)
    state, run_state = checkpoints.restore_or_explain(resume_from, state, resume_step)
    run_state = run_state or {}
    if resume_from is manager and not config.eval_only:
      moved = checkpoints.set_aside_later(str(manager.directory), resume_step)
      if moved:
        logging.warning('config.resume_step=%d: the later checkpoints were moved to %s',
                        resume_step, moved)
        manager = checkpoints.checkpoint_manager(own_checkpoints, config)
  elif config.pretrain_dir:
    logging.info('Initialising weights from %s (optimiser state not loaded)',
                 config.pretrain_dir)
    params = checkpoints.load_pretrained_params(config.pretrain_dir, state.params)
    state = state.replace(params=params, ema_params=(
        jax.tree.map(jnp.copy, train_step.teacher_part(params)) if objective.use_teacher else None))
  start_step = int(state.step)
  if config.eval_only and resume_step is None:  # pretrain_dir's weights, at their own step
    start_step = checkpoints.pretrained_step(config.pretrain_dir)
  periods = optimizer.steps_of(config)
  total_steps = periods['total']
  per_epoch = optimizer.steps_per_epoch(config)
  trains = not config.eval_only and start_step < total_steps
  again = not trains and metrics_writer.evaluated_at(workdir, start_step, evaluations)
  if again:
    logging.info('Evaluating step %d again: its results in metrics.jsonl are replaced, its '
                 'TensorBoard events go to %s', start_step,
                 os.path.join(workdir, metrics_writer.REEVALUATED))
  writer = metrics_writer.create_writer(workdir, None if config.eval_only else start_step,
                                        again)
  if not config.eval_only:
    save_config(config, workdir)  # once restored: the config the checkpoints go on with
  if isinstance(writer, metrics_writer.RunWriter) and not again:
    writer.write_config(start_step, config.to_json_best_effort(indent=2, sort_keys=True),
                        config_checks.flat(config_checks.as_json(config)))

  latest_scores: Dict[str, Dict[str, float]] = {}

  def evaluate(step, due=lambda ecfg: True):
    """Runs the evaluations `due` picks; writes `<name>/<metric>` rows; returns them."""
    written = {}
    for name, (ecfg, evaluator) in evaluations.items():
      if not due(ecfg):
        continue
      started = time.time()
      scores = evaluator(state, eval_rng)
      latest_scores[name] = scores
      written.update({f'{name}/{metric}': value for metric, value in scores.items()})
      logging.info('%s (%s) at step %d%s: %s [%.0f s]', name, ecfg.type, step,
                   ' (masked inference)' if policy_at_eval.name != 'none' else '',
                   _format_scores(scores), time.time() - started)
    if written:
      writer.write_scalars(step, written)
      writer.flush()
    return written

  def final_table():
    if latest_scores:
      logging.info('Results:\n%s', '\n'.join(_table(latest_scores)))

  policy_at_eval = masking.get_policy(config, train=False)
  if config.eval_only:
    if not evaluations:
      raise ValueError('config.eval_only=True needs config.eval_dataset or config.evals')
    if resume_from.latest_step() is None and not config.pretrain_dir:
      raise FileNotFoundError(f'config.eval_only=True: no checkpoint in {workdir} and no '
                              'config.pretrain_dir to evaluate')
    results = evaluate(start_step)
    final_table()
    return results
  if start_step >= total_steps:
    logging.info('The run in %s already reached step %d of %d.', workdir, start_step,
                 total_steps)
    results = evaluate(start_step) if config.eval_at_end else {}
    final_table()
    return results

  position = input_position(run_state)
  dataset = laion.train_dataset(
      config, tokenizer, shards, process_index=jax.process_index(),
      process_count=jax.process_count(),
      seed=laion.host_seed(config.seed_tf, jax.process_index()), start_position=position)
  own_files = laion.host_files(shards.files, jax.process_index(), jax.process_count())
  logging.info('Training data: %d %s files in %s (this host reads %d), %s pairs per virtual '
               'epoch of %d steps', len(shards.files), shards.format, config.laion_path,
               len(own_files), f'{config.samples_per_epoch:,}', per_epoch)
  batches = dataset.as_numpy_iterator()
  first_batch = next(batches)
  calibrate = (policy.name == 'cluster' and config.model.model_img.masking.calibrate and
               (run_state or {}).get('cluster_threshold') is None)
  if calibrate:
    policy = calibrate_cluster_policy(config, first_batch['image'], init_rng)
    save_config(config, workdir)  # with the calibrated threshold, for masked evaluation
    if policy_at_eval.name != 'none':  # masked inference uses the calibrated threshold
      evaluations = evaluators.build(config, model, mesh, tokenizer)
  # On their own thread: a notice is answered even while the input is stalled.
  feeder = feeder_lib.Feeder(itertools.chain([first_batch], batches))
  # Shown masked in TensorBoard every vis_every_epochs.
  examples = {k: first_batch[k][:8] for k in ('image', 'views', 'crop_boxes')
              if k in first_batch}
  step_fn = train_step.jit_train_step(config, model, policy, objective, state, mesh)
  logging.info('Training steps %d..%d, batch %d, %s; compiling the first step...',
               start_step, total_steps, config.batch_size, masking.describe(policy))
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps,
                                             every_secs=None)
  pending = list((run_state or {}).get('pending_metrics', []))
  last_saved = manager.latest_step()
  started_at = compile_start = time.time()
  window_start, window_steps, input_wait = time.time(), 0, 0.0
  results: Dict[str, Any] = {}

  def check_finite(step, with_state=False):
    """Stops before anything computed from non-finite values is saved."""
    if _all_finite(pending) and (not with_state or bool(_state_finite(state.params,
                                                                       state.opt_state))):
      return
    manager.wait_until_finished()
    where = (f'the last good checkpoint is step {last_saved} in {manager.directory}'
             if last_saved is not None else 'no checkpoint was written')
    logging.error('Training stopped: the loss or the model\'s state became NaN or infinite '
                  'by step %d; nothing after it was saved; %s.', step, where)
    raise NonFiniteLossError(f'non-finite loss or state by step {step}; {where}')

  def every(n, step):
    return n > 0 and step % n == 0

  def flip_epoch_end(step):
    """Whether FLIP's train.py evaluates after this step: at the end of the first virtual
    epoch and of each epoch whose number vis_every_epochs divides."""
    if not config.eval_every_vis_epochs or step % per_epoch:
      return False
    epoch = step // per_epoch
    return epoch == 1 or (config.vis_every_epochs > 0 and epoch % config.vis_every_epochs == 0)

  def save(step):
    check_finite(step, with_state=True)
    positions = multihost_utils.process_allgather(np.int64(position))
    threshold = (config.model.model_img.masking.threshold if policy.name == 'cluster'
                 else None)
    started = time.time()
    with progress.timed('checkpoint'):
      checkpoints.saving(manager, checkpoints.save_checkpoint, manager, state, {
          'input_positions': [int(p) for p in np.ravel(positions)],
          'cluster_threshold': threshold,
          # The metrics of the steps since the last log row: a resumed run writes the same
          # rows as an uninterrupted one.
          'pending_metrics': _host_rows(pending),
          'config': config_checks.as_json(config)})
    console.detail('Checkpoint %d: training waited %.2f s (the write goes on in the '
                   'background)', step, time.time() - started)
    return step

  def stop_for_notice(done):
    """Saves the state after step `done` (unless saved) and stops with Preempted."""
    nonlocal last_saved
    if last_saved != done:
      last_saved = save(done)
    checkpoints.saving(manager, manager.wait_until_finished)
    stopped = preemption.Preempted(notice.signum, done, manager.directory)
    logging.warning('%s', stopped)
    raise stopped

  def input_wait_stops():
    # One host alone cannot save (the save is collective): on several, the notice is
    # answered at the next step, when the hosts agree on it.
    return jax.process_count() == 1 and notice.signum is not None

  step = start_step
  with preemption.Notice() as notice:
    try:
      for step in range(start_step + 1, total_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          waited_from = time.time()
          local_batch = feeder.next(input_wait_stops)
          input_wait += time.time() - waited_from
          if local_batch is None:  # a notice while the input is stalled
            stop_for_notice(step - 1)
          position = int(local_batch.pop('position')[-1])
          batch = partitioning.global_batch(mesh, local_batch)
          state, metrics = step_fn(state, batch, train_rng)
        pending.append(metrics)
        if len(pending) > _RUN_AHEAD_STEPS:
          jax.block_until_ready(pending[-1 - _RUN_AHEAD_STEPS])
        checkpoints.saving(manager, manager.check_for_errors)  # a failed save stops the run
        if step == start_step + 1:
          # The first step compiles: throughput and input wait count the steps after it.
          jax.block_until_ready(metrics)
          logging.info('First step compiled and ran in %.1f s', time.time() - compile_start)
          window_start, window_steps, input_wait = time.time(), 0, 0.0
        else:
          window_steps += 1
        progress(step)
        is_last = step == total_steps
        if every(config.log_every_steps, step) or is_last:
          check_finite(step)
          summary = _summarize(pending)
          pending.clear()
          elapsed = max(time.time() - window_start, 1e-9)
          speed = ''
          if window_steps:  # else the window held only the compiling first step
            summary['images_per_sec'] = window_steps * config.batch_size / elapsed
            # Time blocked on the next batch: near 0 when the input pipeline keeps up.
            summary['input_wait_fraction'] = min(input_wait / elapsed, 1.0)
            speed = ' | %.0f images/s | input wait %.0f%% | ETA %s' % (
                summary['images_per_sec'], 100 * summary['input_wait_fraction'],
                _format_seconds((total_steps - step) * elapsed / window_steps))
          writer.write_scalars(step, summary)
          logging.info('step %d/%d | loss %.4f%s', step, total_steps, summary['train_loss'],
                       speed)
          results.update(summary)
          window_start, window_steps, input_wait = time.time(), 0, 0.0
        if every(periods['checkpoint'], step) or (is_last and config.save_at_end):
          last_saved = save(step)
        if notice.reached(step):
          stop_for_notice(step)
        due = lambda ecfg: (every(ecfg.every_steps, step) or (is_last and config.eval_at_end)
                            or flip_epoch_end(step))
        if any(due(ecfg) for ecfg, _ in evaluations.values()):
          with progress.timed('eval'):
            results.update(evaluate(step, due))
          window_start, input_wait = time.time(), 0.0  # evaluation is not training time
        if every(periods['pictures'], step) or is_last:
          writer.write_images(step, {'masked_examples': pictures.example_grid(
              model, policy, state, examples, eval_rng, mesh)[None]})
    except KeyboardInterrupt as e:  # a second Ctrl-C: stop at once, saying where things are
      _finish_saves(manager, writer)
      intact = manager.latest_step()
      raise Interrupted(
          f'stopped at once by a second Ctrl-C during step {step}; '
          + (f'the last checkpoint is step {intact} in {manager.directory}: the same command '
             'resumes from it' if intact is not None else 'no checkpoint was written')) from e
    except BaseException:
      _finish_saves(manager, writer)
      raise
    else:
      checkpoints.saving(manager, manager.wait_until_finished)
      writer.flush()
    finally:
      feeder.close()
  final_table()
  logging.info('Done: steps %d..%d in %s, final loss %s. Logs and metrics.jsonl in %s; '
               'checkpoints in %s', start_step, total_steps,
               _format_seconds(time.time() - started_at),
               f"{results['train_loss']:.4f}" if 'train_loss' in results else 'n/a', workdir,
               manager.directory)
  return results


def _finish_saves(manager, writer):
  """As a run stops on an error, finishes the saves under way (removing a save that fails
  too) and writes out the TensorBoard events held back, as a normal end does; the error
  that stopped the run is the one to tell."""
  for finish in (lambda: checkpoints.saving(manager, manager.wait_until_finished),
                 writer.flush):
    try:
      finish()
    except Exception:  # pylint: disable=broad-except
      pass


# Evaluation results that count things, printed as whole numbers.
_COUNTS = ('images', 'captions', 'skipped_images')


def _format_value(metric, value) -> str:
  return f'{value:.0f}' if metric in _COUNTS or value >= 1.5 else f'{value:.4f}'


def _format_scores(scores) -> str:
  return ', '.join(f'{k} {_format_value(k, v)}' for k, v in scores.items())


def _table(latest_scores):
  """The last result of every evaluation, as the lines of one markdown table."""
  if not latest_scores:
    return []
  lines = ['| evaluation | metric | value |', '| --- | --- | --- |']
  for name, scores in latest_scores.items():
    for metric, value in scores.items():
      lines.append(f'| {name} | {metric} | {_format_value(metric, value)} |')
  return lines


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'
