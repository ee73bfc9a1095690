"""Training and zero-shot evaluation: train state, jitted steps, the loop, checkpoints."""

import functools
import os
import time
from typing import Any, Dict

from absl import logging
from clu import periodic_actions
from flax import traverse_util
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import config_checks
import masking
import metrics_writer
import partitioning
from input_pipeline import laion
from input_pipeline import tokenizer as tokenizer_lib
from input_pipeline import zeroshot
from models import clip

NO_DECAY_NAMES = ('pos_embedding', 'cls')


class NonFiniteLossError(FloatingPointError):
  """Raised when training produced NaN or infinite values; nothing was saved after them."""


class TrainState(train_state.TrainState):
  pass


# --- Optimiser ---------------------------------------------------------------------------------

def steps_of(config) -> Dict[str, int]:
  steps_per_epoch = config.samples_per_epoch / config.batch_size
  total = config.total_steps if config.total_steps > 0 else int(config.num_epochs *
                                                                steps_per_epoch)
  return {'total': max(total, 1), 'warmup': int(config.warmup_epochs * steps_per_epoch)}


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup then cosine decay; the peak is learning_rate per 256 examples."""
  steps = steps_of(config)
  warmup = min(steps['warmup'], steps['total'])
  return optax.warmup_cosine_decay_schedule(
      init_value=config.warmup_abs_lr,
      peak_value=config.learning_rate * config.batch_size / 256,
      warmup_steps=warmup, decay_steps=max(steps['total'], warmup + 1),
      end_value=config.min_abs_lr)


def weight_decay_mask(params):
  """True where AdamW decays: matrices and kernels, not biases, norms or embeddings' offsets."""
  def decays(path, leaf):
    return leaf.ndim > 1 and path[-1].key not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
  if config.opt_type != 'adamw':
    raise ValueError(f"config.opt_type={config.opt_type!r}: only 'adamw' is supported")
  parts = []
  if config.opt.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.opt.clip_grad_norm))
  parts.append(optax.adamw(learning_rate_schedule(config), b1=config.opt.b1, b2=config.opt.b2,
                           weight_decay=config.opt.weight_decay,
                           mask=weight_decay_mask if config.exclude_wd else None))
  return optax.chain(*parts)


# --- State -------------------------------------------------------------------------------------

def dummy_inputs(config):
  size = config.image_size
  return (jnp.zeros((1, size, size, 3), jnp.float32),
          jnp.zeros((1, config.aug.txt.max_len), jnp.int32))


def create_train_state(config, model, rng, mesh) -> TrainState:
  tx = make_optimizer(config)

  def init(rng):
    params = nn.unbox(model.init(rng, *dummy_inputs(config))['params'])
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  return jax.jit(init, out_shardings=partitioning.replicated(mesh))(rng)


# --- Steps -------------------------------------------------------------------------------------

def train_step(state: TrainState, batch, rng, *, model, policy, schedule):
  rng = jax.random.fold_in(rng, state.step)
  keep = policy(rng, batch['image'])
  keep_idx, valid = keep if keep is not None else (None, None)

  def loss_fn(params):
    zimg, ztxt, logit_scale = model.apply({'params': params}, batch['image'],
                                          batch['tokens'], keep_idx, valid)
    return clip.contrastive_loss(zimg, ztxt, logit_scale), logit_scale

  (loss, logit_scale), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  kept = policy.num_keep if valid is None else valid.sum(axis=1).mean()
  metrics = {
      'train_loss': loss,
      'learning_rate': schedule(state.step - 1),
      'temperature': jnp.exp(-logit_scale),
      'kept_patches': jnp.asarray(kept, jnp.float32),
      'grad_norm': optax.tree.norm(grads),
      'skipped_records': batch['skipped'].sum(),
  }
  return state, metrics


def encode_text_step(params, tokens, *, model):
  return model.apply({'params': params}, tokens, method=clip.CLIP.encode_text)


def eval_step(params, batch, classifier, rng, *, model, policy, top_k):
  keep = policy(rng, batch['image'])
  keep_idx, valid = keep if keep is not None else (None, None)
  zimg = model.apply({'params': params}, batch['image'], keep_idx, valid,
                     method=clip.CLIP.encode_image)
  _, predicted = jax.lax.top_k(zimg @ classifier.T, top_k)
  hits = predicted == batch['label'][:, None]
  mask = batch['mask']
  return {'top1': (hits[:, 0] * mask).sum(), 'top5': (hits.any(axis=1) * mask).sum(),
          'count': mask.sum()}


# --- Zero-shot evaluation ----------------------------------------------------------------------

class ZeroShotEvaluator:
  """Builds the class embeddings from prompts, then scores the eval set (top-1, top-5)."""

  def __init__(self, config, model, mesh, tokenizer):
    self.config, self.mesh = config, mesh
    self.local_batch = config.eval_batch_size // jax.process_count()
    self.data = zeroshot.zeroshot_dataset(config, local_batch_size=self.local_batch,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count())
    template_set = zeroshot.templates(config.eval_templates)
    self.num_templates = len(template_set)
    self.prompt_tokens = np.asarray(
        tokenizer(zeroshot.prompts(self.data.classnames, template_set)))
    policy = masking.get_policy(config, train=False)
    batch_sh, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
    self._encode_text = jax.jit(functools.partial(encode_text_step, model=model),
                                out_shardings=repl)
    self._eval_step = jax.jit(
        functools.partial(eval_step, model=model, policy=policy,
                          top_k=min(5, len(self.data.classnames))),
        in_shardings=(repl, batch_sh, repl, repl), out_shardings=repl)
    self.masked = policy.name != 'none'

  def classifier(self, params):
    chunk = self.config.eval_batch_size
    tokens = self.prompt_tokens
    padded = np.pad(tokens, ((0, -len(tokens) % chunk), (0, 0)))
    embeddings = [self._encode_text(params, partitioning.replicate(self.mesh,
                                                                   padded[i:i + chunk]))
                  for i in range(0, len(padded), chunk)]
    ztxt = jnp.concatenate(embeddings)[:len(tokens)]
    ztxt = ztxt.reshape(len(self.data.classnames), self.num_templates, -1)
    return clip.l2_normalize(clip.l2_normalize(ztxt).mean(axis=1))

  def __call__(self, params, rng) -> Dict[str, float]:
    classifier = self.classifier(params)
    totals = {'top1': 0.0, 'top5': 0.0, 'count': 0.0}
    for i, batch in enumerate(self.data.dataset.as_numpy_iterator()):
      sums = self._eval_step(params, partitioning.global_batch(self.mesh, batch), classifier,
                             jax.random.fold_in(rng, i))
      totals = {k: totals[k] + float(sums[k]) for k in totals}
    count = max(totals['count'], 1.0)
    return {'zeroshot_top1': totals['top1'] / count, 'zeroshot_top5': totals['top5'] / count}


# --- Checkpoints -------------------------------------------------------------------------------

def checkpoint_manager(directory: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState):
  manager.save(int(state.step), args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state)))


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState, step: int):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract.params),
      opt_state=ocp.args.StandardRestore(abstract.opt_state)))
  return state.replace(step=jax.device_put(np.int32(step), state.step.sharding),
                       params=restored['params'], opt_state=restored['opt_state'])


def _params_dir(path: str) -> str:
  """`path` may be a run's workdir, its checkpoints/ folder, or one step's folder."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'params')):
    return os.path.join(path, 'params')
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'config.pretrain_dir={path!r}: no such directory')
  step = ocp.CheckpointManager(path).latest_step()
  if step is None:
    raise FileNotFoundError(f'config.pretrain_dir={path!r} holds no checkpoint')
  return os.path.join(path, str(step), 'params')


def resample_grid(embedding: np.ndarray, new_shape) -> np.ndarray:
  """Bilinearly resizes a [1, gh * gw, D] position embedding onto another square grid."""
  old_side, new_side = int(np.sqrt(embedding.shape[1])), int(np.sqrt(new_shape[1]))
  if old_side ** 2 != embedding.shape[1] or new_side ** 2 != new_shape[1]:
    raise ValueError(f'cannot resample position embedding {embedding.shape} -> {new_shape}: '
                     'grids must be square')
  grid = embedding.reshape(old_side, old_side, -1)
  grid = jax.image.resize(grid, (new_side, new_side, grid.shape[-1]), 'bilinear')
  return np.asarray(grid).reshape(new_shape)


def load_pretrained_params(path: str, params):
  """Weights of another run's checkpoint, without its optimiser state, fitted to `params`."""
  source = traverse_util.flatten_dict(ocp.StandardCheckpointer().restore(_params_dir(path)),
                                      sep='/')
  target = traverse_util.flatten_dict(params, sep='/')
  if source.keys() != target.keys():
    raise ValueError(
        f'config.pretrain_dir={path!r}: its parameters differ from this model\'s; missing '
        f'{sorted(target.keys() - source.keys())}, unexpected '
        f'{sorted(source.keys() - target.keys())}')
  fitted = {}
  for name, want in target.items():
    value = np.asarray(source[name])
    if value.shape != want.shape:
      if not name.endswith('pos_embedding') or value.ndim != 3:
        raise ValueError(f'config.pretrain_dir={path!r}: parameter {name} has shape '
                         f'{value.shape} in the checkpoint but {want.shape} in this model')
      logging.info('Resampling %s from %s to %s', name, value.shape, want.shape)
      value = resample_grid(value, want.shape)
    fitted[name] = jax.device_put(value.astype(want.dtype), want.sharding)
  return traverse_util.unflatten_dict(fitted, sep='/')


# --- The loop ----------------------------------------------------------------------------------

def _summarize(pending):
  """Device metrics of the steps since the last summary -> their means (skips summed)."""
  rows = jax.device_get(pending)
  out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  out['skipped_records'] = float(np.sum([r['skipped_records'] for r in rows]))
  return out


def _all_finite(pending) -> bool:
  rows = jax.device_get(pending)
  return all(np.isfinite(r['train_loss']) and np.isfinite(r['grad_norm']) for r in rows)


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs training (or `eval_only`); returns the last metrics written."""
  config_checks.check(config)
  mesh = partitioning.make_mesh(config)
  model = clip.from_config(config)
  tokenizer = tokenizer_lib.BertTokenizer(config.aug.txt.max_len, config.aug.txt.cls_token)
  policy = masking.get_policy(config, train=True)
  writer = metrics_writer.create_writer(workdir)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, eval_rng = jax.random.split(rng, 3)

  evaluator = ZeroShotEvaluator(config, model, mesh, tokenizer) if config.eval_dataset else None
  state = create_train_state(config, model, init_rng, mesh)
  manager = checkpoint_manager(os.path.join(workdir, 'checkpoints'), config)
  resume_from = manager
  if config.resume_dir and manager.latest_step() is None:
    resume_from = checkpoint_manager(os.path.join(config.resume_dir, 'checkpoints')
                                     if os.path.isdir(os.path.join(config.resume_dir,
                                                                   'checkpoints'))
                                     else config.resume_dir, config)
  if resume_from.latest_step() is not None:
    step = resume_from.latest_step()
    logging.info('Resuming from %s at step %d', resume_from.directory, step)
    state = restore_checkpoint(resume_from, state, step)
  elif config.pretrain_dir:
    logging.info('Initialising weights from %s (optimiser state not loaded)',
                 config.pretrain_dir)
    state = state.replace(params=load_pretrained_params(config.pretrain_dir, state.params))
  start_step = int(state.step)

  total_steps = steps_of(config)['total']

  def evaluate(step):
    scores = evaluator(state.params, eval_rng)
    writer.write_scalars(step, scores)
    writer.flush()
    logging.info('Zero-shot at step %d%s: top-1 %.4f, top-5 %.4f', step,
                 ' (masked inference)' if evaluator.masked else '', scores['zeroshot_top1'],
                 scores['zeroshot_top5'])
    return scores

  if config.eval_only:
    if evaluator is None:
      raise ValueError('config.eval_only=True needs config.eval_dataset')
    if resume_from.latest_step() is None and not config.pretrain_dir:
      raise FileNotFoundError(f'config.eval_only=True: no checkpoint in {workdir} and no '
                              'config.pretrain_dir to evaluate')
    return evaluate(start_step)
  if start_step >= total_steps:
    logging.info('The run in %s already reached step %d of %d.', workdir, start_step,
                 total_steps)
    return evaluate(start_step) if evaluator and config.eval_at_end else {}

  shards = laion.list_shards(config.laion_path)
  dataset = laion.train_dataset(
      config, tokenizer, shards, process_index=jax.process_index(),
      process_count=jax.process_count(),
      seed=laion.host_seed(config.seed, start_step, jax.process_index()))
  batches = dataset.as_numpy_iterator()
  schedule = learning_rate_schedule(config)
  repl, batch_sh = partitioning.replicated(mesh), partitioning.batch_sharding(mesh)
  step_fn = jax.jit(functools.partial(train_step, model=model, policy=policy,
                                      schedule=schedule),
                    in_shardings=(repl, batch_sh, repl), out_shardings=(repl, repl),
                    donate_argnums=0)
  logging.info('Training %s for steps %d..%d on %d devices (%s masking, %d of %d patches '
               'kept), shards: %d %s files', workdir, start_step, total_steps,
               jax.device_count(), policy.name, policy.num_keep, policy.num_patches,
               len(shards.files), shards.format)
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps,
                                             every_secs=None)
  pending, last_saved = [], manager.latest_step()
  window_start, window_steps = time.time(), 0
  results: Dict[str, Any] = {}

  def check_finite(step):
    """Stops before anything computed from non-finite values is saved."""
    if _all_finite(pending):
      return
    manager.wait_until_finished()
    where = (f'the last good checkpoint is step {last_saved} in {manager.directory}'
             if last_saved is not None else 'no checkpoint was written')
    logging.error('Training stopped: the loss became NaN or infinite by step %d; nothing '
                  'after it was saved; %s.', step, where)
    raise NonFiniteLossError(f'non-finite loss by step {step}; {where}')

  def every(n, step):
    return n > 0 and step % n == 0

  try:
    for step in range(start_step + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = partitioning.global_batch(mesh, next(batches))
        state, metrics = step_fn(state, batch, train_rng)
      pending.append(metrics)
      window_steps += 1
      progress(step)
      is_last = step == total_steps
      if every(config.log_every_steps, step) or is_last:
        check_finite(step)
        summary = _summarize(pending)
        pending.clear()
        elapsed = time.time() - window_start
        summary['images_per_sec'] = window_steps * config.batch_size / max(elapsed, 1e-9)
        writer.write_scalars(step, summary)
        eta = (total_steps - step) * elapsed / max(window_steps, 1)
        logging.info('step %d/%d | loss %.4f | %.0f images/s | ETA %s', step, total_steps,
                     summary['train_loss'], summary['images_per_sec'], _format_seconds(eta))
        results.update(summary)
        window_start, window_steps = time.time(), 0
      if every(config.checkpoint_every_steps, step) or (is_last and config.save_at_end):
        check_finite(step)
        with progress.timed('checkpoint'):
          save_checkpoint(manager, state)
        last_saved = step
      if evaluator and (every(config.eval_every_steps, step) or
                        (is_last and config.eval_at_end)):
        with progress.timed('eval'):
          results.update(evaluate(step))
        window_start = time.time()  # evaluation time is not training throughput
  finally:
    manager.wait_until_finished()  # whatever stopped the loop, finish the saves under way
    writer.flush()
  logging.info('Done. Logs and metrics.jsonl in %s; checkpoints in %s', workdir,
               manager.directory)
  return results


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'
