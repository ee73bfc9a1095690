"""Image decoding and augmentation in TensorFlow, seeded per example for reproducibility.

The crops and the resize are FLIP's (`aug.crop_ver`, `aug.eval_pad`, bicubic without
antialiasing), drawn from stateless random numbers so that the same seed gives the same crops.
Images leave as uint8 pixels, whole grey levels as PIL's resize also gives them; the steps on
the device normalise them (models/pixel_normalization.py).
"""

import math

import tensorflow as tf

CROP_VERSIONS = ('v4', 'rrc', 'vc')
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


def ratio_window(shape, aspect_ratio_range):
  """torchvision's RandomResizedCrop fallback: the centred window of the whole image cut to
  the aspect-ratio range."""
  height, width = shape[0], shape[1]
  low, high = aspect_ratio_range
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  in_ratio = w_f / h_f
  w = tf.where(in_ratio > high, tf.cast(tf.round(h_f * high), tf.int32), width)
  h = tf.where(in_ratio < low, tf.cast(tf.round(w_f / low), tf.int32), height)
  return tf.stack([(height - h) // 2, (width - w) // 2, h, w])


def random_window(shape, draws, area_range, aspect_ratio_range, size, fallback='centre'):
  """PyTorch's RandomResizedCrop window: [top, left, height, width]. The window is the
  first of 10 draws of area and log-uniform aspect ratio that fits the image, at a uniform
  offset; else `centre` (FLIP's `v4`: the centre 224/256 of the shorter side) or `ratio`
  (torchvision's, `rrc`). `draws`: 2 * ATTEMPTS + 2 uniform numbers.

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
  otherwise = (centre_window(shape, size, CROP_PADDING) if fallback == 'centre' else
               ratio_window(shape, aspect_ratio_range))
  return tf.where(fits[first], tf.stack([top, left, h, w]), otherwise)


def decode_window(image_bytes, window_of):
  """uint8 [h, w, 3]: the window `window_of(shape)` ([top, left, height, width]) of an image.

  A JPEG's window is decoded alone, as FLIP decodes it: the rows below it and the blocks
  beside it are never converted to pixels, and nothing is copied. Other formats (PNG, GIF,
  BMP) are decoded whole and cropped; their windows are the same for the same shape.
  """
  return decode_planned(image_bytes, lambda shape: (window_of(shape), ()))[0]


def decode_planned(image_bytes, plan):
  """decode_window for a `plan(shape)` that returns (window, other tensors drawn from the
  shape): (the window's pixels, those tensors), the image decoded once whatever its format."""
  def jpeg():
    window, extras = plan(tf.io.extract_jpeg_shape(image_bytes))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3), extras

  def other():
    image = decode(image_bytes)
    window, extras = plan(tf.shape(image))
    return tf.slice(image, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], 3])), extras

  image, extras = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image, extras


def resize(image, size, antialias=False):
  """Bicubic, not antialiased as FLIP resizes (or antialiased as PIL's, open_clip's):
  float32 [size, size, 3], not yet rounded."""
  image = tf.image.resize(image, [size, size], method='bicubic', antialias=antialias)
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
  """Decode, crop (`v4` or `rrc` random, `vc` centre), resize, optional horizontal flip:
  uint8 [size, size, 3]."""
  if crop_ver not in CROP_VERSIONS:
    raise ValueError(f'config.aug.crop_ver={crop_ver!r}: expected one of {CROP_VERSIONS}')
  # Every random number of the example from one stateless call: the windows' and the coin.
  draws = tf.random.stateless_uniform([2 * ATTEMPTS + 3], seed)
  if crop_ver == 'vc':
    window_of = lambda shape: centre_window(shape, size, 0)
  else:
    fallback = 'centre' if crop_ver == 'v4' else 'ratio'
    window_of = lambda shape: random_window(shape, draws, area_range, aspect_ratio_range,
                                            size, fallback)
  image = resize(decode_window(image_bytes, window_of), size, antialias=crop_ver == 'rrc')
  return to_pixels(image, draws[-1] < 0.5 if flip else None)


def eval_image(image_bytes, size, pad=0):
  """The centre square of size / (size + pad) of the shorter side, resized to size x size
  (FLIP's `aug.eval_pad`): uint8 [size, size, 3]."""
  window_of = lambda shape: centre_window(shape, size, pad)
  return to_pixels(resize(decode_window(image_bytes, window_of), size))


def covering_window(windows, shape, draws):
  """A-CLIP's teacher crop (datasets.py:258-273, GetThreeRandomResizedCrop): a random
  window holding every window in `windows` [V, 4]: its top and left uniform between 0 and
  theirs, its bottom and right uniform between theirs and the image's edge. `draws`: 4
  uniform numbers. (A-CLIP's own code takes the second view's height for its left edge and
  draws the height before moving the top, so that its crop can miss part of a view; here it
  never does.)"""
  height, width = shape[0], shape[1]
  top, left = tf.reduce_min(windows[:, 0]), tf.reduce_min(windows[:, 1])
  bottom = tf.reduce_max(windows[:, 0] + windows[:, 2])
  right = tf.reduce_max(windows[:, 1] + windows[:, 3])
  pick = lambda u, low, high: low + tf.cast(u * tf.cast(high - low + 1, tf.float32), tf.int32)
  new_top, new_left = pick(draws[0], 0, top), pick(draws[1], 0, left)
  new_bottom, new_right = pick(draws[2], bottom, height), pick(draws[3], right, width)
  return tf.stack([new_top, new_left, new_bottom - new_top, new_right - new_left])


def train_views(image_bytes, size, seed, num_views, area_range=(0.5, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3), flip=True, crop_ver='v4'):
  """A-CLIP's views: `num_views` random crops and one crop covering them all (the teacher's).

  Returns (teacher uint8 [size, size, 3], views uint8 [V, size, size, 3], boxes int32
  [V + 1, 4]): each view's and then the teacher's window (top, left, height, width) in the
  image's pixels. A flip mirrors the image before cropping, so that the boxes stay true.
  """
  if crop_ver not in ('v4', 'rrc'):
    raise ValueError(f"config.aug.crop_ver={crop_ver!r}: separate view crops are random; "
                     "expected 'v4' or 'rrc'")
  per_view = 2 * ATTEMPTS + 2
  draws = tf.random.stateless_uniform([num_views * per_view + 5], seed)
  fallback = 'centre' if crop_ver == 'v4' else 'ratio'

  def plan(shape):
    windows = tf.stack([random_window(shape, draws[v * per_view:(v + 1) * per_view],
                                      area_range, aspect_ratio_range, size, fallback)
                        for v in range(num_views)])
    teacher = covering_window(windows, shape, draws[num_views * per_view:])
    return teacher, (windows, teacher, shape[1])

  image, (windows, teacher, width) = decode_planned(image_bytes, plan)
  flipped = draws[-1] < 0.5 if flip else tf.constant(False)
  mirror = lambda box: tf.stack([box[..., 0], width - box[..., 1] - box[..., 3],
                                 box[..., 2], box[..., 3]], -1)
  boxes = tf.concat([windows, teacher[None]], 0)
  # The windows are drawn on the unflipped image; a flipped example is the mirror image of
  # these crops, whose boxes are mirrored too.
  pieces = [to_pixels(resize(image, size, crop_ver == 'rrc'), flipped)]
  for v in range(num_views):
    window = windows[v]
    piece = tf.slice(image, tf.stack([window[0] - teacher[0], window[1] - teacher[1], 0]),
                     tf.stack([window[2], window[3], 3]))
    pieces.append(to_pixels(resize(piece, size, crop_ver == 'rrc'), flipped))
  boxes = tf.where(flipped, mirror(boxes), boxes)
  return pieces[0], tf.stack(pieces[1:]), tf.cast(boxes, tf.int32)
