"""FLIP ViT-L/16 on LAION-2B: 50% random masking, 20,000 ImageNet-sized epochs.

  python main.py --workdir=DIR --config=configs/cfg_flip_large_L2B_2x.py --config.laion_path=PATH

FLIP's own file name and values; its released L/16 weights were trained with it.
"""

from configs import cfg_flip_large


def get_config():
  config = cfg_flip_large.get_config()
  config.num_epochs = 20000.0
  config.learning_rate = 2e-6
  return config
