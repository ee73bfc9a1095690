"""Preemption notices: SIGTERM (what TPU VMs and schedulers send before taking a machine)
and SIGINT (Ctrl-C) let the current step finish; the trainer then saves and exits.

All hosts must stop at the same step: on a TPU pod JAX's preemption sync point says when
(its runtime watches for the notice), elsewhere the hosts agree through a collective.
"""

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

# Exit statuses of a run stopped by a notice: 128 + the signal's number, as a shell reports.
EXIT_STATUS = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}


class Preempted(Exception):
  """Raised after the checkpoint of the step a notice stopped at is saved."""

  def __init__(self, signum, step, directory):
    super().__init__(f'preempted at step {step}; checkpoint saved to {directory}')
    self.exit_status = EXIT_STATUS.get(signum, 128 + signal.SIGTERM)


class Notice:
  """Records a SIGTERM or SIGINT while installed (a `with` block); a second Ctrl-C stops at
  once."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    signals = [signal.SIGINT]
    if not (jax.process_count() > 1 and jax.default_backend() == 'tpu'):
      signals.append(signal.SIGTERM)  # on a TPU pod, JAX's runtime watches for SIGTERM
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('Received %s: finishing this step, then saving a checkpoint and exiting '
                    '(Ctrl-C again to stop at once)', signal.Signals(signum).name)

  def reached(self, step: int) -> bool:
    """Whether every host should stop after `step` (the same answer on each)."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    stop = bool(np.any(multihost_utils.process_allgather(np.int32(local))))
    if jax.default_backend() == 'tpu' and multihost_utils.reached_preemption_sync_point(step):
      self.signum = self.signum or signal.SIGTERM
      stop = True
    return stop
