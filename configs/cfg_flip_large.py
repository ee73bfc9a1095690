"""FLIP ViT-L/16 on LAION-400M: 50% random masking, 10,000 ImageNet-sized epochs.

  python main.py --workdir=DIR --config=configs/cfg_flip_large.py --config.laion_path=PATH

FLIP's own file name and values; the model is FLIP's exactly (see configs/default.py), its
layers unrolled (the default without remat), so that the step fits FLIP's v3-256 at FLIP's
batch: 14.1 GiB per core, against 22.2 scanned (docs/pod-slices.md).
"""

from configs import default
from configs import presets


def get_config():
  config = default.get_config()
  config.num_epochs = 10000.0  # ~32 passes over LAION-400M
  config.model.model_img.mask_ratio = 0.5
  config.partitioning.partition_states = True  # optimiser state sharded over `data`
  presets.flip_run_control(config)
  return config
