"""A-CLIP: ViT-B/16 with attentive masking from an EMA teacher, two 50% views per image, as
A-CLIP's release trains it.

  python main.py --workdir=DIR --config=configs/aclip_base16.py --config.laion_path=YFCC15M

A-CLIP's command (README.md, main.py's defaults): YFCC15M, 25 epochs, global batch 4,096 (64
per GPU on 64 GPUs), learning rate 5e-4 (absolute) after one epoch of warmup from 1e-6, a
cosine down to 1e-5, AdamW (0.9, 0.98), eps 1e-8, weight decay 0.5 on its set (every
tensor of two or more dimensions but biases: its class token is decayed, logit_scale is
not), logit_scale clamped to [0, log 100] after each update, mixed precision.

Its model (models.py): timm's ViT-B/16 image tower (a patch embedding with bias, frozen; a
learned position for the class token; no LayerNorm before the encoder; class-token pooling
after the last norm) and CLIP's 12-layer, 512-wide causal text tower with CLIP's BPE, 77
tokens, pooled at the end of text; ImageNet's pixel statistics.

Its views (datasets.py:143-167, 240-277): two random crops of scale 0.5-1.0, each masked by
the EMA teacher's class-token attention (averaged over heads and layers) on one crop
covering both, cut and resized onto the view; 2 x 2 blocks, the top 25 of 49 kept (100 of
196 patches). The EMA (image tower and projector) rises from 0.996 to 1 on a cosine. Loss:
the mean of the two views' contrastive losses + SimCLR between the views (temperature 0.1)
+ 2 x the online-to-EMA distillation (losses.py:99-104).

Deviations: one activation and one LayerNorm epsilon for both towers (exact GELU and 1e-5;
A-CLIP's text tower uses QuickGELU, its image tower eps 1e-6); bicubic resizing where
A-CLIP's crops resize bilinearly; no colour jitter, greyscale, blur or solarisation of the
views; the projector and predictor are this project's 2-layer heads (A-CLIP's are 4,096-wide
MLPs with BatchNorm); the warmup reaches the peak one step later (A-CLIP's linspace ends on
its last warmup step); SimCLR contrasts the two views, where A-CLIP's loss passes the first
view twice (losses.py:47-49); the teacher's crop always covers both views (see
input_pipeline/augment.py covering_window); samples_per_epoch is the 14,829,396 pairs of
OpenAI's YFCC subset, of which a copy usually holds fewer: set it to your count.
"""

from configs import default
from configs import presets


def get_config():
  config = default.get_config()
  presets.set_size(config, 'ViT-B-16')
  presets.open_clip_towers(config)
  img = config.model.model_img
  img.patch_bias = True
  img.pre_norm = False
  img.freeze_patch_embedding = True
  config.aug.pixel_mean = (0.485, 0.456, 0.406)
  config.aug.pixel_std = (0.229, 0.224, 0.225)
  config.samples_per_epoch = 14_829_396
  config.num_epochs = 25.0
  config.batch_size = 4096
  config.abs_learning_rate = 5e-4
  config.warmup_epochs = 1.0
  config.warmup_abs_lr = 1e-6
  config.min_abs_lr = 1e-5
  config.opt.b1, config.opt.b2, config.opt.eps = 0.9, 0.98, 1e-8
  config.opt.weight_decay = 0.5
  config.decay_set = 'aclip'
  config.model.clr.logit_scale_clamp = 'after_update'
  config.model.dtype = 'bfloat16'
  config.aug.crop_ver = 'rrc'
  config.aug.area_range = (0.5, 1.0)
  config.aug.flip = False
  config.eval_templates = 'openai80'
  img.mask_ratio = 0.5
  masking = img.masking
  masking.policy = 'attentive'
  masking.block = 2
  masking.temperature = 0.0
  masking.ema_momentum = 0.996
  masking.num_views = 2
  masking.view_crops = 'separate'
  config.model.aclip.distill_weight = 2.0
  config.model.aclip.simclr_weight = 1.0
  config.model.aclip.simclr_temperature = 0.1
  config.model.aclip.head_dim = 256
  return config
