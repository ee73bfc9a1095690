"""RECLIP's row of GLIP's table: no masking, smaller images instead, then tuning at 224.

  python main.py --workdir=DIR --config=configs/reclip_base16.py[:160|:112|:64] ...
  python main.py --workdir=TUNED --config=configs/reclip_base16.py:tune \
      --config.pretrain_dir=DIR ...   # at 224 pixels; the position table is resampled

RECLIP saves compute by resolution where FLIP and GLIP drop patches: at 160, 112 and 64
pixels the encoder sees 100, 49 and 16 of the 196 patches of 224. Everything else is
configs/glip_base16.py's (its docstring lists GLIP's command and the deviations); the tuning
is GLIP's (learning rate 1e-5, batch 640, one epoch) at 224 pixels, starting from the
low-resolution weights with the learned position table resampled bicubically onto the 14 x 14
grid, the class token's row kept.
"""

from configs import default
from configs import presets

IMAGE_SIZES = ('160', '112', '64')


def get_config(variant: str = '160'):
  config = presets.glip_training(default.get_config())
  config.model.model_img.mask_ratio = 0.0
  config.model.model_img.masking.policy = 'none'
  if variant == 'tune':
    return presets.glip_tuning(config)  # at open_clip's 224 pixels
  if variant not in IMAGE_SIZES:
    raise ValueError(f'configs/reclip_base16.py:{variant}: expected an image size of '
                     f'{IMAGE_SIZES} or `tune`')
  config.image_size = int(variant)
  return config
