"""Image decoding and augmentation in TensorFlow, seeded per example for reproducibility."""

import tensorflow as tf

# ImageNet statistics, as FLIP normalises its inputs.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def decode(image_bytes):
  """Any of JPEG, PNG, GIF or BMP to uint8 [H, W, 3]; raises on corrupt bytes."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def normalize(image):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def random_resized_crop(image, size, seed, area_range, aspect_ratio_range):
  """Inception-style crop of a random area fraction and aspect ratio, resized to size x size."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
      min_object_covered=0.0, area_range=area_range, aspect_ratio_range=aspect_ratio_range,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop_size)
  return tf.image.resize(image, [size, size], method='bicubic', antialias=True)


def train_image(image_bytes, size, seed, area_range=(0.5, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3), flip=True):
  """Decode, RandomResizedCrop, optional horizontal flip, normalise: float32 [size, size, 3]."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = random_resized_crop(decode(image_bytes), size, crop_seed, area_range,
                              aspect_ratio_range)
  image = tf.clip_by_value(image, 0.0, 255.0)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return normalize(image)


def eval_image(image_bytes, size):
  """Resize the shorter side to `size`, take the central square: float32 [size, size, 3]."""
  image = decode(image_bytes)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new_hw = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  image = tf.image.resize(image, new_hw, method='bicubic', antialias=True)
  top = (new_hw[0] - size) // 2
  left = (new_hw[1] - size) // 2
  image = tf.clip_by_value(image[top:top + size, left:left + size], 0.0, 255.0)
  image.set_shape([size, size, 3])
  return normalize(image)
