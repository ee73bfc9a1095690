"""What a run prints: its own lines on the console, everything else in the workdir's log file.

The console shows the run's start-up block, progress, evaluations and results (records at
INFO from this project's modules) and every warning or error. What libraries log at INFO
(clu's work-unit notes and metric dumps, orbax's save steps, JAX's backend probing) and the
run's detail lines (`detail`) go only to WORKDIR/train.log, with the full absl prefix.
TensorFlow's native side prints straight to the process's stderr as it loads and looks for
GPUs (it only feeds data here); `native_stderr_filtered` sends that chatter to the log too.
"""

import contextlib
import functools
import logging as std_logging
import os
import re
import shutil
import sys
import tempfile
from logging import handlers as log_handlers

from absl import logging

from trainer import workdir as workdir_lib

# The project's own modules: their INFO records are the console's.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

# Native lines printed while TensorFlow loads or probes for devices it is not given.
_NATIVE_NOISE = re.compile('|'.join((
    r'All log messages before absl::InitializeLog\(\) is called',
    r'oneDNN custom operations are on',
    r'oneDNN supports DT_\w+ only on platforms with',
    r'cudart_stub\.cc',
    r'Could not find cuda drivers',
    r'failed call to cuInit',
    r'cpu_feature_guard\.cc',
    r'To enable the following instructions: ',
    r'TF-TRT Warning',
    r'Unable to register cu(DNN|FFT|BLAS) factory',
    r'computation placer already registered',
    r'cuda_(blas|dnn|fft)\.cc',
    r'Attempting to register factory for plugin',
    # The TPU compiler's start-up away from a TPU VM (tools/plan.py).
    r'Failed to find host bounds for accelerator type',
    r'could not determine TPU',
    r'libtpu_init_utils\.cc',
    r'=== Source Location Trace: ===',
    r'unexpected worker hostname',
)))

_DETAIL = 'detail'


def detail(message, *args):
  """Logs a line for the log file only (a checkpoint written, a picture drawn)."""
  logging.info(message, *args, extra={_DETAIL: True})


def error_for_the_log(message):
  """Logs the line an error exit prints (the console shows it once, as printed)."""
  logging.error('%s', message, extra={_DETAIL: True})


class _ConsoleFilter(std_logging.Filter):
  """The run's own INFO lines and everyone's warnings and errors."""

  def filter(self, record):
    if getattr(record, _DETAIL, False):
      return False
    if record.levelno >= std_logging.WARNING:
      return True
    own = record.pathname.startswith(_ROOT) and 'site-packages' not in record.pathname
    return record.levelno >= std_logging.INFO and own


class _ConsoleFormatter(std_logging.Formatter):
  """`HH:MM:SS message`, with the level named from WARNING up."""

  def format(self, record):
    level = '' if record.levelno < std_logging.WARNING else f'{record.levelname}: '
    text = f'{self.formatTime(record, "%H:%M:%S")} {level}{record.getMessage()}'
    # A failed save's traceback stays in the log file: the run's own error says what
    # happened.
    if record.exc_info and '/orbax/' not in record.pathname:
      text += '\n' + self.formatException(record.exc_info)
    return text


_buffer = None


def setup():
  """The console as described above; records for the log file wait until `log_to`."""
  global _buffer
  if _buffer is None:
    absl_handler = logging.get_absl_handler()
    absl_handler.setFormatter(_ConsoleFormatter())
    absl_handler.addFilter(_ConsoleFilter())
    # Records wait here until the workdir exists (a refused run creates none).
    _buffer = log_handlers.MemoryHandler(capacity=1_000_000,
                                         flushLevel=std_logging.CRITICAL + 1)
    std_logging.getLogger().addHandler(_buffer)


def log_to(workdir: workdir_lib.Workdir, process_index: int = 0):
  """Sends the log, from its first line, to WORKDIR/train.log (train.<host>.log on other
  hosts; the temporary directory for a bucket workdir). Returns its path, or None when
  `setup` was not called (the tests, a library user)."""
  if _buffer is None:
    return None
  folder = tempfile.gettempdir() if workdir_lib.is_bucket(workdir.root) else workdir.root
  # Process 0 creates the workdir; another host may get here first.
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, workdir.log_file_name(process_index))
  handler = std_logging.FileHandler(path, encoding='utf-8')
  handler.setFormatter(logging.PythonFormatter())
  if _buffer.target is not None:  # a tool running several runs: one log each
    _buffer.target.close()
  _buffer.setTarget(handler)
  _buffer.flush()
  _buffer.capacity = 1  # from here on each record is written as it comes
  return path


def duration(seconds: float) -> str:
  """`1h02m` or `3m07s`."""
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


@contextlib.contextmanager
def native_stderr_filtered():
  """Runs the block with file descriptor 2 captured; then sends the known device-probing and
  start-up chatter to the log file alone and prints every other line as it came (Python's
  own writes to stderr in the block among them)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode('utf-8', errors='replace').splitlines():
        if _NATIVE_NOISE.search(line):
          detail('%s', line)
        elif line.strip():
          print(line, file=sys.stderr)
      sys.stderr.flush()


@contextlib.contextmanager
def private_temp_dir():
  """Points the process's temporary files (TensorFlow's autograph modules among them) at a
  folder of its own, removed however the block ends."""
  folder = tempfile.mkdtemp(prefix='mlip-')
  previous = tempfile.tempdir
  tempfile.tempdir = folder
  try:
    yield folder
  finally:
    tempfile.tempdir = previous
    shutil.rmtree(folder, ignore_errors=True)


def one_line_errors(program: str, kinds=(ValueError, OSError)):
  """A tool's main, with the errors a user can cause (`kinds`) ended in one line naming
  `program`; --verbosity=1 shows their tracebacks instead."""
  def wrap(main):
    @functools.wraps(main)
    def wrapped(argv):
      try:
        return main(argv)
      except kinds as e:
        if logging.get_verbosity() >= logging.DEBUG:
          raise
        raise SystemExit(f'{program}: {e} (--verbosity=1 shows where it was raised)') from None
    return wrapped
  return wrap
