"""FLIP's row of GLIP's table: random masking on GLIP's model, data and optimisation.

  python main.py --workdir=DIR --config=configs/glip_flip_base16.py[:0.75|:0.918] ...
  python main.py --workdir=TUNED --config=configs/glip_flip_base16.py:tune \
      --config.pretrain_dir=DIR ...   # unmasked tuning, as GLIP tuned its own rows

Everything but the policy is configs/glip_base16.py's (its docstring lists GLIP's command
and the deviations), so that the rows differ in the masking alone.
"""

from configs import default
from configs import glip_base16
from configs import presets


def get_config(variant: str = '0.5'):
  config = presets.glip_training(default.get_config())
  config.model.model_img.masking.policy = 'random'
  if variant == 'tune':
    return presets.glip_tuning(config)
  if variant not in glip_base16.MASK_RATIOS:
    raise ValueError(f'configs/glip_flip_base16.py:{variant}: expected a mask ratio of '
                     f'{glip_base16.MASK_RATIOS} or `tune`')
  config.model.model_img.mask_ratio = float(variant)
  return config
