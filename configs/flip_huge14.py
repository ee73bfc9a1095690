"""FLIP ViT-H/14 on LAION-400M: 50% random masking, 10,000 ImageNet-sized epochs.

  python main.py --workdir=DIR --config=configs/flip_huge14.py --config.laion_path=PATH
"""

from configs import default


def get_config():
  config = default.get_config()
  default.set_size(config, 'H/14')
  config.model.model_img.mask_ratio = 0.5
  config.model.model_img.masking.policy = 'random'
  config.model.model_img.transformer.remat_policy = 'minimal'  # activations of 32 blocks
  return config
