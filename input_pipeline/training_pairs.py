"""Training image-caption pairs from img2dataset shards: TFRecord or webdataset `.tar`.

Each host reads its own slice of the shard files. Records whose image cannot be decoded, or
whose caption is missing, empty or not UTF-8, are dropped and counted: every batch carries, per example, how many records were
skipped just before it in the stream, so that the sum over batches is the exact total.
"""

import dataclasses
import posixpath
import tarfile
from typing import List

from absl import logging
import numpy as np
import tensorflow as tf

from input_pipeline import augment

TFRECORD = 'tfrecord'
WEBDATASET = 'webdataset'
IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')


@dataclasses.dataclass(frozen=True)
class Shards:
  format: str
  files: List[str]


def _format_of(path: str):
  if path.endswith('.tar'):
    return WEBDATASET
  if '.tfrecord' in posixpath.basename(path) or path.endswith('.tfrec'):
    return TFRECORD
  return None


def list_shards(path: str) -> Shards:
  """Shard files behind `path`: a directory, a glob, or a comma-separated list of those."""
  if not path:
    raise ValueError('config.laion_path is empty: point it at a directory or glob of '
                     'img2dataset TFRecord (*.tfrecord) or webdataset (*.tar) shards')
  files = []
  for part in path.split(','):
    if tf.io.gfile.isdir(part):
      found = [posixpath.join(part, name) for name in tf.io.gfile.listdir(part)]
    else:
      found = tf.io.gfile.glob(part)
      if not found:
        raise FileNotFoundError(f'config.laion_path={path!r}: nothing matches {part!r}')
    files += sorted(f for f in found if _format_of(f))
  formats = {_format_of(f) for f in files}
  if not files:
    raise FileNotFoundError(f'config.laion_path={path!r} holds no TFRecord (*.tfrecord) or '
                            'webdataset (*.tar) shards')
  if len(formats) > 1:
    raise ValueError(f'config.laion_path={path!r} mixes TFRecord and webdataset shards; '
                     'point it at one kind')
  return Shards(formats.pop(), files)


def host_files(files: List[str], process_index: int, process_count: int) -> List[str]:
  if len(files) < process_count:
    raise ValueError(f'{len(files)} shard files cannot be split over {process_count} hosts: '
                     'each host reads whole files, so write at least one shard per host')
  return files[process_index::process_count]


def _tar_samples(path):
  """Yields (image bytes, caption bytes) per webdataset sample; b'' marks a broken sample."""
  path = path.decode() if isinstance(path, bytes) else path
  key, fields = None, {}

  def finish():
    image = next((fields[e] for e in IMAGE_EXTENSIONS if e in fields), b'')
    return image, fields.get('txt', b'')

  try:
    with tf.io.gfile.GFile(path, 'rb') as f, tarfile.open(fileobj=f, mode='r|*') as tar:
      for member in tar:
        if not member.isfile():
          continue
        directory, name = posixpath.split(member.name)
        stem, _, extension = name.partition('.')
        member_key = posixpath.join(directory, stem)
        if member_key != key:
          if key is not None:
            yield finish()
          key, fields = member_key, {}
        fields[extension.lower()] = tar.extractfile(member).read()
    if key is not None:
      yield finish()
  except (tarfile.TarError, OSError, EOFError) as e:
    logging.warning('webdataset shard %s is damaged, skipping the rest of it: %s', path, e)
    yield b'', b''  # counted as one skipped record


# Stands for the end of a TFRecord file. A serialized tf.train.Example never starts with a
# zero byte (field number 0 is invalid), so no readable record is taken for it; an unreadable
# one that is, is counted as skipped all the same.
_END_OF_FILE = b'\x00end of file'
_TFRECORD_FRAMING = 16  # bytes around each record: length, its CRC and the data's CRC


def _file_size(path):
  """The bytes a complete read of an uncompressed TFRecord file consumes; -1 when that
  cannot be known (gzip), which turns the check off."""
  path = np.asarray(path).item().decode()
  return np.int64(-1 if path.endswith('.gz') else tf.io.gfile.stat(path).length)


def _warn_ended_early(path, read, size):
  logging.warning('TFRecord shard %s ends early: %d of its %d bytes could be read; the rest '
                  'of it is counted as one skipped record', path.decode(), read, size)
  return np.int64(read)


def _tfrecords_counting_truncation(path):
  """The file's records; when it ends early (truncated, or a damaged record that stops the
  reader), a warning names it and one record that cannot be parsed follows them, so that the
  rest of the file is counted as one skipped record instead of vanishing without trace."""
  compression = tf.where(tf.strings.regex_full_match(path, r'.*\.gz'), 'GZIP', '')
  size = tf.ensure_shape(tf.numpy_function(_file_size, [path], tf.int64, stateful=False), [])
  records = tf.data.TFRecordDataset(path, compression_type=compression)
  records = records.ignore_errors(log_warning=True).concatenate(
      tf.data.Dataset.from_tensors(tf.constant(_END_OF_FILE)))

  def consume(read, chunk):
    ends = read + tf.cumsum(tf.cast(tf.strings.length(chunk), tf.int64) + _TFRECORD_FRAMING)
    starts = tf.concat([[read], ends[:-1]], 0)
    at_end = tf.equal(chunk, _END_OF_FILE)
    ended_early = at_end & (size >= 0) & (starts < size)
    warned = tf.cond(
        tf.reduce_any(ended_early),
        lambda: tf.numpy_function(_warn_ended_early, [path, tf.reduce_max(starts), size],
                                  tf.int64),
        lambda: read)
    with tf.control_dependencies([warned]):
      return ends[-1], {'record': tf.boolean_mask(chunk, ~at_end | ended_early)}

  # The bytes are summed a chunk at a time: a scan over single records costs about a tenth
  # of the pipeline's throughput on small images.
  return records.batch(256).scan(tf.constant(0, tf.int64), consume).unbatch()


def read_file(shard_format):
  if shard_format == TFRECORD:
    return _tfrecords_counting_truncation

  def read(path):
    return tf.data.Dataset.from_generator(
        _tar_samples, args=(path,),
        output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string))
    ).map(lambda image, text: {'jpg': image, 'txt': text})
  return read


def check_readable(config, shards: Shards, process_index: int = 0, process_count: int = 1):
  """Stops at once, naming the files, when none of the first config.unreadable_records_limit
  records of this host's shard files holds a decodable image; the endless training stream
  would otherwise skip bad records forever without yielding a batch."""
  files = host_files(shards.files, process_index, process_count)
  limit = config.unreadable_records_limit

  def readable(example):
    image_bytes = (parse_tfrecord(example['record'])[0] if shards.format == TFRECORD
                   else example['jpg'])
    return tf.shape(augment.decode(image_bytes))[0]

  ds = tf.data.Dataset.from_tensor_slices(files).interleave(
      read_file(shards.format), cycle_length=min(config.num_parallel_reads, len(files)),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.take(limit).map(readable, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  if not list(ds.take(1).as_numpy_iterator()):
    shown = ', '.join(files[:3]) + (f' and {len(files) - 3} more' if len(files) > 3 else '')
    raise ValueError(f'config.laion_path={config.laion_path!r}: none of the first {limit} '
                     f'records of {shown} could be read as an image-caption pair (damaged or '
                     'not img2dataset shards); config.unreadable_records_limit sets how many '
                     'are tried')


def parse_tfrecord(record):
  features = tf.io.parse_single_example(record, {
      'jpg': tf.io.FixedLenFeature([], tf.string, default_value=''),
      'txt': tf.io.FixedLenFeature([], tf.string, default_value=''),
  })
  return features['jpg'], features['txt']


def usable_caption(text):
  """`text`, or an error that skips (and counts) its record: a caption that is missing,
  empty, whitespace alone or not UTF-8 would train the image against no words or wrong ones.
  """
  text = tf.strings.unicode_transcode(text, 'UTF-8', 'UTF-8', errors='strict')
  words = tf.strings.length(tf.strings.strip(text))
  with tf.control_dependencies([tf.debugging.assert_positive(words, 'a caption of no words')]):
    return tf.identity(text)


def train_dataset(config, tokenizer, shards: Shards, *, process_index: int = 0,
                  process_count: int = 1, seed: int = 0, start_position: int = 0,
                  deterministic: bool = True) -> tf.data.Dataset:
  """Endless host-local batches {'image' (uint8 pixels), 'tokens', 'skipped', 'position'}
  of batch_size / process_count; with separate view crops also 'views' (uint8 [V, ...]) and
  'crop_boxes' (int32 [V + 1, 4], see augment.train_views), 'image' being the teacher's.

  The stream is a function of the seed, the shard files and the host count. `position` is
  how many records of it the batch's last example ends at; a pipeline built with
  start_position=P continues exactly where the batch that ended at P left off (it reads,
  without decoding, the P records before it). `deterministic=False` lets the shard
  interleave take records in arrival order (for benchmarks/input_pipeline.py only).
  """
  if config.batch_size % process_count:
    raise ValueError(f'config.batch_size={config.batch_size} does not divide over '
                     f'{process_count} hosts')
  local_batch = config.batch_size // process_count
  files = host_files(shards.files, process_index, process_count)
  aug = config.aug
  masking_config = config.model.model_img.masking
  # A-CLIP's geometry: `image` is then the teacher's crop, `views` the online ones.
  separate_views = masking_config.view_crops == 'separate' and masking_config.num_views > 1

  def decode(index, example):
    if shards.format == TFRECORD:
      image_bytes, text = parse_tfrecord(example['record'])
    else:
      image_bytes, text = example['jpg'], example['txt']
    text = usable_caption(text)
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    crop = (tuple(aug.area_range), tuple(aug.aspect_ratio_range), aug.flip, aug.crop_ver)
    if separate_views:
      image, views, boxes = augment.train_views(image_bytes, config.image_size, example_seed,
                                                masking_config.num_views, *crop)
      return {'index': index, 'image': image, 'views': views, 'crop_boxes': boxes,
              'text': text}
    image = augment.train_image(image_bytes, config.image_size, example_seed, *crop)
    return {'index': index, 'image': image, 'text': text}

  def count_skipped(next_index, batch):
    # The gaps that ignore_errors leaves in `index` are the skipped records.
    index = batch.pop('index')
    position = index + 1
    skipped = index - tf.concat([[next_index], position[:-1]], 0)
    return position[-1], dict(batch, skipped=tf.cast(skipped, tf.int32), position=position)

  ds = tf.data.Dataset.from_tensor_slices(files)
  ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
  # Deterministic, so that the same seed gives the same batches, run after run.
  ds = ds.interleave(read_file(shards.format), cycle_length=min(config.num_parallel_reads,
                                                                 len(files)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  ds = ds.shuffle(shuffle_buffer(config, local_batch), seed=seed)
  ds = ds.skip(start_position).enumerate(start_position)
  # Order-preserving map, so that the gaps ignore_errors leaves in `index` are the skips.
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors()
  ds = ds.batch(local_batch, drop_remainder=True)
  # A batch at a time: a scan is a sequential stage, which per example costs much of the
  # throughput on small images.
  ds = ds.scan(tf.constant(start_position, tf.int64), count_skipped)
  # A batch at a time: WordPiece over one string per call costs more than the decode.
  ds = ds.map(lambda b: dict(b, tokens=tokenizer(b.pop('text'))),
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def shuffle_buffer(config, local_batch: int) -> int:
  """config.shuffle_buffer, or FLIP's 16 x the host's batch when it is 0."""
  return config.shuffle_buffer if config.shuffle_buffer > 0 else 16 * local_batch


def host_seed(seed: int, process_index: int) -> int:
  """The data seed of one host: hosts read different files in different orders."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
