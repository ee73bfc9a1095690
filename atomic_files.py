"""Small state files written whole or not at all: a crash or a full disk mid-write leaves the
previous file, never a torn one."""

import os


def write_text(path: str, text: str):
  """Writes `text` to a temporary file beside `path`, then renames it over `path`. An error
  names the file and what to do."""
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
