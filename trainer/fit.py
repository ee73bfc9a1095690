"""Whether a train step fits its devices' memory, known before the first step runs.

The step is compiled ahead of time for the run's mesh, and XLA's memory analysis says what
one device needs. Where the devices report their memory (TPUs, GPUs), a step that needs
more is refused before it runs, naming what it needs, what each device has, and the
settings that make it fit, each compiled for the same devices. tools/plan.py compiles the
same step for a TPU slice that is not there.
"""

import dataclasses
import re
import time
from typing import Callable, List, Optional, Sequence

from absl import logging
import jax
import numpy as np

import masking
from models import clip
from trainer import checks
from trainer import partitioning
from trainer import state as state_lib
from trainer import step as step_lib
from trainer.objective import objective_of

GIB = 2 ** 30


@dataclasses.dataclass
class Compiled:
  """What one compilation of the train step needs per device, and the program."""
  arguments: int
  outputs: int
  temporaries: int
  aliased: int
  seconds: float
  refused: str = ''  # the compiler's out-of-memory message, when it refused
  executable: Optional[jax.stages.Compiled] = None

  @property
  def total(self) -> int:
    return self.arguments + self.outputs + self.temporaries - self.aliased

  def gib(self) -> str:
    return (f'{self.total / GIB:.2f} GiB (arguments {self.arguments / GIB:.2f}, temporaries '
            f'{self.temporaries / GIB:.2f}, outputs {self.outputs / GIB:.2f})')


def compile_lowered(lower: Callable[[], jax.stages.Lowered]) -> Compiled:
  """`lower()` compiled, with its memory per device; an out-of-memory refusal of the
  compiler (the TPU compiler refuses a program that cannot fit) as `refused`."""
  started = time.time()
  try:
    executable = lower().compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError)
    message = str(e)
    if 'RESOURCE_EXHAUSTED' not in message and 'Ran out of memory' not in message:
      raise
    # Its two ways of saying what it needed: 'Used 22.1G of 15.5G hbm' and 'the total memory
    # required for HLO temporaries (22.15G) exceeds available HBM (15.48G)'.
    used = (re.search(r'Used ([\d.]+)([KMGT])? of [\d.]+[KMGT]? hbm', message) or
            re.search(r'\(([\d.]+)([KMGT])?\) exceeds available HBM', message))
    scale = {None: 1, '': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': GIB, 'T': 2 ** 40}
    total = int(float(used.group(1)) * scale[used.group(2)]) if used else 0
    line = next((l for l in message.splitlines() if 'memory' in l.lower()), message)[:300]
    return Compiled(0, 0, total, 0, time.time() - started, refused=line.strip())
  seconds = time.time() - started
  memory = executable.memory_analysis()
  live = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes)
  # The TPU compiler reports its peak and leaves temp_size empty: the temporaries are the
  # peak's part beyond the arguments and outputs.
  peak = max(getattr(memory, 'peak_memory_in_bytes', 0) or 0,
             live + memory.temp_size_in_bytes)
  return Compiled(memory.argument_size_in_bytes, memory.output_size_in_bytes, peak - live,
                  memory.alias_size_in_bytes, seconds, executable=executable)


def abstract_batch(config, mesh):
  """The batch a step takes, as shapes split over `data`."""
  sharding = partitioning.batch_sharding(mesh)
  size, batch = config.image_size, config.batch_size
  shapes = {'image': ((batch, size, size, 3), np.uint8),
            'tokens': ((batch, config.aug.txt.max_len), np.int32),
            'skipped': ((batch,), np.int32)}
  masking_config = config.model.model_img.masking
  if masking_config.view_crops == 'separate' and masking_config.num_views > 1:
    views = masking_config.num_views
    shapes.update(views=((batch, views, size, size, 3), np.uint8),
                  crop_boxes=((batch, views + 1, 4), np.int32))
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for k, (shape, dtype) in shapes.items()}


def abstract(tree):
  """Arrays as their shapes, dtypes and shardings; shapes as they are."""
  return jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
                      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def batch_shapes(mesh, local_batch):
  """The global batch that partitioning.global_batch makes of every host's `local_batch`,
  as shapes (its input position, which stays on the host, left out)."""
  sharding = partitioning.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype,
                                  sharding=sharding)
          for k, v in local_batch.items() if k != 'position'}


def compile_train_step(config, devices) -> Compiled:
  """The train step a run of `config` compiles, compiled for `devices` (which need not be
  there: a TPU topology's, for tools/plan.py), nothing allocated."""
  mesh = partitioning.make_mesh(config, devices)
  partitioning.check_divisibility(config, mesh)
  model = clip.from_config(config)
  policy = masking.get_policy(config)
  objective = objective_of(config, policy)
  state = state_lib.abstract_train_state(config, model, mesh, objective)
  rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=partitioning.replicated(mesh))
  # The frequencies frequency reduction reads change no shape: any counts compile the same.
  counts = np.ones(model.text.vocab_size, np.int64)
  step = step_lib.jit_train_step(config, model, policy, objective, state, mesh,
                                 text_reduction=step_lib.text_reduction_of(config, counts))
  return compile_lowered(lambda: step.lower(state, abstract_batch(config, mesh), rng))


# --- Settings that lower a step's memory ---------------------------------------------------

# The FLOPs a block's remat policy adds to a train step: its forward once more (full) or its
# cheap part once more (minimal), against the 3 forwards of a step.
REMAT_EXTRA_FLOPS = {'none': 0.0, 'minimal': 1 / 6, 'full': 1 / 3, 'actcp': 1 / 3}

# Each as config overrides, with the FLOPs it adds to a step.
REMEDIES = (
    ('remat full', {'model.model_img.transformer.remat_policy': 'full',
                    'model.model_txt.transformer.remat_policy': 'full'},
     REMAT_EXTRA_FLOPS['full']),
    ('remat minimal', {'model.model_img.transformer.remat_policy': 'minimal',
                       'model.model_txt.transformer.remat_policy': 'minimal'},
     REMAT_EXTRA_FLOPS['minimal']),
    ('layers unrolled', {'model.scan_layers': False}, 0.0),
    ('bfloat16 compute', {'model.dtype': 'bfloat16'}, 0.0),
    ('optimizer state sharded', {'partitioning.partition_states': True}, 0.0),
    ('FSDP', {'partitioning.strategy': 'fsdp'}, 0.0),
    ('gradient accumulation x2', {'grad_accum_steps': 2}, 0.0),
    # The softmax loss's logits formed an eighth of the batch's rows at a time.
    ('loss chunked x8', {'model.clr.loss_chunk': lambda c: c.batch_size // 8}, 0.0),
    ('bfloat16 first moment', {'opt.mu_dtype': 'bfloat16'}, 0.0),
)


def resolved(config, overrides: dict) -> dict:
  """`overrides` with each value given as a function of the config (a remedy's size that
  depends on the batch) replaced by its value for `config`."""
  return {k: v(config) if callable(v) else v for k, v in overrides.items()}


def with_overrides(config, overrides: dict):
  changed = config.copy_and_resolve_references()
  for field, value in resolved(config, overrides).items():
    node = changed
    *parents, leaf = field.split('.')
    for name in parents:
      node = node[name]
    node[leaf] = value
  return changed


def _as_built(config) -> dict:
  """The config's fields, model.scan_layers as the model takes it (clip.scans_layers)."""
  fields = config.to_dict()
  fields['model']['scan_layers'] = clip.scans_layers(config)
  return fields


def applies(config, overrides: dict) -> bool:
  """Whether `overrides` change anything in the step `config` builds."""
  return _as_built(with_overrides(config, overrides)) != _as_built(config)


def flags_of(overrides: dict) -> str:
  return ' '.join(f'--config.{k}={v}' for k, v in overrides.items())


@dataclasses.dataclass
class Trial:
  """One setting tried: its config overrides, the FLOPs it adds, and what it compiled to
  (None when the config refused it, `refusal` saying why)."""
  label: str
  overrides: dict
  extra_flops: float
  config: object
  compiled: Optional[Compiled]
  refusal: str = ''


def remedy_trials(config, devices, fits: Callable[[Compiled], bool], needed: int,
                  remedies: Sequence = REMEDIES) -> List[Trial]:
  """Each of `remedies` that changes `config`, compiled for `devices`; when none alone
  fits, those that lowered the memory below `needed` taken together, cheapest first, until
  the step fits."""
  trials, helping = [], []
  for label, overrides, extra in remedies:
    overrides = resolved(config, overrides)
    if not applies(config, overrides):
      continue
    changed = with_overrides(config, overrides)
    try:
      checks.check(changed)
      compiled = compile_train_step(changed, devices)
    except ValueError as e:  # the remedy does not apply here (e.g. divisibility)
      trials.append(Trial(label, overrides, extra, changed, None, str(e)))
      continue
    trials.append(Trial(label, overrides, extra, changed, compiled))
    if not compiled.refused and compiled.total < needed:
      helping.append((extra, compiled.total, label, overrides))
  if any(t.compiled and fits(t.compiled) for t in trials) or len(helping) < 2:
    return trials
  chosen = {}  # the fields a remedy sets -> (label, overrides, extra FLOPs)
  for extra, _, label, overrides in sorted(helping):
    chosen[frozenset(overrides)] = (label, overrides, extra)  # a stronger remat replaces
    combined = {k: v for _, o, _ in chosen.values() for k, v in o.items()}
    changed = with_overrides(config, combined)
    trial = Trial(' + '.join(l for l, _, _ in chosen.values()), combined,
                  sum(e for _, _, e in chosen.values()), changed,
                  compile_train_step(changed, devices))
    trials.append(trial)
    if fits(trial.compiled):
      break
  return trials


# --- The largest batch that fits -----------------------------------------------------------

def largest_fitting(need: Callable[[int], Optional[int]], limit: int, unit: int,
                    most: int = 2 ** 20, tries: int = 12) -> int:
  """The largest multiple of `unit` up to `most` whose `need` (bytes per device, None where
  the compiler refused it) is at most `limit`, taking `need` to grow with its argument; 0
  when `unit` itself needs more. Each `need` is a compilation, so the boundary is found by
  the line through the last two sizes measured (a step's memory is an affine function of
  its batch, bar a compiler that rematerialises under pressure), halving the interval
  between the largest size that fits and the smallest that does not where the line does
  not narrow it; after `tries` measurements the largest size found to fit is returned."""
  measured = {}

  def fits(n):
    if n not in measured:
      measured[n] = need(n)
    return measured[n] is not None and measured[n] <= limit

  if not fits(unit):
    return 0
  low, high = unit, None  # low fits; high, once found, does not
  probe = min(4 * unit, most // unit * unit)
  while probe > low and len(measured) < tries:
    if fits(probe):
      low = probe
    else:
      high = probe
    if high is not None and high - low <= unit:
      break
    probe = _next_probe(measured, limit, unit, low, high, most)
  return low


def _next_probe(measured, limit, unit, low, high, most) -> int:
  if high is not None and measured[high] is not None:
    line = (low, measured[low]), (high, measured[high])
  else:  # through the two largest sizes measured (from no batch, no bytes, if one)
    line = ([(0, 0)] + sorted((n, b) for n, b in measured.items() if b is not None))[-2:]
  (n0, b0), (n1, b1) = line
  estimate = n0 + (limit - b0) * (n1 - n0) / (b1 - b0) if b1 > b0 else 2 * low
  ceiling = high - unit if high is not None else min(most, 16 * low) // unit * unit
  probe = int(min(max(estimate // unit * unit, low + unit), ceiling))
  if high is not None and high - low > 4 * unit and probe in (low + unit, high - unit):
    probe = (low + high) // 2 // unit * unit  # the line hugs one end: halve instead
  return probe


def largest_batch(config, devices, limit: int, multiple: int = 8) -> int:
  """The largest global batch whose train step, as compiled for `devices`, needs at most
  `limit` bytes per device (0 when none does): a multiple of `multiple`, of what the mesh
  and the micro-batches divide the batch by, and of the loss's chunk."""
  mesh = partitioning.make_mesh(config, devices)
  unit = int(np.lcm.reduce([multiple, mesh.shape['data'] * config.grad_accum_steps,
                            config.model.clr.loss_chunk or 1]))

  def need(batch):
    changed = config.copy_and_resolve_references()
    changed.batch_size = batch
    # The schedule's length changes no shape, but an epoch must hold a step.
    changed.samples_per_epoch = max(changed.samples_per_epoch, batch)
    compiled = compile_train_step(changed, devices)
    logging.info('A batch of %d needs %s (compiled in %.0f s)', batch,
                 compiled.refused or compiled.gib(), compiled.seconds)
    return None if compiled.refused else compiled.total

  return largest_fitting(need, limit, unit)


# --- At start-up ---------------------------------------------------------------------------

class DoesNotFit(ValueError):
  """The train step needs more memory than a device has."""


def device_memory(devices) -> Optional[int]:
  """The bytes each of `devices` can hold, where they say (TPUs, GPUs; not CPUs)."""
  limits = [(d.memory_stats() or {}).get('bytes_limit') for d in devices
            if d.process_index == jax.process_index()]
  return min(limits) if limits and all(limits) else None


def checked_step(config, step_fn, state, batch, rng, mesh,
                 limit: Optional[int] = None) -> Callable:
  """`step_fn` compiled for `state`, `batch` and `rng` (arrays or shapes), once; where the
  devices' memory is known (`limit`, or what they report), a step that needs more than it
  raises DoesNotFit naming the settings that fit, before anything runs."""
  devices = list(mesh.devices.flat)
  limit = limit or device_memory(devices)
  fits = lambda c: not c.refused and (limit is None or c.total <= limit)
  compiled = compile_lowered(lambda: step_fn.lower(abstract(state), abstract(batch),
                                                   abstract(rng)))
  if fits(compiled):
    return compiled.executable
  trials = remedy_trials(config, devices, fits, compiled.total or np.iinfo(np.int64).max,
                         REMEDIES)
  fitting = sorted((t for t in trials if t.compiled and fits(t.compiled)),
                   key=lambda t: t.extra_flops)
  advice = ('; '.join(f'{t.label} ({t.compiled.total / GIB:.2f} GiB, '
                      f'{t.extra_flops:+.0%} FLOPs): {flags_of(t.overrides)}' for t in fitting)
            if fitting else 'none of ' + ', '.join(r[0] for r in REMEDIES) + ', alone or '
            'together: a smaller batch_size or more devices')
  needs = (f'needs {compiled.gib()} per device' if not compiled.refused else
           f'was refused by the compiler ({compiled.refused})')
  has = f', and each has {limit / GIB:.2f} GiB' if limit else ''
  raise DoesNotFit(
      f'the train step (batch_size={config.batch_size} over {len(devices)} '
      f'{devices[0].device_kind} devices) {needs}{has}. What fits: {advice}. '
      '`python -m tools.plan` compiles these for any TPU slice without one')
