"""How often each token id occurs in the training captions: what CLIPF's frequency reduction
of the text reads (masking/text.py). A run counts them once and keeps them in its workdir
(trainer/text_counts.py).

The captions counted are the first `frequency_captions` usable ones of the shard files in
their listed order, the same on every host, tokenized as training tokenizes them (start,
end and padding ids are not counted).
"""

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
