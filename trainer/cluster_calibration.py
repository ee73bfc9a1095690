"""The cluster policy's similarity threshold, calibrated on the first batch so that the
mean masked share is `masking.target_mask_ratio` (masking.calibrate), and carried by the
checkpoints so that a resumed run masks as before.

Calibration writes the threshold into the config, so that training, masked evaluation and
the tools that read config.json all use it.
"""

from absl import logging
from jax.experimental import multihost_utils
import numpy as np

import masking
from models import pixel_normalization


def needed(config, policy, carried: dict) -> bool:
  """Whether this run calibrates: the cluster policy asks for it and no checkpoint carries
  a threshold calibrated before."""
  return (policy.name == 'cluster' and config.model.model_img.masking.calibrate and
          (carried or {}).get('cluster_threshold') is None)


def calibrate(config, images, rng) -> masking.MaskingPolicy:
  """Sets masking.threshold so that the mean masked share of `images` (uint8, the first
  batch) is the target; returns the policy that masks with it.

  Every host must mask with the same threshold, so process 0's value is broadcast.
  """
  masking_config = config.model.model_img.masking
  images = pixel_normalization.normalize(images, *pixel_normalization.of_config(config))
  patch_size = tuple(config.model.model_img.patches.size)
  threshold = masking.calibrate_threshold(rng, images, patch_size, masking_config.anchor_ratio,
                                          masking_config.target_mask_ratio)
  threshold = float(multihost_utils.broadcast_one_to_all(np.float32(threshold)))
  masked = float(masking.cluster_mask(rng, images, patch_size, masking_config.anchor_ratio,
                                      threshold).mean())
  logging.info('Cluster masking: threshold calibrated from %.4f to %.4f (masked share %.3f, '
               'target %.3f)', masking_config.threshold, threshold, masked,
               masking_config.target_mask_ratio)
  masking_config.threshold = threshold
  return masking.get_policy(config, train=True)


def from_checkpoint(config, policy, carried: dict) -> masking.MaskingPolicy:
  """The threshold a resumed run calibrated before, from its checkpoint's run_state."""
  threshold = (carried or {}).get('cluster_threshold')
  masking_config = config.model.model_img.masking
  if threshold is None or masking_config.policy != 'cluster' or not masking_config.calibrate:
    return policy
  masking_config.threshold = threshold
  logging.info('Cluster masking: the threshold calibrated before, %.4f', threshold)
  return masking.get_policy(config, train=True)
