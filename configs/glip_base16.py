"""GLIP: open_clip's ViT-B-16 with Gaussian masking, centre patches kept, as GLIP trained it.

  python main.py --workdir=DIR --config=configs/glip_base16.py --config.laion_path=CC12M
  python main.py --workdir=DIR --config=configs/glip_base16.py:0.75 ...   # 75% masked
  python main.py --workdir=DIR --config=configs/glip_base16.py:0.918 ...  # 91.8% masked
  python main.py --workdir=TUNED --config=configs/glip_base16.py:tune \
      --config.pretrain_dir=DIR --config.laion_path=CC12M   # unmasked tuning

GLIP's command: CC12M (10,968,539 pairs), 30 epochs, global batch 1,280, learning rate 1e-3
(absolute), open_clip's training loop (warmup 10,000 steps, AdamW (0.9, 0.98), eps 1e-6,
weight decay 0.2 on open_clip's set, logit_scale clamped after each update, mixed
precision), RandomResizedCrop scale 0.5-1.0, Gaussian masking of 50% with sigma 0.2 (a
variance on [-1, 1] grid coordinates). Its unmasked tuning: learning rate 1e-5, batch 640,
one epoch, from the masked run's weights. Report both columns of GLIP's tables: the default
unmasked evaluation, and masked inference with
--config.model.model_img.masking.at_eval=True.

Deviations: steps per epoch are floor(10,968,539 / 1,280) = 8,569 (open_clip's CSV loader
drops the last partial batch too; its webdataset loader rounds up); bfloat16 where open_clip
uses float16 with a loss scaler; the resize is TensorFlow's antialiased bicubic, close to
PIL's but not bit-equal.
"""

from configs import default
from configs import presets

MASK_RATIOS = ('0.5', '0.75', '0.918')


def get_config(variant: str = '0.5'):
  config = presets.glip_training(default.get_config())
  config.model.model_img.masking.policy = 'gaussian'
  config.model.model_img.masking.sigma = 0.2  # a variance, as in GLIP
  if variant == 'tune':
    return presets.glip_tuning(config)
  if variant not in MASK_RATIOS:
    raise ValueError(f'configs/glip_base16.py:{variant}: expected a mask ratio of '
                     f'{MASK_RATIOS} or `tune`')
  config.model.model_img.mask_ratio = float(variant)
  return config
