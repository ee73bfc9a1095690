"""The house rules of docs/architecture.md: which package may import which, and what the
root holds. Imports are read from the source (function-local ones included)."""

import ast
import os

from tests.conftest import ROOT

# Each room (a package, or an entry point at the root) and the rooms it may import. Data and
# dependencies flow one way: a room never imports one listed above it.
MAY_IMPORT = {
    'masking': set(),
    'configs': set(),
    'models': set(),
    'input_pipeline': set(),
    'foreign_weights': {'models', 'input_pipeline'},
    'trainer': {'masking', 'models', 'input_pipeline', 'foreign_weights', 'configs'},
    'evaluators': {'masking', 'models', 'input_pipeline', 'trainer'},
    'train': {'masking', 'models', 'input_pipeline', 'trainer', 'evaluators'},
    'main': {'trainer', 'train'},
    'benchmarks': {'masking', 'models', 'input_pipeline', 'foreign_weights', 'trainer',
                   'configs'},
    'tools': {'masking', 'models', 'input_pipeline', 'foreign_weights', 'trainer',
              'evaluators', 'train', 'configs', 'benchmarks'},
}
ENTRY_POINTS = ('main.py', 'train.py')


def _room_of_file(path):
  relative = os.path.relpath(path, ROOT)
  first = relative.split(os.sep)[0]
  return first[:-3] if first.endswith('.py') else first


def _python_files():
  for room in MAY_IMPORT:
    if os.path.isdir(os.path.join(ROOT, room)):
      for folder, _, names in os.walk(os.path.join(ROOT, room)):
        yield from (os.path.join(folder, n) for n in names if n.endswith('.py'))
    else:
      yield os.path.join(ROOT, f'{room}.py')


def _imported_rooms(path):
  """The project's rooms that `path` imports."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.append(node.module)
  return {name.split('.')[0] for name in names} & set(MAY_IMPORT)


def test_each_room_imports_only_what_it_may():
  broken = []
  for path in _python_files():
    room = _room_of_file(path)
    for other in _imported_rooms(path) - MAY_IMPORT[room] - {room}:
      broken.append(f'{os.path.relpath(path, ROOT)} imports {other}')
  assert not broken, broken


def test_the_rules_have_no_circle():
  done, visiting = set(), set()

  def visit(room, trail):
    assert room not in visiting, f'a circle: {" -> ".join(trail + [room])}'
    if room in done:
      return
    visiting.add(room)
    for other in MAY_IMPORT[room]:
      visit(other, trail + [room])
    visiting.discard(room)
    done.add(room)

  for room in MAY_IMPORT:
    visit(room, [])


def test_the_root_holds_the_entry_points_and_packages_only():
  modules = sorted(n for n in os.listdir(ROOT) if n.endswith('.py'))
  assert modules == sorted(ENTRY_POINTS)
  for name in MAY_IMPORT:
    if name not in ('main', 'train'):
      assert os.path.isfile(os.path.join(ROOT, name, '__init__.py')), name


def test_the_step_and_its_gpu_benchmarks_import_no_tensorflow():
  """An accelerator host measuring the step has jax and torch but no TensorFlow; and where
  TensorFlow is loaded before torch's compiler, torch's import crashes the process."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  # Each benchmark defines its own flags: one process each.
  for modules in (('trainer.step', 'trainer.fit', 'benchmarks.step_time'),
                  ('benchmarks.versus_open_clip',)):
    done = subprocess.run(
        [sys.executable, '-c', f'import sys\nfor m in {modules}: __import__(m)\n'
         'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == '[]', modules
