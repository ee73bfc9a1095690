"""Image decoding and augmentation in TensorFlow, seeded per example for reproducibility.

The crops and the resize are FLIP's (`aug.crop_ver`, `aug.eval_pad`, bicubic without
antialiasing), drawn from stateless random numbers so that the same seed gives the same crops.
Images leave as uint8 pixels, whole grey levels as PIL's resize also gives them; the steps on
the device normalise them (models/pixels.py).
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


ATTEMPTS = 10  # of `v4`'s random windows


def random_window(shape, draws, area_range, aspect_ratio_range, size):
  """FLIP's `v4` crop (PyTorch's RandomResizedCrop): [top, left, height, width]. The window
  is the first of 10 draws of area and log-uniform aspect ratio that fits the image, at a
  uniform offset; else the centre crop. `draws`: 2 * ATTEMPTS + 2 uniform numbers.

  The fallback is a select, not a cond: per example, each small op adds a cost that, at 64
  pixels, rivals the decode.
  """
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  target_area = area * (area_range[0] + (area_range[1] - area_range[0]) * draws[:ATTEMPTS])
  log_low, log_high = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
  ratio = tf.exp(log_low + (log_high - log_low) * draws[ATTEMPTS:2 * ATTEMPTS])
  w = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
  fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
  first = tf.argmax(tf.cast(fits, tf.int32))
  w, h = w[first], h[first]
  top = tf.cast(draws[2 * ATTEMPTS] * tf.cast(height - h + 1, tf.float32), tf.int32)
  left = tf.cast(draws[2 * ATTEMPTS + 1] * tf.cast(width - w + 1, tf.float32), tf.int32)
  return tf.where(fits[first], tf.stack([top, left, h, w]),
                  centre_window(shape, size, CROP_PADDING))


def decode_window(image_bytes, window_of):
  """uint8 [h, w, 3]: the window `window_of(shape)` ([top, left, height, width]) of an image.

  A JPEG's window is decoded alone, as FLIP decodes it: the rows below it and the blocks
  beside it are never converted to pixels, and nothing is copied. Other formats (PNG, GIF,
  BMP) are decoded whole and cropped; their windows are the same for the same shape.
  """
  def jpeg():
    window = window_of(tf.io.extract_jpeg_shape(image_bytes))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():
    image = decode(image_bytes)
    window = window_of(tf.shape(image))
    return tf.slice(image, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], 3]))

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def resize(image, size):
  """Bicubic, not antialiased, as FLIP resizes: float32 [size, size, 3], not yet rounded."""
  image = tf.image.resize(image, [size, size], method='bicubic')
  image.set_shape([size, size, 3])
  return image


def to_pixels(image, flip=None):
  """uint8 pixels of a resized image, flipped horizontally if `flip` (a boolean tensor).

  One quantize rounds (half to even) and clips the bicubic overshoot to [0, 255], where a
  round, a clip and a cast would take three passes; the flip reverses either no axis or the
  width axis, which costs less than a cond.
  """
  quantized = tf.raw_ops.QuantizeV2(input=image, min_range=0.0, max_range=255.0, T=tf.quint8,
                                    mode='SCALED', round_mode='HALF_TO_EVEN').output
  image = tf.bitcast(quantized, tf.uint8)
  if flip is not None:
    image = tf.reverse(image, tf.range(1, 1 + tf.cast(flip, tf.int32)))
  return image


def train_image(image_bytes, size, seed, area_range=(0.5, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3), flip=True, crop_ver='v4'):
  """Decode, crop (`v4` random or `vc` centre), resize, optional horizontal flip:
  uint8 [size, size, 3]."""
  if crop_ver not in CROP_VERSIONS:
    raise ValueError(f'config.aug.crop_ver={crop_ver!r}: expected one of {CROP_VERSIONS}')
  # Every random number of the example from one stateless call: the windows' and the coin.
  draws = tf.random.stateless_uniform([2 * ATTEMPTS + 3], seed)
  if crop_ver == 'v4':
    window_of = lambda shape: random_window(shape, draws, area_range, aspect_ratio_range,
                                            size)
  else:
    window_of = lambda shape: centre_window(shape, size, 0)
  image = resize(decode_window(image_bytes, window_of), size)
  return to_pixels(image, draws[-1] < 0.5 if flip else None)


def eval_image(image_bytes, size, pad=0):
  """The centre square of size / (size + pad) of the shorter side, resized to size x size
  (FLIP's `aug.eval_pad`): uint8 [size, size, 3]."""
  window_of = lambda shape: centre_window(shape, size, pad)
  return to_pixels(resize(decode_window(image_bytes, window_of), size))
