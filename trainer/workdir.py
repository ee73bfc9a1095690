"""A run's workdir: where each of its files is, one run in it at a time, and small files
written whole or not at all.

  WORKDIR/checkpoints/STEP/   orbax checkpoints (checkpoints.py)
  WORKDIR/config.json         the run's config, for people and tools (saved_config.py)
  WORKDIR/metrics.jsonl       every scalar row (metric_writers.py), beside TensorBoard's events
  WORKDIR/reevaluated/        TensorBoard events of evaluations of a step evaluated before
  WORKDIR/config_changes.jsonl  what each resume changed in the config (resume.py)
  WORKDIR/train.log           every log line (train.<process>.log on other hosts)
  WORKDIR/text_token_counts.npz  the captions' token counts of frequency text reduction
  WORKDIR/.lock               held by the run in progress

The lock is an advisory one that the operating system releases when its process ends,
however it ends, so a crashed run never leaves it stuck. Process 0 takes it for the whole
job; a bucket path (gs://...) has no file locks and is not locked.
"""

import contextlib
import dataclasses
import fcntl
import io
import os
import socket
from typing import Optional

import jax
import numpy as np

CHECKPOINTS = 'checkpoints'
CONFIG_JSON = 'config.json'
METRICS_JSONL = 'metrics.jsonl'
LOG_FILE = 'train.log'


def is_bucket(path: str) -> bool:
  return '://' in path


@dataclasses.dataclass(frozen=True)
class Workdir:
  root: str

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.root, CHECKPOINTS)

  @property
  def config_json(self) -> str:
    return os.path.join(self.root, CONFIG_JSON)

  @property
  def metrics_jsonl(self) -> str:
    return os.path.join(self.root, METRICS_JSONL)

  @property
  def reevaluated(self) -> str:
    return os.path.join(self.root, 'reevaluated')

  @property
  def config_changes(self) -> str:
    return os.path.join(self.root, 'config_changes.jsonl')

  @property
  def text_token_counts(self) -> str:
    return os.path.join(self.root, 'text_token_counts.npz')

  @property
  def picture_examples(self) -> str:
    return os.path.join(self.root, 'picture_examples.npz')

  @property
  def lock(self) -> str:
    return os.path.join(self.root, '.lock')

  def log_file_name(self, process_index: int) -> str:
    return LOG_FILE if process_index == 0 else f'train.{process_index}.log'

  def shown(self) -> str:
    """The root as the console names it: absolute, unless it is a bucket."""
    return self.root if is_bucket(self.root) else os.path.abspath(self.root)


def checkpoints_in(path: str) -> str:
  """The checkpoints folder of `path`, a run's workdir or that folder itself (absolute)."""
  path = os.path.abspath(path)
  inside = os.path.join(path, CHECKPOINTS)
  return inside if os.path.isdir(inside) else path


def run_of(checkpoints_dir: str) -> Workdir:
  """The workdir of a run's checkpoints folder (a folder of steps not named `checkpoints`
  is taken as the workdir itself)."""
  path = os.path.abspath(checkpoints_dir)
  return Workdir(os.path.dirname(path) if os.path.basename(path) == CHECKPOINTS else path)


class WorkdirBusy(Exception):
  """Another run holds the workdir."""


@contextlib.contextmanager
def held(workdir: Workdir):
  """One run per workdir: the lock, held for the block (process 0, a local workdir)."""
  root = workdir.root
  if jax.process_index() != 0 or is_bucket(root):
    yield
    return
  if os.path.exists(root) and not os.path.isdir(root):
    raise NotADirectoryError(f'--workdir={root} is a file; give the run a directory')
  try:
    os.makedirs(root, exist_ok=True)
    lock_file = open(workdir.lock, 'a+', encoding='utf-8')
  except OSError as e:
    raise PermissionError(f'--workdir={root} cannot be written ({e.strerror or e}); give '
                          'the run a directory it may write') from e
  with lock_file as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or 'another process'
      raise WorkdirBusy(f'--workdir={root} is in use by another run ({owner}); wait for '
                        'it to end, or give this run another --workdir') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_text(path: str, text: str):
  """Writes `text` to a temporary file beside `path`, then renames it over `path`: a crash or
  a full disk mid-write leaves the previous file, never a torn one. An error names the file
  and what to do."""
  temporary = f'{path}.tmp-{os.getpid()}'
  try:
    with open(temporary, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as e:
    try:
      os.remove(temporary)
    except OSError:
      pass
    raise OSError(f'cannot write {path} ({e.strerror or e}); free some space or fix the '
                  'permissions, then run the same command again') from e


def write_arrays(path: str, **arrays):
  """Writes `arrays` as one .npz at `path` (a local file or a bucket's), through a temporary
  file renamed over it: a crash mid-write leaves the previous file, never a torn one."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (for buckets, when written)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  temporary = f'{path}.tmp-{os.getpid()}'
  with tf.io.gfile.GFile(temporary, 'wb') as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read_arrays(path: str) -> Optional[dict]:
  """{name: array} of an .npz written by write_arrays, or None when there is none."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, 'rb') as f:
    return dict(np.load(io.BytesIO(f.read())))
