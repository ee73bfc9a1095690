"""One run per workdir at a time: an advisory lock on WORKDIR/.lock.

The operating system releases the lock when its process ends, however it ends, so a crashed
run never leaves it stuck. Process 0 takes it for the whole job; a bucket path (gs://...)
has no file locks and is not locked.
"""

import contextlib
import fcntl
import os
import socket

import jax


class WorkdirBusy(Exception):
  """Another run holds the workdir."""


@contextlib.contextmanager
def held(workdir: str):
  if jax.process_index() != 0 or '://' in workdir:
    yield
    return
  path = os.path.join(workdir, '.lock')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir} is a file; give the run a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
    lock_file = open(path, 'a+', encoding='utf-8')
  except OSError as e:
    raise PermissionError(f'--workdir={workdir} cannot be written ({e.strerror or e}); give '
                          'the run a directory it may write') from e
  with lock_file as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or 'another process'
      raise WorkdirBusy(f'--workdir={workdir} is in use by another run ({owner}); wait for '
                        'it to end, or give this run another --workdir') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
