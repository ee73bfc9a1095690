"""What recipes share: model sizes, open_clip's towers and training loop, FLIP's run
habits, this project's choices for new runs, and the unmasked tuning after masked training.

Each function changes the fields of a config from configs/default.py (which documents every
field) and returns it; a recipe is a get_config() that calls some of them, e.g.

  config = default.get_config()
  presets.set_size(config, 'ViT-B-16')
  presets.open_clip_towers(config)
"""

def flip_run_control(config):
  """FLIP's train.py habits, for FLIP's recipes: zero-shot after the first virtual epoch and
  every vis_every_epochs, and every checkpoint kept."""
  config.eval_every_vis_epochs = True
  config.keep_checkpoints = 0
  return config


def project_choices(config):
  """This project's choices for new runs, where they differ from FLIP's model.

  A [CLS] and a [SEP] token around each caption, so that first-token pooling reads a token
  of its own; padding masked out of text attention; image embedding averaged over the
  patches only. Each is a config field, set here in one place for the recipes that use it.
  """
  config.aug.txt.cls_token = True
  config.aug.txt.sep_token = True
  config.model.model_txt.mask_padding = True
  config.model.clr.img_avg_with_cls = False
  return config


# Tower sizes: image (width, layers, heads), text (width, layers, heads), embedding width,
# patch side. B/16, L/16 and H/14 are FLIP's; tiny trains on one CPU in minutes.
SIZES = {
    'tiny': dict(img=(128, 4, 4), txt=(128, 4, 4), embed=128, patch=8),
    'B/16': dict(img=(768, 12, 12), txt=(512, 12, 8), embed=512, patch=16),
    'L/16': dict(img=(1024, 24, 16), txt=(768, 12, 12), embed=768, patch=16),
    'H/14': dict(img=(1280, 32, 16), txt=(1024, 24, 16), embed=1024, patch=14),
}


# open_clip's CLIP family by its model names (model_configs/<name>.json there), 224 pixels.
OPEN_CLIP_SIZES = {
    'ViT-B-32': dict(img=(768, 12, 12), txt=(512, 12, 8), embed=512, patch=32),
    'ViT-B-16': dict(img=(768, 12, 12), txt=(512, 12, 8), embed=512, patch=16),
    'ViT-L-14': dict(img=(1024, 24, 16), txt=(768, 12, 12), embed=768, patch=14),
    'ViT-L-16': dict(img=(1024, 24, 16), txt=(768, 12, 12), embed=768, patch=16),
    'ViT-H-14': dict(img=(1280, 32, 16), txt=(1024, 24, 16), embed=1024, patch=14),
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def open_clip_towers(config, quick_gelu: bool = False):
  """open_clip's CLIP towers, tokenizer and pixel statistics, keeping the sizes.

  Image: patch conv without bias, a learned position for every token including the class
  token, ln_pre, class-token pooling after ln_post. Text: CLIP's BPE with 77 tokens, causal
  attention, pooling at the end-of-text token after ln_final. Exact GELU (QuickGELU for
  OpenAI's weights, open_clip's `-quickgelu` models), LayerNorm epsilon 1e-5, OpenAI's pixel
  statistics, projections without bias.
  """
  img, txt, clr = config.model.model_img, config.model.model_txt, config.model.clr
  img.sincos = False
  img.patch_bias = False
  img.cls_position = True
  img.pre_norm = True
  clr.img_avg_token = False
  clr.proj_out_bias = False
  txt.causal = True
  txt.pool = 'argmax'
  txt.mask_padding = False
  txt.vocab_size = 49408
  config.aug.txt.tokenizer = 'clip_bpe'
  config.aug.txt.max_len = 77
  config.aug.txt.cls_token = False
  config.aug.txt.sep_token = False
  config.model.activation = 'quick_gelu' if quick_gelu else 'gelu'
  config.model.norm_eps = 1e-5
  config.aug.pixel_mean = OPENAI_MEAN
  config.aug.pixel_std = OPENAI_STD
  return config


def set_size(config, name: str):
  """Sets both towers and the embedding width to a named size from SIZES (FLIP's) or
  OPEN_CLIP_SIZES (which also set the image size to open_clip's 224 pixels)."""
  sizes = {**SIZES, **OPEN_CLIP_SIZES}
  if name not in sizes:
    raise ValueError(f'unknown model size {name!r}; expected one of {sorted(sizes)}')
  size = sizes[name]
  if name in OPEN_CLIP_SIZES:
    config.image_size = 224
  for tower, (width, layers, heads) in (('model_img', size['img']),
                                        ('model_txt', size['txt'])):
    cfg = config.model[tower]
    cfg.hidden_size = width
    cfg.transformer.num_layers = layers
    cfg.transformer.num_heads = heads
    cfg.transformer.mlp_dim = 4 * width
  config.model.model_img.patches.size = (size['patch'], size['patch'])
  config.model.clr.proj_dim_out = size['embed']
  return config


def open_clip_training(config, *, learning_rate: float, warmup_steps: int,
                       crop_scale=(0.9, 1.0)):
  """open_clip's training loop (open_clip_train), whose recipes GLIP and Masking Clusters ran.

  The learning rate is absolute; warmup in steps; AdamW betas (0.9, 0.98), eps 1e-6 and
  weight decay 0.2 on open_clip's set; logit_scale clamped after each update;
  torchvision's RandomResizedCrop with `crop_scale` (open_clip's default 0.9-1.0), bicubic,
  no flip; mixed precision (bfloat16 here, float16 with a loss scaler there).
  """
  config.abs_learning_rate = learning_rate
  config.warmup_steps = warmup_steps
  config.opt.b1, config.opt.b2, config.opt.eps = 0.9, 0.98, 1e-6
  config.opt.weight_decay = 0.2
  config.decay_set = 'open_clip'
  config.model.clr.logit_scale_clamp = 'after_update'
  config.aug.crop_ver = 'rrc'
  config.aug.area_range = tuple(crop_scale)
  config.aug.flip = False
  config.model.dtype = 'bfloat16'
  config.min_abs_lr = 0.0  # open_clip's cosine ends at 0
  return config


# Conceptual Captions 12M as GLIP and Masking Clusters counted it.
CC12M_SAMPLES = 10_968_539


def unmasked_tuning(config, *, learning_rate: float, batch_size: int, epochs: float = 1.0):
  """Tuning without masking after masked training (FLIP's and GLIP's last step): every patch
  and every text token, from the weights of `pretrain_dir`, no warmup."""
  config.model.model_img.mask_ratio = 0.0
  config.model.model_txt.masking.policy = 'none'
  config.abs_learning_rate = learning_rate
  config.batch_size = batch_size
  config.num_epochs = epochs
  config.warmup_steps, config.warmup_epochs = 0, 0.0
  return config


# --- GLIP's table (configs/glip_base16.py, glip_flip_base16.py, reclip_base16.py) -----------

def glip_training(config):
  """GLIP's model, data and optimisation, before the masking: open_clip's ViT-B-16 on CC12M,
  30 epochs, batch 1,280, learning rate 1e-3 after 10,000 warmup steps, crops of scale
  0.5-1.0 (configs/glip_base16.py cites GLIP's command)."""
  set_size(config, 'ViT-B-16')
  open_clip_towers(config)
  open_clip_training(config, learning_rate=1e-3, warmup_steps=10_000, crop_scale=(0.5, 1.0))
  config.samples_per_epoch = CC12M_SAMPLES
  config.num_epochs = 30.0
  config.batch_size = 1280
  config.eval_templates = 'openai80'
  return config


def glip_tuning(config):
  """GLIP's unmasked tuning: learning rate 1e-5, batch 640, one epoch."""
  return unmasked_tuning(config, learning_rate=1e-5, batch_size=640, epochs=1.0)
