"""FLIP ViT-H/14 on LAION-400M: 50% random masking, 10,000 ImageNet-sized epochs.

  python main.py --workdir=DIR --config=configs/cfg_flip_huge14.py --config.laion_path=PATH

FLIP's own file name and values; the model is FLIP's exactly (see configs/default.py),
partitioned and rematerialised so that the step fits FLIP's v3-512 at FLIP's batch.
"""

from configs import default
from configs import presets


def get_config():
  config = default.get_config()
  config.num_epochs = 10000.0  # ~32 passes over LAION-400M
  config.model.model_img.mask_ratio = 0.5
  config.warmup_epochs = 200.0
  presets.set_size(config, 'H/14')
  config.partitioning.partition_states = True  # optimiser state sharded over `data`
  config.opt.flatten_params = True  # no effect here (see configs/default.py)
  # Fits FLIP's slice at FLIP's batch (v3-512), compiled for it (docs/pod-slices.md): the
  # optimiser state's 1280-wide axes do not split over 512 devices, so the weights are split
  # over 2 (`model`) and the state over the 256 of `data`; every block recomputed in the
  # backward pass (a third more FLOPs), 9.9 GiB per core where nothing else fits under 15.5.
  config.partitioning.num_partitions = 2
  config.model.model_img.transformer.remat_policy = 'full'
  config.model.model_txt.transformer.remat_policy = 'full'
  config.eval_batch_size = 512  # divides over v3-512's devices
  presets.flip_run_control(config)
  return config
