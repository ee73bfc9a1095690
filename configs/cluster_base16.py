"""Masking Clusters: open_clip's ViT-B-16 (the paper's model) dropping clusters of similar
patches.

  python main.py --workdir=DIR --config=configs/cluster_base16.py --config.laion_path=PATH

Anchors are 3% of the patches (6 of 196); the similarity threshold is calibrated on the first
batch to mask half the patches on average; the encoder sees 137 tokens (min_mask_ratio 0.3),
the unused ones as key padding.
"""

from configs import default


def get_config():
  config = default.get_config()
  default.set_size(config, 'ViT-B-16')
  default.open_clip_towers(config)
  config.model.model_img.mask_ratio = 0.5
  masking = config.model.model_img.masking
  masking.policy = 'cluster'
  masking.anchor_ratio = 0.03
  masking.threshold = 0.5
  masking.calibrate = True
  masking.target_mask_ratio = 0.5
  masking.min_mask_ratio = 0.3
  return config
