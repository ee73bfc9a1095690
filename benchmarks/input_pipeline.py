"""Images/s of the training input pipeline against a bare decode-and-resize loop.

  python -m benchmarks.input_pipeline --config=configs/tiny.py [--batches=60]
  python -m benchmarks.input_pipeline --config=configs/tiny.py --source_pixels=480 \
      --config.image_size=224 --config.batch_size=32 --batches=80

Both read the same shard files on the same cores: the config's laion_path, or, with
--source_pixels=N, temporary shards of N-pixel JPEGs (FLIP's LAION shards hold 480-pixel
images). The full pipeline is what training runs (read, shuffle, decode the crop window,
resize, round to uint8, flip, tokenize, batch) with the deterministic interleave that
reproducible runs need, and without it; the bare loop only decodes whole images and
resizes them, with the pipeline's resize kernel (bicubic), as parallel as tf.data makes
it. The pipelines take turns over --rounds rounds, each on a fresh iterator and in reverse
order every other round, so that a slow spell of a shared machine falls on all of them.
Prints one JSON object as its last line, with the images/s of each and the ratio full / bare,
each as {min, median, max} over the rounds (a ratio is taken within each round; target:
>= 0.9 on FLIP's kind of images, the second command; on the demo's 64-pixel images a decode
costs less than the per-image ops of the crop). The full pipeline is also timed with the
other tokenizer (`tf_bert` <-> `clip_bpe`), in the same turns.
"""

import json
import os
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from benchmarks.timing import ratio_spread, spread
from input_pipeline import augment
from input_pipeline import demo_data
from input_pipeline import tokenizer as tokenizer_lib
from input_pipeline import training_pairs

config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
flags.DEFINE_integer('batches', 60, 'Timed batches per pipeline and round (after 5 warm-up '
                     'batches).')
flags.DEFINE_integer('rounds', 3, 'Rounds in which each pipeline is timed in turn.')
flags.DEFINE_integer('source_pixels', 0, 'If set, read temporary shards of images of this '
                     'side instead of the config\'s laion_path.')
flags.DEFINE_integer('source_images', 2048, 'Images in the temporary shards.')
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
  """Decode and resize only."""
  if shard_format != training_pairs.TFRECORD:
    raise ValueError('the bare loop reads TFRecord shards')
  ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).repeat()

  def decode(record):
    image_bytes = tf.io.parse_single_example(
        record, {'jpg': tf.io.FixedLenFeature([], tf.string)})['jpg']
    return tf.image.resize(augment.decode(image_bytes), [size, size], method='bicubic')

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def write_source_shards(directory, pixels, count):
  rng = np.random.RandomState(0)
  pairs = []
  for i in range(count):
    color, background = demo_data.CLASSES[rng.randint(len(demo_data.CLASSES))]
    jpg, txt = demo_data.render(rng, color, background, pixels)
    pairs.append((f'{i:09d}', jpg, txt))
  demo_data.write_shards(directory, pairs, 8, ('tfrecord',), pixels)
  return os.path.join(directory, 'train')


def measure(config):
  shards = training_pairs.list_shards(config.laion_path)
  tokenizer = tokenizer_lib.from_config(config)
  batch = config.batch_size
  result = {'config_batch_size': batch, 'image_size': config.image_size,
            'source_pixels': FLAGS.source_pixels or None, 'cores': os.cpu_count(),
            'files': len(shards.files)}
  # The same pipeline with the other tokenizer, timed in the same turns: what a choice of
  # tokenizer costs, free of the machine's drift between runs.
  other = config.copy_and_resolve_references()
  other.aug.txt.tokenizer = 'clip_bpe' if config.aug.txt.tokenizer == 'tf_bert' else 'tf_bert'
  other_tokenizer = tokenizer_lib.from_config(other)
  pipelines = {
      'bare': lambda: bare_loop(shards.files, shards.format, config.image_size, batch),
      'full': lambda: training_pairs.train_dataset(config, tokenizer, shards, seed=0),
      'full_nondeterministic': lambda: training_pairs.train_dataset(
          config, tokenizer, shards, seed=0, deterministic=False),
      f'full_{other.aug.txt.tokenizer}': lambda: training_pairs.train_dataset(
          other, other_tokenizer, shards, seed=0)}
  rounds = {name: [] for name in pipelines}
  for turn in range(FLAGS.rounds):
    # Every other round in reverse order: a machine that slows down or speeds up within a
    # round then favours no pipeline by its place in the turn.
    order = list(pipelines.items())
    for name, build in order if turn % 2 == 0 else order[::-1]:
      rounds[name].append(images_per_second(build(), batch, FLAGS.batches))
  for name, values in rounds.items():
    result[f'{name}_images_per_sec'] = spread(values, 1)
  # Each ratio is taken within a round, then spread over the rounds.
  result['ratio_full_to_bare'] = ratio_spread(rounds['full'], rounds['bare'])
  result['ratio_deterministic_to_not'] = ratio_spread(rounds['full'],
                                                      rounds['full_nondeterministic'])
  result['full_images_per_sec_per_core'] = spread(
      [v / os.cpu_count() for v in rounds['full']], 1)
  result['tokenizer'] = config.aug.txt.tokenizer
  result[f'ratio_full_{other.aug.txt.tokenizer}_to_bare'] = ratio_spread(
      rounds[f'full_{other.aug.txt.tokenizer}'], rounds['bare'])
  return result


def main(argv):
  del argv
  config = FLAGS.config
  with tempfile.TemporaryDirectory() as directory:
    if FLAGS.source_pixels:
      with config.unlocked():
        config.laion_path = write_source_shards(directory, FLAGS.source_pixels,
                                                FLAGS.source_images)
        config.shuffle_buffer = min(config.shuffle_buffer, FLAGS.source_images // 2)
    result = measure(config)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
