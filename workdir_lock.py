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
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, '.lock')
  with open(path, 'a+', encoding='utf-8') as f:
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
