"""Random input batches for benchmarks: no data pipeline in the timings."""

import numpy as np

from trainer import partitioning


def synthetic_batch(config, mesh, seed=0):
  """A global batch of smooth random uint8 images (4x4-pixel blocks, so that cluster masking
  finds structure) and random token ids."""
  rng = np.random.RandomState(seed)
  size, batch = config.image_size, config.batch_size
  coarse = rng.normal(size=(batch, -(-size // 4), -(-size // 4), 3))
  pixels = np.clip(128 + 48 * coarse, 0, 255).astype(np.uint8)
  images = np.repeat(np.repeat(pixels, 4, 1), 4, 2)[:, :size, :size]
  return partitioning.global_batch(mesh, {
      'image': images,
      'tokens': rng.randint(1, 30000, size=(batch, config.aug.txt.max_len)).astype(np.int32),
      'skipped': np.zeros(batch, np.int32)})
