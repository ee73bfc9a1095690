"""FLIP's released weights: t5x's on-disk layout, read without t5x, mapped onto our towers.

A release is a folder `checkpoint_<step>/` (or a folder of them) holding `checkpoint`, a
msgpack of `{"version": V, "optimizer": {"target": params, "state": ...}}`, and one zarr array
per parameter, named by its dotted path (`target.img_encoder.embedding.kernel`). In the
msgpack a parameter is either the array itself or a tensorstore spec of its zarr array.
A spec's path is relative to the checkpoint folder, whatever bucket or driver the run wrote
it with, and is resolved against the folder being read, as t5x does.
"""

import os
import re
from typing import Dict, Optional

from absl import logging
from flax import serialization
import numpy as np
import tensorstore as ts

from foreign_weights import layout
from models.vit import sincos_2d

CHECKPOINT_FILE = 'checkpoint'
_STEP_DIR = re.compile(r'checkpoint_(\d+)$')

# FLIP's parameter path (below the tower) -> ours, in the unrolled layout.
_BLOCK_PARTS = {'LayerNorm_0': 'norm_attention', 'LayerNorm_1': 'norm_mlp',
                'MultiHeadDotProductAttention_0': 'attention', 'MlpBlock_0': 'mlp'}
_TOWERS = {'img_encoder': 'image', 'txt_encoder': 'text'}
_HEADS = {'img_mlp1': 'image/projection', 'txt_mlp1': 'text/projection'}


def step_of(step_dir: str) -> int:
  """The training step of a checkpoint_<step>/ folder (0 for a folder named otherwise)."""
  found = _STEP_DIR.match(os.path.basename(os.path.normpath(step_dir)))
  return int(found.group(1)) if found else 0


def find_step_dir(path: str) -> Optional[str]:
  """The t5x checkpoint folder behind `path` (itself, or its newest checkpoint_<step>/),
  or None when `path` is not in t5x's layout."""
  if os.path.isfile(os.path.join(path, CHECKPOINT_FILE)):
    return path
  if not os.path.isdir(path):
    return None
  steps = [(int(m.group(1)), name) for name in os.listdir(path)
           if (m := _STEP_DIR.match(name)) and
           os.path.isfile(os.path.join(path, name, CHECKPOINT_FILE))]
  return os.path.join(path, max(steps)[1]) if steps else None


def _is_spec(node) -> bool:
  return isinstance(node, dict) and 'driver' in node and ('kvstore' in node or 'path' in node)


def _spec_path(spec) -> str:
  kvstore = spec.get('kvstore')
  relative = kvstore.get('path') if isinstance(kvstore, dict) else None
  return relative or spec.get('path') or (kvstore if isinstance(kvstore, str) else '')


def _inside(path: str, folder: str) -> bool:
  folder = os.path.realpath(folder)
  return os.path.commonpath([os.path.realpath(path), folder]) == folder


def _read_array(step_dir: str, name: str, spec) -> np.ndarray:
  relative = _spec_path(spec)
  # t5x joins the folder being read with the spec's path; a path carrying the writer's
  # own folder or bucket still ends in the array's dotted name.
  # Nothing outside the checkpoint folder is read: an absolute path, `..` or a link that
  # leads out of it counts only by its last name.
  candidates = [os.path.join(step_dir, relative),
                os.path.join(step_dir, os.path.basename(relative.rstrip('/')))]
  location = next((c for c in candidates if _inside(c, step_dir) and os.path.isdir(c)), None)
  if location is None:
    raise FileNotFoundError(f'FLIP checkpoint {step_dir}: parameter {name} is stored in '
                            f'{relative!r}, which is not in that folder')
  store = ts.open({'driver': spec.get('driver', 'zarr'),
                   'kvstore': {'driver': 'file', 'path': location}}, open=True).result()
  return np.asarray(store.read().result())


def read_target(step_dir: str) -> Dict[str, np.ndarray]:
  """Every parameter of a t5x checkpoint folder, {'img_encoder/embedding/kernel': array};
  the optimiser state, if the release carries it, is not read."""
  path = os.path.join(step_dir, CHECKPOINT_FILE)
  with open(path, 'rb') as f:
    try:
      contents = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several kinds on a damaged file
      raise ValueError(f'{path} is not a t5x checkpoint (msgpack): {e}') from e
  try:
    target = contents['optimizer']['target']
  except (KeyError, TypeError) as e:
    raise ValueError(f'{path} holds no optimizer/target parameters: not a t5x checkpoint'
                     ) from e
  flat = {}

  def walk(node, prefix):
    if _is_spec(node):
      flat[prefix] = _read_array(step_dir, prefix, node)
    elif isinstance(node, dict):
      for key, child in node.items():
        walk(child, f'{prefix}/{key}' if prefix else key)
    else:
      flat[prefix] = np.asarray(node)

  walk(target, '')
  return flat


def _our_name(flip_name: str) -> str:
  """FLIP's name -> ours (unrolled blocks); unknown names come back unchanged."""
  parts = flip_name.split('/')
  if parts[0] in _HEADS:
    return '/'.join([_HEADS[parts[0]]] + parts[1:])
  if parts[0] not in _TOWERS:
    return flip_name
  tower, rest = _TOWERS[parts[0]], parts[1:]
  if rest[:1] == ['embedding'] and tower == 'image':
    rest = ['patch_embedding'] + rest[1:]
  elif rest[:2] == ['posembed_encoder', 'pos_embedding']:
    rest = ['pos_embedding']
  elif rest[:2] == ['Transformer', 'encoder_norm']:
    rest = ['encoder', 'norm_out'] + rest[2:]
  elif rest[:1] == ['Transformer'] and len(rest) > 2:
    block = re.fullmatch(r'encoderblock_(\d+)', rest[1])
    if block and rest[2] in _BLOCK_PARTS:
      rest = ['encoder', f'block_{int(block.group(1)):02d}', _BLOCK_PARTS[rest[2]]] + rest[3:]
  return '/'.join([tower] + rest)


def _fit_image_positions(table: np.ndarray, target_shape, source: str):
  """FLIP stores its fixed sin-cos table as a (1, 1 + N, D) parameter, row 0 (zeros) for the
  class token. A sin-cos tower recomputes it (checked); a learned one takes rows 1.."""
  patches = table[0, 1:]
  side = int(round(np.sqrt(len(patches))))
  if target_shape is None:
    expected = sincos_2d((side, side), patches.shape[-1])
    gap = float(np.max(np.abs(expected - patches))) if expected.shape == patches.shape else 1.0
    if gap > 1e-4:
      raise ValueError(f'{source}: img_encoder/posembed_encoder/pos_embedding is not the 2-D '
                       f'sin-cos table this tower computes (max difference {gap:.3g}); set '
                       'config.model.model_img.sincos=False to load it as a learned table')
    return None
  return patches[None]


def load(path: str, target_shapes: Dict[str, tuple]) -> Dict[str, np.ndarray]:
  """FLIP's parameters under our names, in the layout of `target_shapes` (our flat names ->
  shapes): attention kernels unflattened, blocks stacked if scanned, the image position
  table fitted. Other shapes that differ (a longer text position table, a grid to resample)
  and names on either side without a partner are left to the caller."""
  step_dir = find_step_dir(path)
  flip = read_target(step_dir)
  logging.info('Reading FLIP (t5x) checkpoint %s: %d parameters', step_dir, len(flip))
  ours = {}
  for name, value in flip.items():
    mine = _our_name(name)
    if mine == 'image/pos_embedding':
      value = _fit_image_positions(value, target_shapes.get(mine), step_dir)
      if value is None:
        continue
    ours[mine] = value
  ours = layout.in_layout_of(ours, target_shapes)
  fitted = {}
  for name, value in ours.items():
    want = target_shapes.get(name)
    if want is not None and value.shape != tuple(want):
      if value.size == np.prod(want) and ('/attention/' in name or name == 'logit_scale'):
        value = value.reshape(want)  # FLIP's flattened heads; logit_scale of shape (1,)
    fitted[name] = value
  return fitted
