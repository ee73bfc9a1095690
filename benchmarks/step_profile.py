"""Where a compiled train step's time goes: jax.profiler's trace of a few steps, each op's
time attributed by the name XLA's metadata gives it (the model's module path and the step's
named scopes: `masking`, `masking_gather`, `loss`, `optimizer`).

On a GPU the device's own op events are counted; on a CPU the host threads' op events,
whose times overlap, so the shares are of the summed op time there.
"""

import collections
import glob
import re
import tempfile
from typing import Callable, Dict

import jax

# (category, pattern of the op's name in its metadata), first match wins.
CATEGORIES = (
    ('optimizer update', r'\boptimizer\b'),
    ('masking gather', r'masking_gather'),
    ('masking policy', r'\bmasking\b'),
    ('loss', r'\bloss\b'),
    ('layer norms', r'norm_(attention|mlp|out|pre)'),
    ('attention projections', r'/attention/(query|key|value|out)\b'),
    ('attention', r'/attention\b'),
    ('MLPs', r'/mlp\b'),
    ('patch embedding', r'patch_embedding'),
    ('token embedding', r'token_embedding'),
)
OTHER = 'other (copies, layouts, small ops)'

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]*)"', re.M)


def op_names(hlo_text: str) -> Dict[str, str]:
  """{instruction name: the op_name of its metadata} of an optimized HLO module's text."""
  return dict(_INSTRUCTION.findall(hlo_text))


def category(op_name: str) -> str:
  for name, pattern in CATEGORIES:
    if re.search(pattern, op_name):
      return name
  return OTHER


def _op_events(xspace_path: str):
  """(hlo op name, nanoseconds) of every op event of the trace: the devices' where there are
  any, else the host's."""
  data = jax.profiler.ProfileData.from_file(xspace_path)
  devices = [p for p in data.planes if p.name.startswith('/device:')]
  events = []
  for plane in devices or data.planes:
    lines = list(plane.lines)
    ops_lines = [line for line in lines if line.name == 'XLA Ops']
    for line in ops_lines or lines:
      for event in line.events:
        stats = dict(event.stats)
        name = stats.get('hlo_op') or (event.name if ops_lines else None)
        if name and not event.name.startswith('end: '):
          events.append((str(name), float(event.duration_ns)))
  return events


def _traced_events(step: Callable[[], object], steps: int):
  folder = tempfile.mkdtemp(prefix='step-profile-')
  with jax.profiler.trace(folder):
    for _ in range(steps):
      out = step()
    jax.block_until_ready(out)
  paths = glob.glob(f'{folder}/**/*.xplane.pb', recursive=True)
  if not paths:
    raise RuntimeError(f'jax.profiler wrote no trace to {folder}')
  return _op_events(paths[0])


def profile(step: Callable[[], object], hlo_text: str, steps: int = 3) -> Dict[str, dict]:
  """{category: {'ms_per_step', 'share'}} of `steps` calls of `step` (a compiled train step
  that threads its own state), largest first. `hlo_text` is that executable's as_text()."""
  names = op_names(hlo_text)
  jax.block_until_ready(step())  # nothing left of earlier calls in the trace
  # On a busy CPU a trace now and then holds no op events at all: traced again, up to 3 times.
  for _ in range(3):
    events = _traced_events(step, steps)
    if events:
      break
  else:
    raise RuntimeError('jax.profiler traced no op events in 3 tries')
  totals = collections.Counter()
  for name, nanoseconds in events:
    totals[category(names.get(name, ''))] += nanoseconds
  whole = sum(totals.values()) or 1.0
  return {name: {'ms_per_step': round(ns / steps / 1e6, 3), 'share': round(ns / whole, 3)}
          for name, ns in totals.most_common()}
