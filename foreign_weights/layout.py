"""Moving flat parameter dicts ({'image/encoder/block_00/...': array}) between the unrolled
layout (one entry per block) and nn.scan's (`encoder/blocks/...`, layers stacked first)."""

import re
from typing import Dict

import numpy as np

_UNROLLED = re.compile(r'(.*/encoder)/block_(\d+)/(.*)')
_SCANNED = re.compile(r'(.*/encoder)/blocks/(.*)')


def is_scanned(names) -> bool:
  return any('/blocks/' in name for name in names)


def stack_blocks(flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """block_00, block_01, ... -> one `blocks` entry per parameter, layers stacked first."""
  stacked, layers = {}, {}
  for name, value in flat.items():
    match = _UNROLLED.fullmatch(name)
    if match:
      layers.setdefault(f'{match.group(1)}/blocks/{match.group(3)}', {})[
          int(match.group(2))] = value
    else:
      stacked[name] = value
  for name, by_layer in layers.items():
    shapes = {i: np.shape(by_layer[i]) for i in sorted(by_layer)}
    if len(set(shapes.values())) > 1:
      raise ValueError(f'{name}: the blocks\' tensors differ in shape, so they cannot be '
                       f'stacked: {shapes}')
    stacked[name] = np.stack([by_layer[i] for i in sorted(by_layer)])
  return stacked


def unstack_blocks(flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The inverse of stack_blocks: `blocks` entries split into block_00, block_01, ..."""
  unrolled = {}
  for name, value in flat.items():
    match = _SCANNED.fullmatch(name)
    if not match:
      unrolled[name] = value
      continue
    for i, layer in enumerate(np.asarray(value)):
      unrolled[f'{match.group(1)}/block_{i:02d}/{match.group(2)}'] = layer
  return unrolled


def in_layout_of(flat: Dict[str, np.ndarray], target_names) -> Dict[str, np.ndarray]:
  """`flat` with its blocks stacked or split as `target_names` (the model's parameter names)
  have them: weights of a run, FLIP or open_clip, whichever way each scanned its layers."""
  if is_scanned(target_names) and not is_scanned(flat):
    return stack_blocks(flat)
  if is_scanned(flat) and not is_scanned(target_names):
    return unstack_blocks(flat)
  return flat
