"""Plans a TPU pod slice from any machine: the real train step compiled for the slice, no TPU.

  python -m tools.plan --config=configs/cfg_flip_large.py --slice=v3-256 \
      [--config.batch_size=32768 ...]
  make plan CONFIG=configs/cfg_flip_large.py SLICE=v3-256

JAX compiles for a TPU topology that is not there when the TPU compiler (libtpu, the
`jax[tpu]` extra at this project's jax version) is installed: `make plan` installs it into
.venv/tpu-compiler on first use (training never needs it). The train step is built as a run
builds it (mesh, shardings, masking, optimiser), its state and batch as shapes alone, and
compiled for the slice's devices. Printed: a table and one JSON line with the devices and
mesh, the global and per-device batch, the bytes per device (arguments, temporaries,
outputs) against the chip's HBM, whether it fits, and when it does not, the settings that
make it fit, each compiled the same way; the FLOPs per step, the collectives of the compiled
program with their bytes, and an estimated step time and images/s.

The estimate: the step's FLOPs (counted from the architecture by benchmarks/flops.py, since
XLA counts a scanned loop's body once) at the chip's bfloat16 peak, plus what each device
sends for the compiled program's collectives (in a ring: an all-reduce about twice its
bytes, an all-gather once) at the slice's all-reduce bandwidth per device, one after the
other. Compute at peak makes it optimistic, no overlap pessimistic: a first figure to
compare slices and settings by, not a promise. Memory is the compiler's own figure.
"""

import dataclasses
import functools
import importlib.util
import json
import os
import re
import sys
from typing import Dict

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# The TPU compiler's own start-up reads these; there is no TPU VM to describe.
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
# Without a TPU to guard, two plans (or a plan beside the tests) may load the compiler at once.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
COMPILER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            '.venv', 'tpu-compiler')
if os.path.isdir(COMPILER_DIR):
  sys.path.insert(0, COMPILER_DIR)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from trainer import console

# TensorFlow (the evaluations' input) prints its device probing natively as it loads.
with console.native_stderr_filtered():
  from benchmarks.flops import tower_flops, train_flops_per_example  # pylint: disable=g-import-not-at-top
  from jax._src import config as jax_config
  import jax
  import masking
  from evaluators import common as eval_common
  from models import clip
  from trainer import checks
  from trainer import fit
  from trainer import partitioning
  from trainer import state as state_lib
  from trainer.objective import objective_of

GIB = fit.GIB


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation as JAX sees it: one device per TensorCore (v3) or per chip."""
  generation: str
  hbm_gib: float  # per device
  peak_tflops: float  # bfloat16, per device
  all_reduce_gbs: float  # GB/s per device: the pod's all-reduce bandwidth / its devices
  name_counts: str  # what the N of `GEN-N` counts: 'cores' (2 per chip) or 'chips'
  source: str


# Per device, from Cloud TPU's system architecture pages (the source of each row). v3 has two
# devices per chip (its TensorCores, 16 GiB each); v4 and v5p one (two TensorCores as one
# megacore); v5e and v6e one TensorCore per chip. HBM the pages give in GB is in GiB here
# (v5p 95 GB, v5e 16 GB, v6e 32 GB). All-reduce bandwidth: the pod's figure over its devices
# where the page gives one (v3 340 TB/s over 2048, v4 1.1 PB/s over 4096, v5e 51.2 TB/s and
# v6e 102.4 TB/s over 256), else half the chip's bidirectional ICI (v5p, 4800 Gbps).
CHIPS = {
    'v3': Chip('v3', 16.0, 61.5, 166.0, 'cores', 'https://cloud.google.com/tpu/docs/v3'),
    'v4': Chip('v4', 32.0, 275.0, 268.0, 'cores', 'https://cloud.google.com/tpu/docs/v4'),
    'v5p': Chip('v5p', 88.5, 459.0, 300.0, 'cores', 'https://cloud.google.com/tpu/docs/v5p'),
    'v5e': Chip('v5e', 14.9, 197.0, 200.0, 'chips', 'https://cloud.google.com/tpu/docs/v5e'),
    'v6e': Chip('v6e', 29.8, 918.0, 400.0, 'chips', 'https://cloud.google.com/tpu/docs/v6e'),
}
# Chips -> the slice's shape in chips, for the sizes each generation is rented in.
_V3_TORUS = {4: '2x2', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16', 256: '16x16',
             512: '16x32', 1024: '32x32'}
_POD_OF_256 = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
               256: '16x16'}
_CUBE_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
            256: '4x8x8', 512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16'}
_SHAPES = {'v3': _V3_TORUS, 'v4': _CUBE_3D, 'v5p': _CUBE_3D, 'v5e': _POD_OF_256,
           'v6e': _POD_OF_256}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  chip: Chip
  topology: str  # get_topology_desc's name, GEN:AxB[xC] in chips

  @property
  def chips(self) -> int:
    return int(np.prod([int(n) for n in self.topology.split(':')[1].split('x')]))


def parse_slice(name: str) -> Slice:
  """`v3-256`, `v4-128`, `v5p-64`, `v5e-16` (or `v5litepod-16`), `v6e-256`."""
  match = re.fullmatch(r'(v3|v4|v5p|v5e|v5litepod|v6e)-(\d+)', name.strip().lower())
  if not match:
    raise ValueError(f'--slice={name!r}: expected GENERATION-N as Cloud TPU names slices '
                     f'({", ".join(f"{g}-N" for g in CHIPS)}; v5litepod-N is v5e-N)')
  generation = 'v5e' if match.group(1) == 'v5litepod' else match.group(1)
  chip, count = CHIPS[generation], int(match.group(2))
  chips = count // 2 if chip.name_counts == 'cores' else count
  shapes = _SHAPES[generation]
  if chips not in shapes or (chip.name_counts == 'cores' and count % 2):
    sizes = sorted(n * (2 if chip.name_counts == 'cores' else 1) for n in shapes)
    raise ValueError(f'--slice={name!r}: {generation} slices have '
                     f'{", ".join(map(str, sizes))} {chip.name_counts}')
  return Slice(name, chip, f'{generation}:{shapes[chips]}')


def tpu_devices(slice_: Slice):
  """The slice's devices, described by the TPU compiler (no TPU needed)."""
  if importlib.util.find_spec('libtpu') is None:
    raise OSError('the TPU compiler is not installed: `make plan` installs it (libtpu, the '
                  'jax[tpu] extra of this jax version) into .venv/tpu-compiler')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # The compiler's start-up looks for the TPU VM it runs on and says, natively, that there is
  # none.
  with console.native_stderr_filtered():
    return topologies.get_topology_desc(topology_name=slice_.topology,
                                        platform='tpu').devices


# --- One compiled step ---------------------------------------------------------------------

_COLLECTIVE = re.compile(
    r'^\s*(?:ROOT\s+)?%[\w.-]+ = (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|'
    r'collective-permute)(-start)?\(.*?(replica_groups=\S+(?: \{[^}]*\})?|$)')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.-]+) ')
_BODY = re.compile(r'\bbody=%([\w.-]+)')
_CONDITION = re.compile(r'\bcondition=%([\w.-]+)')
_CALLS = re.compile(r'\bcalls=%([\w.-]+)')
_ARRAY = re.compile(r'(\w+)\[([\d,]*)\]')
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
          's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def _group_size(groups: str, devices: int) -> int:
  """How many devices take part in each group of a collective's replica_groups."""
  explicit = re.match(r'replica_groups=\{\{([\d,]+)\}', groups)
  if explicit:
    return len(explicit.group(1).split(','))
  iota = re.match(r'replica_groups=\[\d+,(\d+)\]', groups)
  if iota:
    return int(iota.group(1))
  named = re.match(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", groups)
  if named:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", named.group(1)))
    return int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", named.group(2))]))
  return devices


def _computations(hlo_text: str) -> Dict[str, list]:
  """{computation name: its lines}; the entry computation under 'ENTRY', lines before any
  computation under ''."""
  found, name = {'': []}, ''
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      name = 'ENTRY' if line.startswith('ENTRY') else header.group(1)
      found[name] = []
    else:
      found[name].append(line)
  return found


def _trip_count(condition: list) -> int:
  """A loop's trip count, from its condition `i < N` (1 when it is not of that form)."""
  text = '\n'.join(condition)
  bound = re.search(r'= s32\[\]\S* constant\((\d+)\)', text)
  return int(bound.group(1)) if bound and 'direction=LT' in text else 1


def _runs(computations: Dict[str, list]) -> Dict[str, int]:
  """How many times each computation runs in one call of the entry: a loop's body (and what
  it calls) its trip count times."""
  runs = {}

  def visit(name, times):
    runs[name] = runs.get(name, 0) + times
    for line in computations.get(name, ()):
      body = _BODY.search(line)
      if body:
        condition = _CONDITION.search(line).group(1)
        visit(body.group(1), times * _trip_count(computations.get(condition, [])))
      for callee in _CALLS.findall(line):
        visit(callee, times)
  visit('ENTRY', 1)
  return runs


def collectives(hlo_text: str, devices: int) -> Dict[str, dict]:
  """{kind: {'count', 'bytes', 'traffic'}} of a compiled program's collectives, per step:
  `bytes` is what each device holds as their results, `traffic` what each device sends over
  the interconnect for them in a ring (an all-reduce 2 (n - 1) / n of its bytes, an
  all-gather (n - 1) / n, a reduce-scatter n - 1 times its shard). One inside a loop's body
  (the scanned layers under remat) counts its trip count times. The TPU compiler writes a
  reduce-scatter as an all-reduce and a slice of it inside a computation of its own,
  `all-reduce-scatter.N`: counted as the reduce-scatter."""
  computations = _computations(hlo_text)
  runs = _runs(computations) if 'ENTRY' in computations else {}
  found = {}
  for computation, lines in computations.items():
    times = runs.get(computation, 1 if not runs else 0)
    for line in lines:
      match = _COLLECTIVE.match(line)
      if not match or not times:
        continue
      shape, kind, start, groups = match.groups()
      sizes = [_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(',') if d]))
               for dtype, dims in _ARRAY.findall(shape)]
      if start:  # (operands, results) of an asynchronous start
        sizes = sizes[len(sizes) // 2:]
      size, n = sum(sizes), _group_size(groups, devices)
      if kind == 'all-reduce' and computation.startswith('all-reduce-scatter'):
        kind, size = 'reduce-scatter', size // n
      share = {'all-reduce': 2 * (n - 1) / n, 'all-gather': (n - 1) / n,
               'reduce-scatter': n - 1, 'all-to-all': (n - 1) / n,
               'collective-permute': 1.0}[kind]
      entry = found.setdefault(kind, {'count': 0, 'bytes': 0, 'traffic': 0})
      entry['count'] += times
      entry['bytes'] += size * times
      entry['traffic'] += int(size * share) * times
  return found


# --- Plans -----------------------------------------------------------------------------------

def step_flops(config) -> float:
  """The train step's FLOPs over the whole batch, from the architecture (3x the forward of
  the kept tokens), as benchmarks/versus_open_clip.py counts them."""
  policy = masking.get_policy(config)
  return config.batch_size * train_flops_per_example(config, 1 + policy.num_keep)


def remat_extra_flops(config) -> float:
  """The fraction of a step's FLOPs that its towers' remat policies add."""
  policy = masking.get_policy(config)
  towers = [(config.model.model_img, 1 + policy.num_keep),
            (config.model.model_txt, config.aug.txt.max_len)]
  flops = [tower_flops(t.hidden_size, t.transformer.num_layers, tokens) for t, tokens in towers]
  extra = [f * fit.REMAT_EXTRA_FLOPS[t.transformer.remat_policy]
           for f, (t, _) in zip(flops, towers)]
  return sum(extra) / sum(flops)


def estimate(config, collectives_found: dict, slice_: Slice, devices: int,
             extra_flops: float):
  """(seconds per step, images/s): the FLOPs at the chip's peak, then the collectives'
  traffic at the all-reduce bandwidth, one after the other."""
  compute = step_flops(config) * (1 + extra_flops) / devices / (slice_.chip.peak_tflops * 1e12)
  traffic = sum(c['traffic'] for c in collectives_found.values())
  seconds = compute + traffic / (slice_.chip.all_reduce_gbs * 1e9)
  return seconds, config.batch_size / seconds


def row(trial: fit.Trial, slice_: Slice, devices: int) -> dict:
  """A plan's line for one compiled setting."""
  compiled = trial.compiled
  if compiled is None:
    return {'setting': trial.label, 'fits': False, 'refused': trial.refusal}
  found = (collectives(compiled.executable.as_text(), devices) if compiled.executable
           else {})
  extra = remat_extra_flops(trial.config)
  seconds, images = estimate(trial.config, found, slice_, devices, extra)
  return {
      'setting': trial.label,
      'fits': not compiled.refused and compiled.total <= slice_.chip.hbm_gib * GIB,
      'overrides': trial.overrides,
      'gib_per_device': round(compiled.total / GIB, 2),
      'arguments_gib': round(compiled.arguments / GIB, 2),
      'temporaries_gib': round(compiled.temporaries / GIB, 2),
      'outputs_gib': round(compiled.outputs / GIB, 2),
      'extra_flops': round(extra, 3),
      'collectives': {k: {'count': v['count'], 'gib': round(v['bytes'] / GIB, 3)}
                      for k, v in sorted(found.items())},
      'step_seconds': round(seconds, 4) if not compiled.refused else None,
      'images_per_sec': round(images) if not compiled.refused else None,
      'compile_seconds': round(compiled.seconds, 1),
      **({'refused': compiled.refused} if compiled.refused else {}),
  }


def compile_eval_step(config, devices) -> fit.Compiled:
  """The evaluations' image step (evaluators/common.py), compiled for `devices` at
  config.eval_batch_size: the embeddings of one global batch of evaluation images."""
  mesh = partitioning.make_mesh(config, devices)
  model = clip.from_config(config)
  policy = masking.get_policy(config, train=False)
  state = state_lib.abstract_train_state(config, model, mesh,
                                         objective_of(config, masking.get_policy(config)))
  step = partitioning.jit(functools.partial(eval_common.image_step, model=model,
                                            policy=policy),
                          mesh, partitioning.logical_rules(config),
                          out_shardings=partitioning.replicated(mesh))
  sharding = partitioning.batch_sharding(mesh)
  size, batch = config.image_size, config.eval_batch_size
  images = {'image': jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8, sharding=sharding),
            **{k: jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding)
               for k in ('label', 'index')}}
  rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=partitioning.replicated(mesh))
  ema = state.ema_params if policy.needs_scores else None
  return fit.compile_lowered(lambda: step.lower(state.params, ema, images, rng))


def evaluation_row(config, compiled: fit.Compiled, slice_: Slice) -> dict:
  """A plan's line for the evaluations' image step."""
  return {
      'eval_batch_size': config.eval_batch_size,
      'fits': not compiled.refused and compiled.total <= slice_.chip.hbm_gib * GIB,
      'gib_per_device': round(compiled.total / GIB, 2),
      'temporaries_gib': round(compiled.temporaries / GIB, 2),
      'compile_seconds': round(compiled.seconds, 1),
      **({'refused': compiled.refused} if compiled.refused else {}),
  }


def plan(config, slice_: Slice, devices=None, remedies=fit.REMEDIES) -> dict:
  """The slice's plan for `config`: the step as configured and, when it does not fit, each
  of `remedies` alone, then those that helped taken together, cheapest first, until the
  step fits (trainer/fit.py's search, which a run's start-up makes too)."""
  devices = tpu_devices(slice_) if devices is None else devices
  count = len(devices)
  data = count // config.partitioning.num_partitions
  result = {
      'slice': slice_.name, 'topology': slice_.topology, 'devices': count,
      'mesh': {'data': data, 'model': config.partitioning.num_partitions},
      'batch_size': config.batch_size, 'per_device_batch': config.batch_size / data,
      'hbm_gib_per_device': slice_.chip.hbm_gib,
      'peak_tflops_per_device': slice_.chip.peak_tflops,
      'tflops_per_step': float(f'{step_flops(config) / 1e12:.4g}'),
      'masking': masking.describe(masking.get_policy(config)),
  }
  limit = slice_.chip.hbm_gib * GIB
  fits = lambda c: not c.refused and c.total <= limit
  # Without a TPU, a program for one cannot be read back from the persistent cache.
  with jax_config.enable_compilation_cache(False):
    configured = fit.Trial('as configured', {}, 0.0, config,
                           fit.compile_train_step(config, devices))
    trials = [configured]
    if not fits(configured.compiled) and remedies:
      trials += fit.remedy_trials(config, devices, fits, configured.compiled.total or
                                  np.iinfo(np.int64).max, remedies)
    evaluation = compile_eval_step(config, devices)
  result['rows'] = [row(t, slice_, count) for t in trials]
  result['evaluation'] = evaluation_row(config, evaluation, slice_)
  return result


def table(result: dict) -> str:
  """The plan as a markdown table, with a header line."""
  lines = [f"{result['slice']} ({result['topology']}, {result['devices']} devices, mesh "
           f"{result['mesh']['data']} x {result['mesh']['model']}): batch "
           f"{result['batch_size']}, {result['per_device_batch']:g} per device, "
           f"{result['tflops_per_step']} TFLOP per step, {result['masking']}; "
           f"{result['hbm_gib_per_device']:g} GiB HBM per device",
           '',
           '| setting | GiB per device (args / temps / outputs) | fits | extra FLOPs | '
           'collectives (count, GiB) | est. step s | est. images/s | compile s |',
           '| --- | --- | --- | ---: | --- | ---: | ---: | ---: |']
  for r in result['rows']:
    if 'gib_per_device' not in r:
      lines.append(f"| {r['setting']} | refused: {r['refused']} | no | | | | | |")
      continue
    memory = (f"{r['gib_per_device']} (compiler: {r['refused']})" if r.get('refused') else
              f"{r['gib_per_device']} ({r['arguments_gib']} / {r['temporaries_gib']} / "
              f"{r['outputs_gib']})")
    kinds = ', '.join(f"{k} {v['count']}x {v['gib']}" for k, v in r['collectives'].items())
    lines.append(f"| {r['setting']} | {memory} | {'yes' if r['fits'] else 'no'} | "
                 f"{r['extra_flops']:+.0%} | {kinds or 'none'} | {r['step_seconds'] or ''} | "
                 f"{r['images_per_sec'] or ''} | {r['compile_seconds']} |")
  evaluation = result['evaluation']
  needs = (f"refused by the compiler ({evaluation['refused']})" if 'refused' in evaluation
           else f"{evaluation['gib_per_device']} GiB per device")
  lines += ['', f"Evaluation (eval_batch_size {evaluation['eval_batch_size']}, as configured): "
            f"{needs}, {'fits' if evaluation['fits'] else 'does not fit'} (compiled in "
            f"{evaluation['compile_seconds']} s)" +
            ('.' if evaluation['fits'] else ': lower --config.eval_batch_size.')]
  return '\n'.join(lines)


# --- Command line ----------------------------------------------------------------------------

def define_flags():
  """The command's flags, defined when it runs (not when tools import this module)."""
  flags.DEFINE_string('slice', None, 'The slice, as Cloud TPU names it: v3-256, v4-128, '
                      'v5p-64, v5e-16 (v5litepod-16), v6e-256.', required=True)
  flags.DEFINE_bool('remedies', True, 'When the step does not fit, compile it again with each '
                    'setting that lowers its memory.')
  config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py); override any '
                                  'field with --config.FIELD=VALUE.', lock_config=False)
  flags.mark_flags_as_required(['config'])


@console.one_line_errors('plan')
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  checks.check(config)
  slice_ = parse_slice(flags.FLAGS.slice)
  result = plan(config, slice_, remedies=fit.REMEDIES if flags.FLAGS.remedies else ())
  print(table(result))
  print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  app.run(main)
