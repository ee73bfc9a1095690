"""A-CLIP: ViT-B/16 with attentive masking from an EMA teacher, two 50% views per image.

  python main.py --workdir=DIR --config=configs/aclip_base16.py --config.laion_path=PATH

The EMA image tower (momentum 0.996 -> 1 on a cosine) scores patches by class-token
attention on the unmasked image; 2x2 blocks are kept by score (100 of 196 patches). Both
auxiliary losses are on: online-to-EMA distillation and SimCLR between the two views.
"""

from configs import default


def get_config():
  config = default.get_config()
  default.set_size(config, 'B/16')
  default.project_choices(config)  # [CLS]/[SEP], text padding masked, patch pooling
  config.model.model_img.mask_ratio = 0.5
  masking = config.model.model_img.masking
  masking.policy = 'attentive'
  masking.block = 2
  masking.temperature = 0.0
  masking.ema_momentum = 0.996
  masking.num_views = 2
  config.model.aclip.distill_weight = 1.0
  config.model.aclip.simclr_weight = 0.1
  config.model.aclip.head_dim = 256
  return config
