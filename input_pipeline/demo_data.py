"""Generates the embedded demo dataset: coloured shapes on coloured backgrounds, captioned.

Writes, under --out:
  train/NNNNN.tfrecord        image-caption pairs in img2dataset's TFRecord layout
  train_tar/NNNNN.tar         the same pairs as webdataset shards (with --formats=...,tar)
  zeroshot/COLOR_shape_on_BACKGROUND/*.jpg
                              held-out images, one folder per class, for zero-shot eval
  wds_zeroshot/test/N.tar     the zero-shot images again (<key>.jpg + <key>.cls), with
                              classnames.txt and zeroshot_classification_templates.txt, in
                              CLIP_benchmark's classification layout
  wds_retrieval/test/N.tar    held-out captioned images for retrieval, in CLIP_benchmark's
                              webdataset layout (<key>.jpg + <key>.txt, test/nshards.txt,
                              dataset_type.txt), which `clip_benchmark eval` reads as it is
  COMPLETE                    written last, so an interrupted run is regenerated

The output is a deterministic function of the flags.

  python -m input_pipeline.demo_data --out=data/demo
"""

import io
import json
import os
import tarfile

from absl import app
from absl import flags
import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import eval_data

COLORS = {
    'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 225),
    'yellow': (240, 220, 40), 'purple': (140, 60, 185), 'orange': (245, 140, 30),
    'white': (245, 245, 245), 'black': (20, 20, 20),
}
BACKGROUNDS = {'gray': (128, 128, 128), 'beige': (200, 185, 150), 'teal': (60, 125, 125),
               'pink': (225, 150, 170)}
SHAPES = ('circle', 'square', 'triangle', 'cross')
SIZES = {'small': (0.35, 0.5), 'large': (0.55, 0.75)}
# Zero-shot classes: the shape's colour and the background's, named like "red shape on teal".
CLASSES = [(color, bg) for color in COLORS for bg in BACKGROUNDS]
CAPTIONS = (
    'a {size} {color} {shape} on a {bg} background',
    'a photo of a {color} {shape} on {bg}',
    'a {color} {shape} in the {where} of a {bg} picture',
    'there is a {size} {shape} which is {color}, the background is {bg}',
    '{color} {shape}, {bg} backdrop',
    'an image showing one {color} {shape} near the {where} on {bg}',
    'a drawing of the {size} {color} {shape} against {bg}',
    'the {shape} is {color} and the background is {bg}',
    'art of a {color} shape on a {bg} background',
    'a close up of a {color} {shape} on {bg}',
)
FLAGS = flags.FLAGS


def _where(cx, cy):
  row = 'top' if cy < 0.4 else 'bottom' if cy > 0.6 else 'middle'
  col = 'left' if cx < 0.4 else 'right' if cx > 0.6 else 'centre'
  return 'centre' if row == 'middle' and col == 'centre' else f'{row} {col}'


def _draw_shape(draw, shape, cx, cy, radius, fill):
  box = [cx - radius, cy - radius, cx + radius, cy + radius]
  if shape == 'circle':
    draw.ellipse(box, fill=fill)
  elif shape == 'square':
    draw.rectangle([cx - 0.85 * radius, cy - 0.85 * radius, cx + 0.85 * radius,
                    cy + 0.85 * radius], fill=fill)
  elif shape == 'triangle':
    draw.polygon([(cx, cy - radius), (cx - radius, cy + 0.8 * radius),
                  (cx + radius, cy + 0.8 * radius)], fill=fill)
  elif shape == 'cross':
    arm = 0.32 * radius
    draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=fill)
    draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=fill)
  else:
    raise ValueError(f'unknown shape {shape!r}')


def render(rng: np.random.RandomState, color: str, bg_name: str, image_size: int):
  """One JPEG of a `color` shape on a textured `bg_name` background, and a caption for it."""
  shape = SHAPES[rng.randint(len(SHAPES))]
  base = np.array(BACKGROUNDS[bg_name], np.float32)
  gradient = np.linspace(-1, 1, image_size, dtype=np.float32)
  tilt = rng.uniform(-25, 25, size=2)
  pixels = (base + tilt[0] * gradient[:, None, None] + tilt[1] * gradient[None, :, None]
            + rng.normal(0, 8, (image_size, image_size, 3)))
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  size = list(SIZES)[rng.randint(len(SIZES))]
  radius = rng.uniform(*SIZES[size]) * image_size / 2
  cx, cy = rng.uniform(radius, image_size - radius, size=2)
  fill = tuple(int(c) for c in np.clip(np.array(COLORS[color]) + rng.normal(0, 10, 3), 0, 255))
  _draw_shape(ImageDraw.Draw(image), shape, cx, cy, radius, fill)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  caption = CAPTIONS[rng.randint(len(CAPTIONS))].format(
      size=size, color=color, shape=shape, bg=bg_name,
      where=_where(cx / image_size, cy / image_size))
  return buffer.getvalue(), caption


def _tf_example(key, jpg, txt, image_size):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feature = {
      'key': tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
      'jpg': tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpg])),
      'txt': tf.train.Feature(bytes_list=tf.train.BytesList(value=[txt.encode()])),
      'width': tf.train.Feature(int64_list=tf.train.Int64List(value=[image_size])),
      'height': tf.train.Feature(int64_list=tf.train.Int64List(value=[image_size])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _add_to_tar(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0  # reproducible archives
  tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir, pairs, num_shards, formats, image_size):
  """Writes (key, jpg, txt) pairs as TFRecord and/or webdataset shards."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for shard in range(num_shards):
    chunk = pairs[shard::num_shards]
    if 'tfrecord' in formats:
      os.makedirs(os.path.join(out_dir, 'train'), exist_ok=True)
      with tf.io.TFRecordWriter(os.path.join(out_dir, 'train', f'{shard:05d}.tfrecord')) as w:
        for key, jpg, txt in chunk:
          w.write(_tf_example(key, jpg, txt, image_size))
    if 'tar' in formats:
      os.makedirs(os.path.join(out_dir, 'train_tar'), exist_ok=True)
      with tarfile.open(os.path.join(out_dir, 'train_tar', f'{shard:05d}.tar'), 'w') as tar:
        for key, jpg, txt in chunk:
          _add_to_tar(tar, f'{key}.jpg', jpg)
          _add_to_tar(tar, f'{key}.txt', txt.encode())
          _add_to_tar(tar, f'{key}.json', json.dumps({'key': key, 'caption': txt}).encode())


# CLIP_benchmark reads a set with 4 loader workers unless told otherwise, and a worker
# without a shard fails: 4 shards let its default command read the sets as they are.
def _finish_wds_layout(out_dir, num_shards, dataset_type):
  with open(os.path.join(out_dir, 'test', 'nshards.txt'), 'w') as f:
    f.write(f'{num_shards}\n')
  with open(os.path.join(out_dir, 'dataset_type.txt'), 'w') as f:
    f.write(f'{dataset_type}\n')


def write_classification_set(out_dir, examples, classnames, templates, num_shards=4):
  """Labelled images in CLIP_benchmark's full webdataset layout for classification:
  (key, jpg, label) examples, class names and templates (with `{c}`) beside the shards."""
  os.makedirs(os.path.join(out_dir, 'test'), exist_ok=True)
  for shard in range(num_shards):
    with tarfile.open(os.path.join(out_dir, 'test', f'{shard}.tar'), 'w') as tar:
      for key, jpg, label in examples[shard::num_shards]:
        _add_to_tar(tar, f'{key}.jpg', jpg)
        _add_to_tar(tar, f'{key}.cls', f'{label}'.encode())
  with open(os.path.join(out_dir, 'classnames.txt'), 'w') as f:
    f.write(''.join(f'{name}\n' for name in classnames))
  with open(os.path.join(out_dir, 'zeroshot_classification_templates.txt'), 'w') as f:
    f.write(''.join(f'{t}\n' for t in templates))
  _finish_wds_layout(out_dir, num_shards, 'classification')


def write_retrieval_set(out_dir, pairs, num_shards=4):
  """Held-out captioned images in CLIP_benchmark's full webdataset layout (wds:OUT_DIR):
  shards 0..N-1 with N in nshards.txt, and `retrieval` in dataset_type.txt."""
  os.makedirs(os.path.join(out_dir, 'test'), exist_ok=True)
  for shard in range(num_shards):
    with tarfile.open(os.path.join(out_dir, 'test', f'{shard}.tar'), 'w') as tar:
      for key, jpg, txt in pairs[shard::num_shards]:
        _add_to_tar(tar, f'{key}.jpg', jpg)
        _add_to_tar(tar, f'{key}.txt', txt.encode())
  _finish_wds_layout(out_dir, num_shards, 'retrieval')


def generate(out_dir, *, num_train=20000, num_eval_per_class=25, num_shards=8,
             image_size=64, seed=0, formats=('tfrecord',), num_retrieval=500):
  unknown = set(formats) - {'tfrecord', 'tar'}
  if unknown:
    raise ValueError(f'--formats: unknown {sorted(unknown)}; expected tfrecord and/or tar')
  if num_train < num_shards:
    raise ValueError(f'--num_train={num_train} is smaller than --num_shards={num_shards}')
  rng = np.random.RandomState(seed)
  pairs = []
  for i in range(num_train):
    color, bg_name = CLASSES[rng.randint(len(CLASSES))]
    jpg, txt = render(rng, color, bg_name, image_size)
    pairs.append((f'{i:09d}', jpg, txt))
  write_shards(out_dir, pairs, num_shards, formats, image_size)
  eval_rng = np.random.RandomState(seed + 1_000_003)  # held out: a stream training never sees
  labelled = []
  for label, (color, bg_name) in enumerate(CLASSES):
    folder = os.path.join(out_dir, 'zeroshot', f'{color}_shape_on_{bg_name}')
    os.makedirs(folder, exist_ok=True)
    for i in range(num_eval_per_class):
      jpg, _ = render(eval_rng, color, bg_name, image_size)
      with open(os.path.join(folder, f'{i:05d}.jpg'), 'wb') as f:
        f.write(jpg)
      labelled.append((f'z{label:02d}_{i:05d}', jpg, label))
  write_classification_set(os.path.join(out_dir, 'wds_zeroshot'), labelled,
                           [f'{color} shape on {bg}' for color, bg in CLASSES],
                           [t.replace('{}', '{c}') for t in eval_data.templates('short7')])
  # Retrieval over captions that name shape, size, colour and background: harder than the
  # 32 colour-on-background classes, which a demo run nearly saturates.
  retrieval = []
  for i in range(num_retrieval):
    color, bg_name = CLASSES[eval_rng.randint(len(CLASSES))]
    jpg, txt = render(eval_rng, color, bg_name, image_size)
    retrieval.append((f'r{i:06d}', jpg, txt))
  write_retrieval_set(os.path.join(out_dir, 'wds_retrieval'), retrieval)
  with open(os.path.join(out_dir, 'COMPLETE'), 'w') as f:
    json.dump({'num_train': num_train, 'num_classes': len(CLASSES), 'seed': seed,
               'image_size': image_size, 'formats': list(formats)}, f)


def main(argv):
  del argv
  generate(FLAGS.out, num_train=FLAGS.num_train, num_eval_per_class=FLAGS.num_eval_per_class,
           num_shards=FLAGS.num_shards, image_size=FLAGS.image_size, seed=FLAGS.seed,
           formats=tuple(FLAGS.formats), num_retrieval=FLAGS.num_retrieval)
  print(f'demo dataset written to {FLAGS.out}: {FLAGS.num_train} training pairs, '
        f'{len(CLASSES)} zero-shot classes')


if __name__ == '__main__':
  flags.DEFINE_string('out', 'data/demo', 'Output directory.')
  flags.DEFINE_integer('num_train', 20000, 'Training image-caption pairs.')
  flags.DEFINE_integer('num_eval_per_class', 25, 'Held-out zero-shot images per class.')
  flags.DEFINE_integer('num_shards', 8, 'Shard files per format.')
  flags.DEFINE_integer('num_retrieval', 500, 'Held-out captioned images for retrieval.')
  flags.DEFINE_integer('image_size', 64, 'Image side in pixels.')
  flags.DEFINE_integer('seed', 0, 'Random seed; the output is a function of the flags.')
  flags.DEFINE_list('formats', ['tfrecord'], 'tfrecord and/or tar.')
  app.run(main)
