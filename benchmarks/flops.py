"""A train step's FLOPs counted from the architecture, and the chips' peaks.

XLA's own count takes a scanned loop's body once; this one counts every layer.
"""

import numpy as np


# Dense bfloat16 TFLOP/s from the datasheets, by a part of jax's device_kind.
PEAK_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L40S': 362.0, 'L4': 121.0,
               'TPU v5p': 459.0, 'TPU v5 lite': 197.0, 'TPU v4': 275.0, 'TPU v3': 123.0}


def tower_flops(width: int, layers: int, tokens: int) -> float:
  """Forward FLOPs of a transformer tower's blocks for one example: q, k, v, out and the
  MLP's two matmuls (24 width^2 per token) and the two attention products (4 tokens width)."""
  return layers * tokens * (24.0 * width * width + 4.0 * tokens * width)


def train_flops_per_example(config, image_tokens: int) -> float:
  """3x the forward: the blocks of both towers, the patch embedding, the projections."""
  img, txt = config.model.model_img, config.model.model_txt
  patch = np.prod(img.patches.size)
  embed = config.model.clr.proj_dim_out
  forward = (tower_flops(img.hidden_size, img.transformer.num_layers, image_tokens)
             + tower_flops(txt.hidden_size, txt.transformer.num_layers, config.aug.txt.max_len)
             + 2.0 * (image_tokens - 1) * 3 * patch * img.hidden_size
             + 2.0 * embed * (img.hidden_size + txt.hidden_size))
  return 3 * forward
