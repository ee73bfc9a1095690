"""FLIP ViT-H/14 on LAION-2B: 50% random masking, 20,000 ImageNet-sized epochs.

  python main.py --workdir=DIR --config=configs/cfg_flip_huge14_L2B_2x.py --config.laion_path=PATH

FLIP's own file name and values; its released H/14 weights were trained with it.
"""

from configs import cfg_flip_huge14


def get_config():
  config = cfg_flip_huge14.get_config()
  config.num_epochs = 20000.0
  config.learning_rate = 2e-6
  return config
