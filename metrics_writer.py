"""Metric writers: TensorBoard and logs from clu, plus WORKDIR/metrics.jsonl for scripts."""

import json
import os

from clu import metric_writers
from clu.metric_writers import interface
import jax
import numpy as np


class JsonlWriter(interface.MetricWriter):
  """Appends one JSON object per write of scalars: {"step": S, name: value, ...}.

  Only scalars have a place in the file; images, texts and the like go to TensorBoard.
  """

  def __init__(self, path: str):
    self._file = open(path, 'a', encoding='utf-8')

  def write_scalars(self, step, scalars):
    row = {'step': int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class RunWriter(metric_writers.MultiWriter):
  """Logs, TensorBoard and metrics.jsonl; `tensorboard` alone also gets the run's config."""

  def __init__(self, workdir: str):
    self.tensorboard = metric_writers.SummaryWriter(workdir)
    super().__init__([metric_writers.LoggingWriter(), self.tensorboard,
                      JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])

  def write_config(self, step: int, config_json: str, flat: dict):
    """The config as text (the whole file) and as hparams (the fields, for comparing runs)."""
    self.tensorboard.write_texts(step, {'config': f'```\n{config_json}\n```'})
    self.tensorboard.write_hparams({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                                    for k, v in flat.items()})


def create_writer(workdir: str) -> interface.MetricWriter:
  """Process 0 writes TensorBoard events, logs and metrics.jsonl; other hosts only log."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  os.makedirs(workdir, exist_ok=True)
  return RunWriter(workdir)
