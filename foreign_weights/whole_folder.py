"""A folder written whole or not at all, by one writer at a time (what an export needs).

The new contents are written into a hidden folder beside the target and then take its place
in one rename (Linux's renameat2 exchange where the file system has it): a reader sees the
old folder or the new one, never a mix, and a kill or a full disk mid-write leaves the old
one as it was. A lock beside the target makes a second writer fail at once rather than
interleave with the first.
"""

import contextlib
import ctypes
import errno
import fcntl
import glob
import os
import shutil
import tempfile
from typing import Callable, Collection


class FolderBusy(OSError):
  """Another process is writing the same folder now."""


def _hidden_sibling(path: str, kind: str) -> str:
  parent, name = os.path.split(os.path.abspath(path))
  return os.path.join(parent, f'.{name}.{kind}')


@contextlib.contextmanager
def exclusive(path: str):
  """Holds `path`'s lock (a hidden file beside it) or raises FolderBusy."""
  lock_path = _hidden_sibling(path, 'lock')
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  while True:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise FolderBusy(errno.EBUSY, 'another process is writing this folder now; wait for it '
                       'to finish', path) from None
    # The previous holder may have removed the file between our open and our lock: a lock
    # on a file no longer at lock_path guards nothing.
    try:
      if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  try:
    yield
  finally:
    os.remove(lock_path)
    os.close(fd)


def _exchange(a: str, b: str) -> bool:
  """Swaps two paths in one step (renameat2's RENAME_EXCHANGE); False where the C library or
  the file system lacks it."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  error = ctypes.get_errno()
  raise OSError(error, os.strerror(error), b)


def _fsync_tree(folder: str):
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      fd = os.open(path, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)


def replace(path: str, write: Callable[[str], None], own_names: Collection[str]):
  """Makes `path` the folder `write(staging)` fills, in one step, under `path`'s lock.

  A folder already at `path` must hold `own_names`' first name (it is an earlier writing of
  the same kind; anything else is refused, never replaced); files of other names in it are
  carried into the new folder. OSError (FolderBusy, a full disk) leaves `path` as it was.
  """
  path = os.path.abspath(path)
  with exclusive(path):
    previous = _hidden_sibling(path, 'previous')
    if not os.path.exists(path) and os.path.isdir(previous):
      os.rename(previous, path)  # a writer killed between the two renames of the fallback
    for left in glob.glob(glob.escape(_hidden_sibling(path, 'partial-')) + '*'):
      shutil.rmtree(left, ignore_errors=True)
    if os.path.exists(path):
      if not os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, 'a file is in the way; choose a folder name', path)
      names = os.listdir(path)
      if names and own_names[0] not in names:
        raise FileExistsError(errno.EEXIST, f'the folder holds other files ({", ".join(sorted(names)[:5])}) '
                              f'and no {own_names[0]}; choose an empty or new folder', path)
    staging = tempfile.mkdtemp(prefix=os.path.basename(_hidden_sibling(path, 'partial-')),
                               dir=os.path.dirname(path))
    try:
      write(staging)
      if os.path.isdir(path):
        for name in set(os.listdir(path)) - set(own_names) - set(os.listdir(staging)):
          source = os.path.join(path, name)
          copy = shutil.copytree if os.path.isdir(source) else shutil.copy2
          copy(source, os.path.join(staging, name))
      _fsync_tree(staging)
      os.chmod(staging, 0o755 & ~_umask())
      if not os.path.exists(path):
        os.rename(staging, path)
      elif not _exchange(staging, path):
        os.rename(path, previous)
        os.rename(staging, path)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
      shutil.rmtree(staging, ignore_errors=True)  # after an exchange: the old contents


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
