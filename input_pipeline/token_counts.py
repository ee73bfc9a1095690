"""How often each token id occurs in the training captions: what CLIPF's frequency reduction
of the text reads (masking/text.py), counted once per run and kept beside it.

The captions counted are the first `frequency_captions` usable ones of the shard files in
their listed order, the same on every host, tokenized as training tokenizes them (start,
end and padding ids are not counted).
"""

import io
import os

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from input_pipeline import training_pairs

_BATCH = 1024


def count(config, tokenizer, shards: training_pairs.Shards, captions: int):
  """(counts [vocab_size] int64, captions read)."""
  def text_of(example):
    if shards.format == training_pairs.TFRECORD:
      return training_pairs.usable_caption(training_pairs.parse_tfrecord(example['record'])[1])
    return training_pairs.usable_caption(example['txt'])

  ds = tf.data.Dataset.from_tensor_slices(shards.files).interleave(
      training_pairs.read_file(shards.format), cycle_length=1)
  ds = ds.map(text_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().take(captions).batch(_BATCH).map(
      tokenizer, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  read = 0
  for ids in ds.as_numpy_iterator():
    read += len(ids)
    counts += np.bincount(ids.reshape(-1), minlength=tokenizer.vocab_size)
  for special in (0, tokenizer.start_id, tokenizer.end_id):
    if special is not None:
      counts[special] = 0
  return counts, read


def read_counts(path: str):
  """(counts, captions counted) kept in a run's text_token_counts.npz."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    saved = np.load(io.BytesIO(f.read()))
    return saved['counts'], int(saved['captions'])


def load_or_count(config, tokenizer, shards, path: str) -> np.ndarray:
  """The run's counts from `path` (WORKDIR/text_token_counts.npz), counted and written there
  first when the run has none, so that a resumed run reduces its captions as before."""
  if tf.io.gfile.exists(path):
    counts, read = read_counts(path)
    if len(counts) != tokenizer.vocab_size:
      raise ValueError(f'{path} counts {len(counts)} token ids, the {config.aug.txt.tokenizer} '
                       f'tokenizer has {tokenizer.vocab_size}: it belongs to a run with '
                       'another tokenizer; move it away to count again')
    logging.info('Text frequencies: the token counts of %d captions, from %s', read, path)
    return counts
  counts, read = count(config, tokenizer, shards,
                       config.model.model_txt.masking.frequency_captions)
  if not read:
    raise ValueError(f'config.laion_path={config.laion_path!r}: no usable caption to count '
                     'token frequencies from (model.model_txt.masking.policy=frequency)')
  logging.info('Text frequencies: counted the tokens of %d captions (%d distinct ids), kept '
               'in %s', read, int((counts > 0).sum()), path)
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, counts=counts, captions=read)
    temporary = f'{path}.tmp-{os.getpid()}'
    with tf.io.gfile.GFile(temporary, 'wb') as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(temporary, path, overwrite=True)
  return counts
