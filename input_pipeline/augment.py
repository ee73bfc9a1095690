"""Image decoding and augmentation in TensorFlow, seeded per example for reproducibility.

The crops and the resize are FLIP's (`aug.crop_ver`, `aug.eval_pad`, bicubic without
antialiasing), drawn from stateless random numbers so that the same seed gives the same crops.
Images leave as uint8 pixels, rounded as PIL's bicubic resize rounds them; the steps on the
device normalise them (models/pixels.py).
"""

import math

import tensorflow as tf

CROP_VERSIONS = ('v4', 'vc')
# The fallback of `v4` when no random window fits: the centre 224/256 of the shorter side.
CROP_PADDING = 32


def decode(image_bytes):
  """Any of JPEG, PNG, GIF or BMP to uint8 [H, W, 3]; raises on corrupt bytes."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def centre_window(shape, size, pad):
  """[top, left, side, side] of the centre square covering size / (size + pad) of the
  shorter side (FLIP's evaluation crop)."""
  height, width = shape[0], shape[1]
  side = tf.cast(size / (size + pad) * tf.cast(tf.minimum(height, width), tf.float32),
                 tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def random_window(shape, seed, area_range, aspect_ratio_range, size, attempts=10):
  """FLIP's `v4` crop (PyTorch's RandomResizedCrop) and a coin for the flip:
  ([top, left, height, width], flip). The window is the first of 10 draws of area and
  log-uniform aspect ratio that fits the image, at a uniform offset; else the centre crop.

  Every draw comes from one stateless call and the fallback is a select: per example, each
  small op adds a cost that, at 64 pixels, rivals the decode.
  """
  draws = tf.random.stateless_uniform([2 * attempts + 3], seed)
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  target_area = area * (area_range[0] + (area_range[1] - area_range[0]) * draws[:attempts])
  log_low, log_high = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
  ratio = tf.exp(log_low + (log_high - log_low) * draws[attempts:2 * attempts])
  w = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
  fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
  first = tf.argmax(tf.cast(fits, tf.int32))
  w, h = w[first], h[first]
  top = tf.cast(draws[-3] * tf.cast(height - h + 1, tf.float32), tf.int32)
  left = tf.cast(draws[-2] * tf.cast(width - w + 1, tf.float32), tf.int32)
  window = tf.where(fits[first], tf.stack([top, left, h, w]),
                    centre_window(shape, size, CROP_PADDING))
  return window, draws[-1] < 0.5


def crop_and_resize(image, window, size):
  """Bicubic, not antialiased, as FLIP resizes: float32 [size, size, 3], not yet rounded."""
  image = tf.slice(image, tf.stack([window[0], window[1], 0]),
                   tf.stack([window[2], window[3], 3]))
  return tf.image.resize(image, [size, size], method='bicubic')


def to_pixels(image, flip=None):
  """Rounds to uint8 (clipping the bicubic overshoot to [0, 255]) and flips horizontally if
  `flip` (a boolean tensor) is set; the flip is cheapest on the smallest copy."""
  image = tf.saturate_cast(tf.round(image), tf.uint8)
  if flip is not None:
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  return image


def train_image(image_bytes, size, seed, area_range=(0.5, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3), flip=True, crop_ver='v4'):
  """Decode, crop (`v4` random or `vc` centre), resize, optional horizontal flip:
  uint8 [size, size, 3]."""
  if crop_ver not in CROP_VERSIONS:
    raise ValueError(f'config.aug.crop_ver={crop_ver!r}: expected one of {CROP_VERSIONS}')
  image = decode(image_bytes)
  shape = tf.shape(image)
  if crop_ver == 'v4':
    window, coin = random_window(shape, seed, area_range, aspect_ratio_range, size)
  else:
    window, coin = centre_window(shape, size, 0), tf.random.stateless_uniform([], seed) < 0.5
  image = crop_and_resize(image, window, size)
  image.set_shape([size, size, 3])
  return to_pixels(image, coin if flip else None)


def eval_image(image_bytes, size, pad=0):
  """The centre square of size / (size + pad) of the shorter side, resized to size x size
  (FLIP's `aug.eval_pad`): uint8 [size, size, 3]."""
  image = decode(image_bytes)
  image = crop_and_resize(image, centre_window(tf.shape(image), size, pad), size)
  image.set_shape([size, size, 3])
  return to_pixels(image)
