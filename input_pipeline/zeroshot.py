"""Zero-shot classification data: evaluation images, class names and prompt templates.

`eval_dataset` is a TFDS name (read from $TFDS_DATA_DIR) or `folder:PATH` with one
sub-folder of images per class.
"""

import dataclasses
import json
import math
import os
import pathlib
from typing import List

from absl import logging
import numpy as np
import tensorflow as tf

from input_pipeline import augment

METADATA_PATH = pathlib.Path(__file__).parent / 'imagenet_zeroshot.json'
TEMPLATE_SETS = ('short7', 'openai80')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


@dataclasses.dataclass
class ZeroShotSet:
  dataset: tf.data.Dataset  # host-local batches {'image', 'label', 'mask'}, mask 0 = padding
  classnames: List[str]
  num_examples: int  # real examples over all hosts
  num_batches: int  # batches per host (the same on every host)


def _metadata():
  return json.loads(METADATA_PATH.read_text())


def templates(name: str) -> List[str]:
  """A named template set, or a JSON file holding a list of templates with `{}`."""
  if name in TEMPLATE_SETS:
    return _metadata()[f'templates_{name}']
  if not os.path.isfile(name):
    raise ValueError(f'config.eval_templates={name!r}: expected one of {TEMPLATE_SETS} or a '
                     'JSON file with a list of templates')
  found = json.loads(pathlib.Path(name).read_text())
  if not found or not all(isinstance(t, str) and '{}' in t for t in found):
    raise ValueError(f'config.eval_templates={name!r}: expected a non-empty JSON list of '
                     'strings, each with {} where the class name goes')
  return found


def prompts(classnames: List[str], template_set: List[str]) -> List[str]:
  """All prompts, class-major: prompts[c * len(templates) + t]."""
  return [t.format(c) for c in classnames for t in template_set]


def _classnames(spec: str, data_names: List[str]) -> List[str]:
  if not spec:
    return data_names
  if spec == 'imagenet':
    names = _metadata()['classnames']
  else:
    if not os.path.isfile(spec):
      raise FileNotFoundError(f'config.eval_classnames={spec!r}: no such JSON file')
    names = json.loads(pathlib.Path(spec).read_text())
  if len(names) != len(data_names):
    raise ValueError(f'config.eval_classnames={spec!r} has {len(names)} names but the '
                     f'dataset has {len(data_names)} classes')
  return list(names)


def _folder_examples(root: str):
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.eval_dataset=folder:{root}: no such directory')
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise ValueError(f'config.eval_dataset=folder:{root}: expected one sub-folder per class')
  files, labels = [], []
  for label, name in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(root, name))):
      if f.lower().endswith(IMAGE_SUFFIXES):
        files.append(os.path.join(root, name, f))
        labels.append(label)
  if not files:
    raise ValueError(f'config.eval_dataset=folder:{root}: the class folders hold no images')
  return files, labels, [c.replace('_', ' ') for c in classes]


def _tfds_examples(name: str, split: str, process_index: int, process_count: int):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.environ.get('TFDS_DATA_DIR')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    info = builder.info
    if not tf.io.gfile.exists(builder.data_dir):
      raise FileNotFoundError(builder.data_dir)
    num_examples = info.splits[split].num_examples
  except Exception as e:  # TFDS raises many kinds of error for a missing dataset
    raise FileNotFoundError(
        f'config.eval_dataset={name!r} (split {split!r}) is not prepared under '
        f'TFDS_DATA_DIR={data_dir or "~/tensorflow_datasets"}: {e}. Prepare it with '
        '`tfds build`, or use folder:PATH, or set config.eval_dataset="" to skip evaluation'
    ) from e
  host_split = tfds.even_splits(split, n=process_count)[process_index]
  ds = builder.as_dataset(split=host_split, decoders={'image': tfds.decode.SkipDecoding()})
  names = list(info.features['label'].names)
  if name.startswith('imagenet2012'):
    names = _metadata()['classnames']  # TFDS names ImageNet classes by WordNet id
  return ds.map(lambda x: (x['image'], x['label'])), num_examples, names


def zeroshot_dataset(config, *, local_batch_size: int, process_index: int = 0,
                     process_count: int = 1) -> ZeroShotSet:
  spec = config.eval_dataset
  if spec.startswith('folder:'):
    files, labels, names = _folder_examples(spec[len('folder:'):])
    num_examples = len(files)
    if config.eval_max_images and config.eval_max_images < num_examples:
      # A subset that represents every class: a fixed shuffle, not the first classes.
      order = np.random.RandomState(0).permutation(num_examples)
      files, labels = [files[i] for i in order], [labels[i] for i in order]
    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    ds = ds.shard(process_count, process_index).map(
        lambda f, y: (tf.io.read_file(f), y))
  else:
    ds, num_examples, names = _tfds_examples(spec, config.eval_split, process_index,
                                             process_count)
  classnames = _classnames(config.eval_classnames, names)
  if config.eval_max_images:
    num_examples = min(num_examples, config.eval_max_images)
  per_host = math.ceil(num_examples / process_count)
  ds = ds.take(per_host)
  num_batches = math.ceil(per_host / local_batch_size)

  def preprocess(image_bytes, label):
    return {'image': augment.eval_image(image_bytes, config.image_size, config.aug.eval_pad),
            'label': tf.cast(label, tf.int32), 'mask': tf.constant(1.0)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([config.image_size, config.image_size, 3]),
      'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0)}).repeat()
  # Every host yields the same number of full batches, whatever it skipped, so that the
  # batches form global arrays; padding carries mask 0.
  ds = ds.concatenate(padding).take(num_batches * local_batch_size)
  ds = ds.batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
  logging.info('zero-shot set %s: %d images, %d classes', spec, num_examples, len(classnames))
  return ZeroShotSet(ds, classnames, num_examples, num_batches)
