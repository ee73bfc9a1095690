"""FLIP ViT-B/16 on LAION-400M: 50% random masking, 10,000 ImageNet-sized epochs.

  python main.py --workdir=DIR --config=configs/flip_base16.py --config.laion_path=PATH
"""

from configs import default


def get_config():
  config = default.get_config()
  default.set_size(config, 'B/16')
  config.model.model_img.mask_ratio = 0.5
  config.model.model_img.masking.policy = 'random'
  return config
