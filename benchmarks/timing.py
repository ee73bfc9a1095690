"""Wall-clock medians for benchmarks, after warm-up calls that absorb compilation."""

import time

import jax
import numpy as np


def median_seconds(fn, repeats, warmup=2):
  """Median seconds of `repeats` calls of `fn`, each waited on until its result is ready."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return float(np.median(seconds))


def median_step_seconds(step_fn, state, batch, key, steps, warmup=2):
  """Median seconds of a train step; each step gets the state the last one returned, so a
  step that donates its input state stays valid."""
  current = [state]

  def one_step():
    current[0], metrics = step_fn(current[0], batch, key)
    return metrics

  return median_seconds(one_step, steps, warmup)
