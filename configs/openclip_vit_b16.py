"""open_clip's ViT-B-16: the model GLIP and Masking Clusters trained, unmasked by default.

  python main.py --workdir=DIR --config=configs/openclip_vit_b16.py --config.laion_path=PATH
  # masked tuning of open_clip weights (epoch_K.pt, a state dict or an open_clip folder)
  python main.py --workdir=DIR --config=configs/openclip_vit_b16.py --config.laion_path=PATH \
      --config.pretrain_dir=epoch_32.pt --config.model.model_img.masking.policy=random \
      --config.model.model_img.mask_ratio=0.5

Embedding 512; image tower 768 wide, 12 layers of 12 heads, 16-pixel patches at 224 pixels;
text tower 512 wide, 12 layers of 8 heads, 77 CLIP BPE tokens, vocabulary 49,408. Its
checkpoints export to open_clip with tools/export_open_clip.py. `ViT-B-32`, `ViT-L-14`,
`ViT-L-16` and `ViT-H-14` are the other sizes of this family, given after the file's name
(`--config=configs/openclip_vit_b16.py:ViT-L-16`); OpenAI's weights need
`open_clip_towers(config, quick_gelu=True)` (model.activation='quick_gelu').
"""

from configs import default
from configs import presets


def get_config(size: str = 'ViT-B-16'):
  if size not in presets.OPEN_CLIP_SIZES:
    raise ValueError(f'{size!r} after configs/openclip_vit_b16.py is none of open_clip\'s '
                     f'sizes here: {", ".join(presets.OPEN_CLIP_SIZES)}')
  config = default.get_config()
  presets.set_size(config, size)
  presets.open_clip_towers(config)
  config.model.model_img.mask_ratio = 0.0
  config.model.model_img.masking.policy = 'none'
  return config
