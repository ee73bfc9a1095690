"""The run's evaluations (evaluators/, built from the config): which are due at a step,
running them, their rows in the metrics and the table of the last results."""

import dataclasses
import time
from typing import Any, Dict, List

from absl import logging
from jax.experimental import multihost_utils
import numpy as np

from trainer import metric_writers
from trainer.cadence import Cadence

# Evaluation results that count things, printed as whole numbers.
_COUNTS = ('images', 'captions', 'skipped_images')


@dataclasses.dataclass
class Evaluations:
  built: Dict[str, Any]  # {name: (its config, the evaluator)}, evaluators.build's
  writer: Any
  rng: Any
  masked: bool = False  # masked inference (masking.at_eval)
  latest: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> List[str]:
    return list(self.built)

  def due(self, step: int, cadence: Cadence) -> List[str]:
    return [name for name, (ecfg, _) in self.built.items()
            if cadence.evaluation_due(step, ecfg.every_steps)]

  def unwritten(self, step: int, cadence: Cadence, workdir) -> List[str]:
    """The evaluations due at `step` whose rows metrics.jsonl lacks (a run stopped after the
    checkpoint of `step` and before them). Process 0's file decides for every host."""
    due = self.due(step, cadence)
    if not due:
      return []
    evaluated = metric_writers.evaluated_names(workdir, step)
    written = multihost_utils.broadcast_one_to_all(np.asarray([n in evaluated for n in due]))
    return [name for name, done in zip(due, np.ravel(written)) if not done]

  def run(self, state, step: int, names=None) -> Dict[str, float]:
    """Runs the evaluations `names` (all by default) on `state`; writes and returns their
    `<name>/<metric>` rows."""
    written = {}
    for name, (ecfg, evaluator) in self.built.items():
      if names is not None and name not in names:
        continue
      started = time.time()
      scores = evaluator(state, self.rng)
      self.latest[name] = scores
      written.update({f'{name}/{metric}': value for metric, value in scores.items()})
      logging.info('%s (%s) at step %d%s: %s [%.0f s]', name, ecfg.type, step,
                   ' (masked inference)' if self.masked else '', _format_scores(scores),
                   time.time() - started)
    if written:
      self.writer.write_scalars(step, written)
      self.writer.flush()
    return written

  def log_results(self):
    """The last result of every evaluation, as one markdown table."""
    if self.latest:
      logging.info('Results:\n%s', '\n'.join(table(self.latest)))


def _format_value(metric, value) -> str:
  return f'{value:.0f}' if metric in _COUNTS or value >= 1.5 else f'{value:.4f}'


def _format_scores(scores) -> str:
  return ', '.join(f'{k} {_format_value(k, v)}' for k, v in scores.items())


def table(latest_scores) -> List[str]:
  """The lines of a markdown table of {evaluation: {metric: value}}."""
  if not latest_scores:
    return []
  lines = ['| evaluation | metric | value |', '| --- | --- | --- |']
  for name, scores in latest_scores.items():
    for metric, value in scores.items():
      lines.append(f'| {name} | {metric} | {_format_value(metric, value)} |')
  return lines
