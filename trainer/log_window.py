"""The metrics of the steps since the last log row, and the time they took: each log row
is their mean, with the window's throughput and the share of it spent waiting for data.

The first step of a run compiles: throughput and input wait count the steps after it.
"""

import time

from absl import logging
import jax
import numpy as np

from trainer import console

# Steps the host may dispatch before the device has finished them: enough to keep the device
# busy (on the CPU, where the host's own threads compute, two cost some throughput and four
# none); more would only lengthen the wait after a preemption notice (every step dispatched
# must finish before the checkpoint) and hold more batches in device memory.
RUN_AHEAD_STEPS = 4


class LogWindow:

  def __init__(self, batch_size: int, total_steps: int, pending_rows=()):
    """`pending_rows`: the window under way when the resumed checkpoint was saved."""
    self.batch_size, self.total_steps = batch_size, total_steps
    self.pending = list(pending_rows)
    self._restart()

  def _restart(self):
    self.started, self.steps, self.input_wait = time.time(), 0, 0.0

  def waited_for_input(self, seconds: float):
    self.input_wait += seconds

  def add(self, metrics):
    """A step's device metrics; blocks while the host is too far ahead of the device."""
    self.pending.append(metrics)
    if len(self.pending) > RUN_AHEAD_STEPS:
      jax.block_until_ready(self.pending[-1 - RUN_AHEAD_STEPS])

  def compiled(self, metrics, since: float):
    """The run's first step, which compiled, finished: the window's clock starts now."""
    jax.block_until_ready(metrics)
    logging.info('First step compiled and ran in %.1f s', time.time() - since)
    self._restart()

  def stepped(self):
    self.steps += 1

  def resume_clock(self):
    """After an evaluation, which is not training time."""
    self.started, self.input_wait = time.time(), 0.0

  def all_finite(self) -> bool:
    rows = jax.device_get(self.pending)
    return all(np.isfinite(r['train_loss']) and np.isfinite(r['grad_norm']) for r in rows)

  def host_rows(self):
    """The pending metrics as plain floats, for the checkpoint's run_state."""
    return [{k: float(v) for k, v in row.items()} for row in jax.device_get(self.pending)]

  def close(self, step: int, writer):
    """Writes the window's row (means, skipped records summed, throughput) and prints the
    progress line; starts the next window; returns the row."""
    rows = jax.device_get(self.pending)
    # In float64, so that a window whose first steps came back from a checkpoint (as Python
    # floats) gives the uninterrupted run's numbers.
    summary = {k: float(np.mean(np.asarray([r[k] for r in rows], np.float64))) for k in rows[0]}
    summary['skipped_records'] = float(np.sum([r['skipped_records'] for r in rows]))
    self.pending.clear()
    elapsed = max(time.time() - self.started, 1e-9)
    speed = ''
    if self.steps:  # else the window held only the compiling first step
      summary['images_per_sec'] = self.steps * self.batch_size / elapsed
      # Time blocked on the next batch: near 0 when the input pipeline keeps up.
      summary['input_wait_fraction'] = min(self.input_wait / elapsed, 1.0)
      speed = ' | %.0f images/s | input wait %.0f%% | ETA %s' % (
          summary['images_per_sec'], 100 * summary['input_wait_fraction'],
          console.duration((self.total_steps - step) * elapsed / self.steps))
    writer.write_scalars(step, summary)
    logging.info('step %d/%d | loss %.4f%s', step, self.total_steps, summary['train_loss'],
                 speed)
    self._restart()
    return summary
