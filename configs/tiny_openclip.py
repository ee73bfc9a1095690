"""The demo on open_clip's towers: configs/tiny.py's sizes and data, open_clip's model.

  python main.py --workdir=workdirs/tiny_openclip --config=configs/tiny_openclip.py
  python -m tools.export_open_clip --checkpoint=workdirs/tiny_openclip --out=DIR

CLIP BPE tokens (16: the demo's captions are short), causal text attention pooled at the end
of text, a class token with a learned position, ln_pre, class-token pooling, exact GELU,
LayerNorm epsilon 1e-5 and OpenAI's pixel statistics: what open_clip builds, so that the
export opens in open_clip and CLIP_benchmark exactly.
"""

from configs import presets
from configs import tiny


def get_config():
  config = tiny.get_config()
  presets.open_clip_towers(config)
  config.aug.txt.max_len = 16
  return config
