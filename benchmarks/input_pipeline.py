"""Images/s of the training input pipeline against a bare decode-and-resize loop.

  python -m benchmarks.input_pipeline --config=configs/tiny.py [--batches=60]

Both read the same shard files (the config's laion_path) on the same cores: the full
pipeline (read, shuffle, decode, crop, flip, normalise, tokenize, batch, with the
deterministic interleave that reproducible runs need, and without it), and a bare tf.data
loop that only decodes and resizes. Prints one JSON object as its last line, with the
images/s of each and the ratio full / bare (target: >= 0.9).
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import laion
from input_pipeline import tokenizer as tokenizer_lib

config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
flags.DEFINE_integer('batches', 60, 'Timed batches per pipeline (after 5 warm-up batches).')
FLAGS = flags.FLAGS


def images_per_second(dataset, batch_size, batches):
  iterator = iter(dataset)
  for _ in range(5):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def bare_loop(files, shard_format, size, batch_size):
  """Decode and resize only, as parallel as tf.data makes it."""
  if shard_format != laion.TFRECORD:
    raise ValueError('the bare loop reads TFRecord shards')
  ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).repeat()

  def decode(record):
    image_bytes = tf.io.parse_single_example(
        record, {'jpg': tf.io.FixedLenFeature([], tf.string)})['jpg']
    return tf.image.resize(augment.decode(image_bytes), [size, size])

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def main(argv):
  del argv
  config = FLAGS.config
  shards = laion.list_shards(config.laion_path)
  tokenizer = tokenizer_lib.from_config(config)
  batch = config.batch_size
  result = {'config_batch_size': batch, 'image_size': config.image_size,
            'cores': os.cpu_count(), 'files': len(shards.files)}
  result['bare_images_per_sec'] = images_per_second(
      bare_loop(shards.files, shards.format, config.image_size, batch), batch, FLAGS.batches)
  for name, deterministic in (('full', True), ('full_nondeterministic', False)):
    dataset = laion.train_dataset(config, tokenizer, shards, seed=0,
                                  deterministic=deterministic)
    result[f'{name}_images_per_sec'] = images_per_second(dataset, batch, FLAGS.batches)
  result['ratio_full_to_bare'] = result['full_images_per_sec'] / result['bare_images_per_sec']
  result['ratio_deterministic_to_not'] = (result['full_images_per_sec'] /
                                          result['full_nondeterministic_images_per_sec'])
  result['full_images_per_sec_per_core'] = result['full_images_per_sec'] / os.cpu_count()
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                    for k, v in result.items()}))


if __name__ == '__main__':
  app.run(main)
