"""GLIP: open_clip's ViT-B-16 with Gaussian masking, centre patches kept (sigma 0.2, 50%
masked), as GLIP trained it (open_clip's towers, CLIP BPE tokens, OpenAI's pixel statistics).

  python main.py --workdir=DIR --config=configs/glip_base16.py --config.laion_path=PATH

Report both columns of GLIP's tables: the default unmasked evaluation, and masked inference
with --config.model.model_img.masking.at_eval=True.
"""

from configs import default


def get_config():
  config = default.get_config()
  default.set_size(config, 'ViT-B-16')
  default.open_clip_towers(config)
  config.model.model_img.mask_ratio = 0.5
  config.model.model_img.masking.policy = 'gaussian'
  config.model.model_img.masking.sigma = 0.2  # a variance, as in GLIP
  return config
