"""Metric writers: TensorBoard and logs from clu, plus WORKDIR/metrics.jsonl for scripts."""

import json
import os
from typing import Optional

from clu import metric_writers
from clu.metric_writers import interface
import jax
from jax.experimental import multihost_utils
import numpy as np
from tensorboard.compat.proto import event_pb2

from trainer import workdir as workdir_lib


class JsonlWriter(interface.MetricWriter):
  """Appends one JSON object per write of scalars: {"step": S, name: value, ...}.

  Only scalars have a place in the file; images, texts and the like go to TensorBoard.
  """

  def __init__(self, path: str, start_step: Optional[int] = None, replace: bool = False):
    """A run resumed at `start_step` keeps the rows up to that step and goes on after them:
    rows of later steps (written before a kill, and to be written again) are dropped. A last
    line cut short by a kill is removed either way. With `replace`, a value written at a
    step replaces the one the file holds under its name at that step (a re-evaluation)."""
    self._path, self._replace = path, replace
    rows = read_rows(path)
    kept = [row for row in rows if start_step is None or row['step'] <= start_step]
    if os.path.exists(path) and (len(kept) < len(rows) or not _ends_whole(path)):
      workdir_lib.write_text(path, ''.join(json.dumps(row) + '\n' for row in kept))
    self._file = open(path, 'a', encoding='utf-8')

  def write_scalars(self, step, scalars):
    row = {'step': int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    if self._replace:
      self._drop(row['step'], set(scalars))
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()

  def _drop(self, step, names):
    """Removes `names` from the rows at `step`, and rows left with no value."""
    rows = read_rows(self._path)
    kept = []
    for row in rows:
      if row['step'] == step:
        row = {k: v for k, v in row.items() if k not in names}
      if len(row) > 1:
        kept.append(row)
    if len(kept) != len(rows) or any(len(a) != len(b) for a, b in zip(kept, rows)):
      self._file.close()
      workdir_lib.write_text(self._path, ''.join(json.dumps(row) + '\n' for row in kept))
      self._file = open(self._path, 'a', encoding='utf-8')

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


def _ends_whole(path: str) -> bool:
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


def read_rows(path: str):
  """The rows of a metrics.jsonl ([] when there is none); a last line cut short (a run
  killed while writing it) is skipped."""
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError as e:
      if number == len(lines):  # the torn last line
        continue
      raise ValueError(f'{path}, line {number}, is not a metrics row ({e})') from e
  return rows


def evaluated_names(workdir: workdir_lib.Workdir, step: int) -> set:
  """The evaluations whose `<name>/<metric>` rows WORKDIR/metrics.jsonl holds at `step`."""
  return {key.split('/')[0] for row in read_rows(workdir.metrics_jsonl) if row['step'] == step
          for key in row if '/' in key}


def evaluated_at(workdir: workdir_lib.Workdir, step: int, names) -> bool:
  """Whether WORKDIR/metrics.jsonl holds results of any of the evaluations `names` at
  `step`."""
  return bool(evaluated_names(workdir, step) & set(names))


def drop_events_after(folder: str, step: int) -> set:
  """Rewrites the TensorBoard event files in `folder` without their events after `step`: a
  run resumed at `step` writes those again, and TensorBoard would show both (it purges
  only at a session-start event, which tf.summary does not write). A record cut short by a
  kill is dropped too. Returns the tags of the summaries kept at `step` itself."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  at_step = set()
  for path in sorted(tf.io.gfile.glob(os.path.join(folder, 'events.out.tfevents.*'))):
    kept, dropped = [], 0
    records = tf.data.TFRecordDataset(path).as_numpy_iterator()
    try:
      for record in records:
        event = event_pb2.Event.FromString(record)
        if event.step > step and event.HasField('summary'):
          dropped += 1
        else:
          kept.append(record)
          if event.step == step:
            at_step.update(value.tag for value in event.summary.value)
    except tf.errors.DataLossError:  # the last record, cut short
      dropped += 1
    if dropped:
      temporary = f'{path}.tmp-{os.getpid()}'
      with tf.io.TFRecordWriter(temporary) as out:
        for record in kept:
          out.write(record)
      tf.io.gfile.rename(temporary, path, overwrite=True)
  return at_step


def written_at_start(writer, tag: str) -> bool:
  """Whether the TensorBoard events of the step a run resumed at hold `tag` (process 0's
  writer decides for every host)."""
  written = tag in getattr(writer, 'tags_at_start', ())
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(written)))


class RunWriter(metric_writers.MultiWriter):
  """Log file, TensorBoard and metrics.jsonl; `tensorboard` alone also gets the run's config.

  A re-evaluation (`again`: results at that step were written before) replaces those values
  in metrics.jsonl and writes its TensorBoard events under WORKDIR/reevaluated/, a run of
  their own beside the training curves, which keep one point per step.
  """

  def __init__(self, workdir: workdir_lib.Workdir, start_step: Optional[int] = None,
               again: bool = False):
    self.workdir = workdir.root
    self.tags_at_start = set()
    if start_step is not None and not again:
      self.tags_at_start = drop_events_after(workdir.root, start_step)
    self.tensorboard = metric_writers.SummaryWriter(
        workdir.reevaluated if again else workdir.root)
    super().__init__([metric_writers.LoggingWriter(), self.tensorboard,
                      JsonlWriter(workdir.metrics_jsonl, start_step, replace=again)])

  def _guarded(self, call, *args, **kwargs):
    """`call`, with a failure to write (a full disk, no permission) said in one line that
    names the files."""
    try:
      return call(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (tf.errors and OSError alike)
      cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise OSError(f'cannot write the metrics in {self.workdir} (metrics.jsonl, TensorBoard '
                    f'events): {cause}; free some space or fix the permissions, then run the '
                    'same command to resume from the last checkpoint') from e

  def write_scalars(self, step, scalars):
    self._guarded(super().write_scalars, step, scalars)

  def write_images(self, step, images):
    self._guarded(super().write_images, step, images)

  def write_texts(self, step, texts):
    self._guarded(super().write_texts, step, texts)

  def flush(self):
    self._guarded(super().flush)

  def write_config(self, step: int, config_json: str, flat: dict):
    """The config as text (the whole file) and as hparams (the fields, for comparing runs)."""
    self._guarded(self.tensorboard.write_texts, step,
                  {'config': f'```\n{config_json}\n```'})
    self._guarded(self.tensorboard.write_hparams,
                  {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                   for k, v in flat.items()})


def create_writer(workdir: workdir_lib.Workdir, start_step: Optional[int] = None,
                  again: bool = False) -> interface.MetricWriter:
  """Process 0 writes TensorBoard events, logs and metrics.jsonl (a training run resumed at
  `start_step` goes on from that step's rows; `again`: see RunWriter); other hosts only
  log."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  os.makedirs(workdir.root, exist_ok=True)
  return RunWriter(workdir, start_step, again)
