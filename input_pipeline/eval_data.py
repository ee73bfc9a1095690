"""Evaluation data: labelled images (classification, linear probe) and captioned images
(retrieval), with class names and prompt templates.

A dataset is named as people have it:
  NAME[:VERSION]   a TFDS dataset under $TFDS_DATA_DIR (`imagenet2012:5.*.*`,
                   `coco_captions` for retrieval)
  folder:PATH      one sub-folder of images per class
  wds:PATH         CLIP_benchmark's webdataset layout: PATH/<split>/*.tar holding
                   <key>.webp|jpg|png with <key>.cls (integer label) or <key>.txt (captions,
                   one per line); PATH/classnames.txt and
                   PATH/zeroshot_classification_templates.txt (one per line, `{c}` for the
                   class name)

Each host reads its own share of the examples; every host yields the same number of full
batches (padding carries mask 0), so that the batches form global arrays.
"""

import dataclasses
import json
import math
import os
import pathlib
import tarfile
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from input_pipeline import augment

METADATA_PATH = pathlib.Path(__file__).parent / 'imagenet_zeroshot.json'
TEMPLATE_SETS = ('short7', 'openai80')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
WDS_IMAGE_EXTENSIONS = ('webp', 'jpg', 'jpeg', 'png')
WDS_CLASSNAMES = 'classnames.txt'
WDS_TEMPLATES = 'zeroshot_classification_templates.txt'


@dataclasses.dataclass
class EvalImages:
  """Host-local batches {'image', 'label', 'index', 'mask'}; index is the example's position
  in the whole set (-1 for padding), label -1 where the set has none."""
  dataset: tf.data.Dataset
  num_examples: int  # real examples over all hosts
  num_batches: int  # batches per host (the same on every host)
  classnames: Optional[List[str]] = None  # classification sets
  templates: Optional[List[str]] = None  # what the set brings, if anything
  captions: Optional[List[str]] = None  # retrieval sets: every caption, image by image
  caption_image: Optional[np.ndarray] = None  # [T]: the image index of each caption


def _metadata():
  return json.loads(METADATA_PATH.read_text())


def templates(name: str, field: str = 'config.eval_templates') -> List[str]:
  """A named template set, or a JSON file holding a list of templates with `{}`."""
  if name in TEMPLATE_SETS:
    return _metadata()[f'templates_{name}']
  if not os.path.isfile(name):
    raise ValueError(f'{field}={name!r}: expected one of {TEMPLATE_SETS} or a JSON file with '
                     'a list of templates')
  try:
    found = json.loads(pathlib.Path(name).read_text(encoding='utf-8'))
  except (ValueError, OSError) as e:
    raise ValueError(f'{field}={name!r} is not a readable JSON file ({e})') from e
  if not isinstance(found, list) or not found or not all(isinstance(t, str) for t in found):
    raise ValueError(f'{field}={name!r}: expected a non-empty JSON list of strings, each '
                     'with {} where the class name goes')
  return checked_templates(found, f'{field}={name!r}')


def checked_templates(found: List[str], where: str) -> List[str]:
  """`found`, each template formatting a class name into the one place `{}` marks."""
  for template in found:
    try:
      filled = template.format('\x00')
    except (IndexError, KeyError, ValueError) as e:
      raise ValueError(f'{where}: the template {template!r} cannot take a class name '
                       f'({type(e).__name__}: {e}); expected one {{}} and no other braces '
                       '(double them: {{ }})') from e
    if filled.count('\x00') != 1:
      raise ValueError(f'{where}: the template {template!r} has no {{}} where the class name '
                       'goes')
  return found


def prompts(classnames: List[str], template_set: List[str]) -> List[str]:
  """All prompts, class-major: prompts[c * len(templates) + t]."""
  return [t.format(c) for c in classnames for t in template_set]


def classnames(spec: str, data_names: List[str], field='config.eval_classnames') -> List[str]:
  if not spec:
    return data_names
  if spec == 'imagenet':
    names = _metadata()['classnames']
  else:
    if not os.path.isfile(spec):
      raise FileNotFoundError(f'{field}={spec!r}: no such JSON file')
    names = json.loads(pathlib.Path(spec).read_text())
  if len(names) != len(data_names):
    raise ValueError(f'{field}={spec!r} has {len(names)} names but the dataset has '
                     f'{len(data_names)} classes')
  return list(names)


# --- Readers: each returns (tf.data of (image bytes, label, index), count, extras) ---------

def _folder(root: str, field: str):
  if not os.path.isdir(root):
    raise FileNotFoundError(f'{field}=folder:{root}: no such directory')
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise ValueError(f'{field}=folder:{root}: expected one sub-folder per class')
  files, labels = [], []
  for label, name in enumerate(classes):
    found = [f for f in sorted(os.listdir(os.path.join(root, name)))
             if f.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
      logging.warning('%s=folder:%s: class folder %r holds no images; it is still a class '
                      'the images are scored against', field, root, name)
    files += [os.path.join(root, name, f) for f in found]
    labels += [label] * len(found)
  if not files:
    raise ValueError(f'{field}=folder:{root}: the class folders hold no images')
  return files, labels, [c.replace('_', ' ') for c in classes]


@dataclasses.dataclass(frozen=True)
class _TarMember:
  shard: str
  name: str


def _wds_samples(root: str, split: str, field: str):
  """[{extension: value}] of every sample in PATH/<split>/*.tar, in file order: labels and
  captions read, images as references (a host reads only its own share's images)."""
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{field}=wds:{root}: no {split}/ folder of .tar shards (split '
                            f'{split!r})')
  shards = sorted(f for f in os.listdir(folder) if f.endswith('.tar'))
  if not shards:
    raise FileNotFoundError(f'{field}=wds:{root}: {folder} holds no .tar shards')
  samples = {}
  for shard in shards:
    path = os.path.join(folder, shard)
    try:
      with tarfile.open(path) as tar:  # seeks over the images it does not read
        for member in tar:
          if not member.isfile():
            continue
          key, _, extension = member.name.partition('.')
          extension = extension.lower()
          fields = samples.setdefault((shard, key), {'where': f'{path}: {key}'})
          if extension in WDS_IMAGE_EXTENSIONS:
            fields['image'] = _TarMember(path, member.name)
          elif extension in ('cls', 'txt'):
            fields[extension] = _text(tar.extractfile(member).read(), f'{path}: {member.name}',
                                      f'{field}=wds:{root}')
    except (tarfile.TarError, EOFError) as e:
      raise ValueError(f'{field}=wds:{root}: {path} is not a whole tar shard '
                       f'({type(e).__name__}: {e}); copy it again') from e
  return [fields for fields in samples.values() if 'image' in fields]


def _text(data: bytes, where: str, field: str) -> str:
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{field}: {where} is not UTF-8 text (byte {e.start}: '
                     f'{data[e.start:e.start + 1]!r})') from e


def _label(fields, field: str) -> int:
  """The class number of a sample's .cls; a value that is not a number >= 0 is named."""
  text = fields['cls'].strip()
  if not text.isdigit():
    raise ValueError(f'{field}: {fields["where"]}.cls holds {text[:40]!r}: expected a class '
                     'number >= 0')
  return int(text)


def _read_images(sources) -> list:
  """Bytes of each source: a file path, or an image inside a tar shard."""
  by_shard = {}
  for source in sources:
    if isinstance(source, _TarMember):
      by_shard.setdefault(source.shard, set()).add(source.name)
  found = {}
  for shard, names in by_shard.items():
    with tarfile.open(shard) as tar:
      for member in tar:
        if member.name in names:
          found[(shard, member.name)] = tar.extractfile(member).read()
  return [found[(s.shard, s.name)] if isinstance(s, _TarMember) else s for s in sources]


def _wds_lines(root: str, name: str) -> Optional[List[str]]:
  path = os.path.join(root, name)
  if not os.path.isfile(path):
    return None
  return [line.strip() for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def _own_share(sources, labels, process_index, process_count):
  """This host's examples (every process_count-th), read, with their positions in the set."""
  own = np.arange(process_index, len(sources), process_count)
  data = tf.constant(_read_images([sources[i] for i in own]), tf.string)
  return tf.data.Dataset.from_tensor_slices((data, np.asarray(labels, np.int32)[own], own))


def _tfds_builder(name: str, split: str, field: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.environ.get('TFDS_DATA_DIR')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if not tf.io.gfile.exists(builder.data_dir):
      raise FileNotFoundError(builder.data_dir)
    num_examples = builder.info.splits[split].num_examples
  except Exception as e:  # TFDS raises many kinds of error for a missing dataset
    raise FileNotFoundError(
        f'{field}={name!r} (split {split!r}) is not prepared under '
        f'TFDS_DATA_DIR={data_dir or "~/tensorflow_datasets"}: {e}. Prepare it with '
        '`tfds build`, or use folder:PATH or wds:PATH') from e
  return tfds, builder, num_examples


def _batches(ds: tf.data.Dataset, num_examples: int, image_size: int, eval_pad: int,
             local_batch_size: int, process_count: int):
  """(bytes, label, index) -> padded batches; returns (dataset, batches per host)."""
  per_host = math.ceil(num_examples / process_count)
  num_batches = math.ceil(per_host / local_batch_size)

  def preprocess(image_bytes, label, index):
    return {'image': augment.eval_image(image_bytes, image_size, eval_pad),
            'label': tf.cast(label, tf.int32), 'index': tf.cast(index, tf.int32),
            'mask': tf.constant(1.0)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([image_size, image_size, 3], tf.uint8),
      'label': tf.constant(-1, tf.int32), 'index': tf.constant(-1, tf.int32),
      'mask': tf.constant(0.0)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch_size)
  return ds.batch(local_batch_size).prefetch(tf.data.AUTOTUNE), num_batches


def _check_some_readable(dataset, name: str, num_examples: int):
  """Fails at start-up, naming the set, when none of this host's images can be decoded
  (rather than at the first evaluation, after training steps, and again on every resume).
  Reads up to the first readable image."""
  for batch in dataset.as_numpy_iterator():
    if (batch['index'] >= 0).any():
      return
  raise ValueError(f'{name}: none of the {num_examples} images of the evaluation set could be '
                   'read (damaged or not images); fix the set or remove the evaluation')


def classification_images(ecfg, *, image_size: int, eval_pad: int, local_batch_size: int,
                          process_index: int = 0, process_count: int = 1,
                          field: str = 'dataset') -> EvalImages:
  """Labelled images of `ecfg.dataset` (split `ecfg.split`), at most `ecfg.max_images`."""
  spec, split, limit = ecfg.dataset, ecfg.split, ecfg.max_images
  set_templates = None
  if spec.startswith('folder:') or spec.startswith('wds:'):
    if spec.startswith('folder:'):
      files, labels, names = _folder(spec[len('folder:'):], field)
      examples = list(zip(files, labels))
    else:
      root = spec[len('wds:'):]
      examples = [(f['image'], _label(f, f'{field}=wds:{root}')) for f in
                  _wds_samples(root, split, field) if 'cls' in f]
      if not examples:
        raise ValueError(f'{field}=wds:{root}: no <key>.cls labels in {split}/: not a '
                         'classification set')
      names = _wds_lines(root, WDS_CLASSNAMES)
      num_labels = max(y for _, y in examples) + 1
      if names is None:
        names = [str(i) for i in range(num_labels)]
      elif len(names) < num_labels:
        raise ValueError(f'{field}=wds:{root}: {os.path.join(root, WDS_CLASSNAMES)} has '
                         f'{len(names)} class names but the labels of {split}/ go up to '
                         f'{num_labels - 1} ({num_labels} classes); give every label a name')
      found = _wds_lines(root, WDS_TEMPLATES)
      set_templates = checked_templates(
          [t.replace('{c}', '{}') for t in found],
          f'{field}=wds:{root}: {os.path.join(root, WDS_TEMPLATES)}') if found else None
    if limit and limit < len(examples):
      # A subset that represents every class: a fixed shuffle, not the first classes.
      order = np.random.RandomState(0).permutation(len(examples))[:limit]
      examples = [examples[i] for i in sorted(order)]
    num_examples = len(examples)
    sources = [e[0] for e in examples]
    if spec.startswith('folder:'):  # tf.data reads the files
      own = np.arange(process_index, num_examples, process_count)
      ds = tf.data.Dataset.from_tensor_slices(
          (tf.constant([sources[i] for i in own], tf.string),
           np.asarray([e[1] for e in examples], np.int32)[own], own))
      ds = ds.map(lambda f, y, i: (tf.io.read_file(f), y, i))
    else:
      ds = _own_share(sources, [e[1] for e in examples], process_index, process_count)
  else:
    tfds, builder, num_examples = _tfds_builder(spec, split, field)
    host_split = tfds.even_splits(split, n=process_count)[process_index]
    ds = builder.as_dataset(split=host_split, decoders={'image': tfds.decode.SkipDecoding()})
    names = list(builder.info.features['label'].names)
    if spec.startswith('imagenet2012'):
      names = _metadata()['classnames']  # TFDS names ImageNet classes by WordNet id
    # Positions only need to be distinct: even_splits gives each host a contiguous part.
    offset = process_index * math.ceil(num_examples / process_count)
    ds = ds.enumerate(offset).map(lambda i, x: (x['image'], x['label'], i))
    if limit:
      num_examples = min(num_examples, limit)
      ds = ds.take(math.ceil(num_examples / process_count))
  dataset, num_batches = _batches(ds, num_examples, image_size, eval_pad, local_batch_size,
                                  process_count)
  _check_some_readable(dataset, f'{field}={spec!r} ({split})', num_examples)
  logging.info('evaluation set %s (%s): %d images, %d classes', spec, split, num_examples,
               len(names))
  return EvalImages(dataset, num_examples, num_batches, templates=set_templates,
                    classnames=classnames(ecfg.classnames, names,
                                          field.replace('dataset', 'classnames')))


def retrieval_images(ecfg, *, image_size: int, eval_pad: int, local_batch_size: int,
                     process_index: int = 0, process_count: int = 1,
                     field: str = 'dataset') -> EvalImages:
  """Captioned images of `ecfg.dataset`: a `wds:` set with <key>.txt or TFDS coco_captions."""
  spec, split, limit = ecfg.dataset, ecfg.split, ecfg.max_images
  if spec.startswith('wds:'):
    root = spec[len('wds:'):]
    samples = [(f['image'], f['txt']) for f in _wds_samples(root, split, field) if 'txt' in f]
    if not samples:
      raise ValueError(f'{field}=wds:{root}: no <key>.txt captions in {split}/: not a '
                       'retrieval set')
    if limit:
      samples = samples[:limit]
    images = [image for image, _ in samples]
    per_image = [[c.strip() for c in text.splitlines() if c.strip()] for _, text in samples]
  elif spec.split(':')[0] == 'coco_captions':
    tfds, builder, _ = _tfds_builder(spec, split, field)
    images, per_image = [], []
    for example in builder.as_dataset(split=split, decoders={
        'image': tfds.decode.SkipDecoding()}).as_numpy_iterator():
      images.append(example['image'])
      per_image.append([t.decode('utf-8') for t in example['captions']['text']])
      if limit and len(images) >= limit:
        break
  else:
    raise ValueError(f'{field}={spec!r}: retrieval reads wds:PATH (captions in <key>.txt) '
                     'or the TFDS coco_captions set')
  captions = [c for texts in per_image for c in texts]
  caption_image = np.array([i for i, texts in enumerate(per_image) for _ in texts], np.int32)
  num_examples = len(images)
  ds = _own_share(images, -np.ones(num_examples), process_index, process_count)
  dataset, num_batches = _batches(ds, num_examples, image_size, eval_pad, local_batch_size,
                                  process_count)
  _check_some_readable(dataset, f'{field}={spec!r} ({split})', num_examples)
  logging.info('retrieval set %s (%s): %d images, %d captions', spec, split, num_examples,
               len(captions))
  return EvalImages(dataset, num_examples, num_batches, captions=captions,
                    caption_image=caption_image)
