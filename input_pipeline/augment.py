"""Image decoding and augmentation in TensorFlow, seeded per example for reproducibility.

The crops are FLIP's (`aug.crop_ver`, `aug.eval_pad`), drawn from stateless random numbers
so that the same seed gives the same crops.
"""

import tensorflow as tf

# ImageNet statistics, as FLIP normalises its inputs.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
CROP_VERSIONS = ('v4', 'vc')
# The fallback of `v4` when no random window fits: the centre 224/256 of the shorter side.
CROP_PADDING = 32


def decode(image_bytes):
  """Any of JPEG, PNG, GIF or BMP to uint8 [H, W, 3]; raises on corrupt bytes."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def normalize(image):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def centre_window(shape, size, pad):
  """[top, left, side, side] of the centre square covering size / (size + pad) of the
  shorter side (FLIP's evaluation crop)."""
  height, width = shape[0], shape[1]
  side = tf.cast(size / (size + pad) * tf.cast(tf.minimum(height, width), tf.float32),
                 tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def random_window(shape, seed, area_range, aspect_ratio_range, size, attempts=10):
  """FLIP's `v4` crop (PyTorch's RandomResizedCrop): the first of 10 draws of area and
  log-uniform aspect ratio that fits the image, at a uniform offset; else the centre crop."""
  draw_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  area_seed, ratio_seed = tf.unstack(tf.random.experimental.stateless_split(draw_seed, 2))
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  target_area = area * tf.random.stateless_uniform([attempts], area_seed, area_range[0],
                                                    area_range[1])
  log_ratio = tf.math.log(tf.constant(aspect_ratio_range, tf.float32))
  ratio = tf.exp(tf.random.stateless_uniform([attempts], ratio_seed, log_ratio[0],
                                             log_ratio[1]))
  w = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
  fits = tf.logical_and(tf.logical_and(w <= width, h <= height),
                        tf.logical_and(w > 0, h > 0))
  first = tf.argmax(tf.cast(fits, tf.int32))
  w, h = w[first], h[first]
  offsets = tf.random.stateless_uniform([2], offset_seed, 0.0, 1.0)
  top = tf.cast(offsets[0] * tf.cast(height - h + 1, tf.float32), tf.int32)
  left = tf.cast(offsets[1] * tf.cast(width - w + 1, tf.float32), tf.int32)
  return tf.cond(fits[first], lambda: tf.stack([top, left, h, w]),
                 lambda: centre_window(shape, size, CROP_PADDING))


def crop_and_resize(image, window, size):
  image = tf.slice(image, tf.stack([window[0], window[1], 0]),
                   tf.stack([window[2], window[3], 3]))
  image = tf.image.resize(image, [size, size], method='bicubic', antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


def train_image(image_bytes, size, seed, area_range=(0.5, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3), flip=True, crop_ver='v4'):
  """Decode, crop (`v4` random or `vc` centre), resize, optional horizontal flip, normalise:
  float32 [size, size, 3]."""
  if crop_ver not in CROP_VERSIONS:
    raise ValueError(f'config.aug.crop_ver={crop_ver!r}: expected one of {CROP_VERSIONS}')
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = decode(image_bytes)
  shape = tf.shape(image)
  if crop_ver == 'v4':
    window = random_window(shape, crop_seed, area_range, aspect_ratio_range, size)
  else:
    window = centre_window(shape, size, 0)
  image = crop_and_resize(image, window, size)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image.set_shape([size, size, 3])
  return normalize(image)


def eval_image(image_bytes, size, pad=0):
  """The centre square of size / (size + pad) of the shorter side, resized to size x size
  (FLIP's `aug.eval_pad`): float32 [size, size, 3]."""
  image = decode(image_bytes)
  image = crop_and_resize(image, centre_window(tf.shape(image), size, pad), size)
  image.set_shape([size, size, 3])
  return normalize(image)
