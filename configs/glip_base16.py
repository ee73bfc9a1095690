"""GLIP: ViT-B/16 with Gaussian masking, centre patches kept (sigma 0.2, 50% masked).

  python main.py --workdir=DIR --config=configs/glip_base16.py --config.laion_path=PATH

Report both columns of GLIP's tables: the default unmasked evaluation, and masked inference
with --config.model.model_img.masking.at_eval=True.
"""

from configs import default


def get_config():
  config = default.get_config()
  default.set_size(config, 'B/16')
  default.project_choices(config)  # [CLS]/[SEP], text padding masked, patch pooling
  config.model.model_img.mask_ratio = 0.5
  config.model.model_img.masking.policy = 'gaussian'
  config.model.model_img.masking.sigma = 0.2  # a variance, as in GLIP
  return config
