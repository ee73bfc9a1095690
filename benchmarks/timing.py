"""Wall-clock timing for benchmarks: warm-up calls absorb compilation, and what is compared
is timed in turns, so that a slow spell of a shared machine falls on every contender.

A ratio is taken within each round (both sides timed moments apart) and reported as its
spread over the rounds: {'min', 'median', 'max'}.
"""

import time
from typing import Callable, Dict, List, Sequence

import jax
import numpy as np


def _call_seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def median_seconds(fn, repeats, warmup=2):
  """Median seconds of `repeats` calls of `fn`, each waited on until its result is ready."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  return float(np.median([_call_seconds(fn) for _ in range(repeats)]))


def stepping(step_fn, state, batch, key) -> Callable[[], object]:
  """A call that runs one train step on the state the last one returned (so that a step
  that donates its input state stays valid) and returns its metrics."""
  current = [state]

  def one_step():
    current[0], metrics = step_fn(current[0], batch, key)
    return metrics

  return one_step


def median_step_seconds(step_fn, state, batch, key, steps, warmup=2):
  """Median seconds of a train step."""
  return median_seconds(stepping(step_fn, state, batch, key), steps, warmup)


def interleaved_seconds(calls: Dict[str, Callable[[], object]], rounds: int, repeats: int,
                        warmup: int = 2) -> Dict[str, List[float]]:
  """{name: [median seconds of `repeats` calls, per round]}. In each round every call is
  timed in turn, in reverse order every other round, so that a machine that slows down or
  speeds up within a round favours none by its place in the turn."""
  for call in calls.values():
    for _ in range(warmup):
      jax.block_until_ready(call())
  names = list(calls)
  seconds = {name: [] for name in names}
  for turn in range(rounds):
    for name in (names if turn % 2 == 0 else names[::-1]):
      seconds[name].append(float(np.median([_call_seconds(calls[name])
                                            for _ in range(repeats)])))
  return seconds


def _rounded(value: float, digits: int) -> float:
  # At least three significant figures: a small share is printed small, never as 0.
  if value == 0 or not np.isfinite(value):
    return value
  return round(value, max(digits, 2 - int(np.floor(np.log10(abs(value))))))


def spread(values: Sequence[float], digits: int = 4) -> Dict[str, float]:
  """{'min', 'median', 'max'} of per-round values, to `digits` decimals or three
  significant figures, whichever is finer."""
  values = np.asarray(values, np.float64)
  return {'min': _rounded(float(values.min()), digits),
          'median': _rounded(float(np.median(values)), digits),
          'max': _rounded(float(values.max()), digits)}


def ratio_spread(numerators: Sequence[float], denominators: Sequence[float],
                 digits: int = 3) -> Dict[str, float]:
  """The spread of numerator / denominator taken round by round."""
  return spread([a / b for a, b in zip(numerators, denominators)], digits)
