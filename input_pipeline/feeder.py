"""Batches fetched on a thread of their own, so that the training loop can stop while it waits.

A stalled input (slow storage, a hung reader) would otherwise keep a preemption notice
unanswered until the next batch arrives, which may be after the machine is gone.
"""

import queue
import threading

_END = object()


class Feeder:
  """Iterates `batches` ahead on a daemon thread, at most `depth` batches ahead, in order."""

  def __init__(self, batches, depth: int = 2):
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(iter(batches),), daemon=True,
                                    name='input-feeder')
    self._thread.start()

  def _run(self, batches):
    try:
      for batch in batches:
        if not self._put(batch):
          return
    except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
      self._put(e)
      return
    self._put(_END)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def next(self, should_stop, poll_seconds: float = 0.1):
    """The next batch; None as soon as `should_stop()` while waiting for it. Errors of the
    input pipeline are raised here; StopIteration at its end."""
    while True:
      try:
        item = self._queue.get(timeout=poll_seconds)
      except queue.Empty:
        if should_stop():
          return None
        continue
      if item is _END:
        raise StopIteration
      if isinstance(item, BaseException):
        raise item
      return item

  def close(self):
    self._stop.set()
