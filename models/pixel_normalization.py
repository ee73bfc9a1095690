"""What the towers and the masking policies read: the input pipelines' uint8 pixels,
normalised with per-channel statistics: ImageNet's by default (as FLIP normalises its inputs),
OpenAI's for open_clip's models (config.aug.pixel_mean / pixel_std).

The pipelines hand over uint8 and the normalisation runs on the device, inside the jitted
steps: a batch is a quarter of the bytes to assemble on the host and to copy to the
accelerator, and the two passes over every resized image leave the host's cores.
"""

import jax.numpy as jnp
import numpy as np

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def of_config(config):
  """(mean, stddev) of a run config, on the 0-1 scale."""
  return tuple(config.aug.pixel_mean), tuple(config.aug.pixel_std)


def normalize(pixels, mean=MEAN_RGB, stddev=STDDEV_RGB):
  """uint8 [..., 3] -> float32 [..., 3]: (pixels / 255 - mean) / stddev per channel."""
  if pixels.dtype != np.uint8:
    raise TypeError(f'expected uint8 pixels as the input pipelines give them, got '
                    f'{pixels.dtype}: normalising twice would shift every image')
  stddev = 255 * np.asarray(stddev, np.float32)
  offset = 255 * np.asarray(mean, np.float32) / stddev
  return jnp.asarray(pixels).astype(jnp.float32) * (1 / stddev) - offset
