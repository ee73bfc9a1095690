"""Weights of another run into a new train state, without their optimiser state: this
project's checkpoints, FLIP's released t5x checkpoints and open_clip's files
(config.pretrain_dir)."""

import os

from absl import logging
from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from foreign_weights import flip_t5x
from foreign_weights import layout
from foreign_weights import open_clip_state
from trainer import checkpoints
from trainer import state as state_lib


def resample_grid(embedding: np.ndarray, new_shape) -> np.ndarray:
  """Bilinearly resizes a [1, gh * gw, D] position embedding onto another square grid; a
  table with a class token's row first ([1, 1 + gh * gw, D], open_clip's) keeps that row."""
  def square(rows):
    side = int(round(np.sqrt(rows)))
    return side if side * side == rows else None

  cls_rows = 0
  if square(embedding.shape[1]) is None or square(new_shape[1]) is None:
    cls_rows = 1
  old_side, new_side = square(embedding.shape[1] - cls_rows), square(new_shape[1] - cls_rows)
  if old_side is None or new_side is None:
    raise ValueError(f'cannot resample position embedding {embedding.shape} -> {new_shape}: '
                     'grids must be square')
  grid = embedding[0, cls_rows:].reshape(old_side, old_side, -1)
  grid = jax.image.resize(grid, (new_side, new_side, grid.shape[-1]), 'bilinear')
  patches = np.asarray(grid).reshape(1, new_side * new_side, -1)
  return np.concatenate([embedding[:, :cls_rows], patches], axis=1).reshape(new_shape)


def foreign_format(path: str):
  """'a FLIP (t5x)' or 'an open_clip' when `path` holds another codebase's weights, else
  None."""
  path = os.path.abspath(path)
  if flip_t5x.find_step_dir(path) is not None:
    return 'a FLIP (t5x)'
  if open_clip_state.find(path) is not None:
    return 'an open_clip'
  return None


def check_pretrained(path: str, config):
  """Fails at start-up, naming config.pretrain_dir, when `path` holds no weights to load, or
  an open_clip folder whose open_clip_config.json describes another model than `config`
  (unless config.accept_config_changes, which loads them into this model with a warning)."""
  absolute = os.path.abspath(path)
  if flip_t5x.find_step_dir(absolute) is not None:
    return
  weights = open_clip_state.find(absolute)
  if weights:
    differences = open_clip_state.folder_config_differences(os.path.dirname(weights), config)
    if differences and config.accept_config_changes:
      logging.warning('config.pretrain_dir=%s: its open_clip_config.json describes another '
                      'model; its weights are loaded into this config\'s (%s)', path,
                      '; '.join(differences))
    elif differences:
      raise ValueError(
          f'config.pretrain_dir={path!r}: its {open_clip_state.CONFIG_FILE} describes another '
          f'model than this config ({"; ".join(differences)}); set those fields as the folder '
          'says, or add --config.accept_config_changes=True to load the weights into this '
          'model anyway')
    return
  try:
    checkpoints.latest_step_dir(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.pretrain_dir: {e}; expected a run of this project, a '
                            'FLIP release or an open_clip checkpoint') from e


def pretrained_step(path: str) -> int:
  """The training step of the weights `load_pretrained_params` reads from `path` (0 when the
  format does not say, as open_clip's files)."""
  absolute = os.path.abspath(path)
  step_dir = flip_t5x.find_step_dir(absolute)
  if step_dir is not None:
    return flip_t5x.step_of(step_dir)
  if open_clip_state.find(absolute) is not None:
    return 0
  name = os.path.basename(checkpoints.latest_step_dir(path))
  return int(name) if name.isdigit() else 0


def load_pretrained_params(path: str, params):
  """Weights of another run's checkpoint, without its optimiser state, fitted to `params`.

  `path` holds this project's checkpoints, a FLIP release in t5x's layout
  (foreign_weights/flip_t5x.py) or an open_clip checkpoint: `epoch_K.pt`, a state dict
  (`.pt`, `.bin`, `.pth`, `.safetensors`) or a Hugging Face style folder
  (foreign_weights/open_clip_state.py). Every tensor must find a parameter and every
  parameter a tensor; blocks are stacked or split where one side scans its layers and the
  other does not, image position tables are resampled onto another patch grid, and a
  longer text position table keeps its first positions.
  """
  target = traverse_util.flatten_dict(params, sep='/')
  shapes = {name: value.shape for name, value in target.items()}
  absolute = os.path.abspath(path)
  if flip_t5x.find_step_dir(absolute) is not None:
    source = flip_t5x.load(absolute, shapes)
  elif open_clip_state.find(absolute) is not None:
    try:
      source = open_clip_state.to_params(open_clip_state.read_state_dict(absolute), shapes,
                                         path)
    except ValueError as e:
      raise ValueError(f'config.pretrain_dir={path!r}: {e}') from e
  else:
    try:
      step_dir = checkpoints.latest_step_dir(path)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'config.pretrain_dir: {e}') from e
    try:
      restored = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'params'))
    except Exception as e:  # orbax raises what the damaged files make its readers raise
      cause = checkpoints.first_line(e, 200)
      raise ValueError(f'config.pretrain_dir={path!r}: {step_dir} is not a readable '
                       f'checkpoint ({type(e).__name__}: {cause})') from e
    # A run with its layers scanned tunes one with them unrolled, and back (the default
    # layout follows remat: configs/default.py, model.scan_layers).
    source = layout.in_layout_of(traverse_util.flatten_dict(restored, sep='/'), target)
  if source.keys() != target.keys():
    hint = (' (one was trained with the sigmoid loss, which has a logit_bias, and the other '
            'with the softmax loss: set config.model.loss as the checkpoint was written)'
            if ('logit_bias' in source) != ('logit_bias' in target) else '')
    raise ValueError(
        f'config.pretrain_dir={path!r}: its parameters differ from this model\'s{hint}; '
        f'missing {sorted(target.keys() - source.keys())}, unexpected '
        f'{sorted(source.keys() - target.keys())}')
  fitted = {}
  for name, want in target.items():
    value = np.asarray(source[name])
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
      raise ValueError(f'config.pretrain_dir={path!r}: parameter {name} holds NaN or '
                       'infinite values; these weights cannot be trained or evaluated')
    if value.shape != want.shape:
      same_width = value.ndim == 3 and value.shape[2:] == want.shape[2:]
      if name == 'text/pos_embedding' and same_width and value.shape[1] > want.shape[1]:
        logging.info('Keeping the first %d of the %d text positions', want.shape[1],
                     value.shape[1])
        value = value[:, :want.shape[1]]
      elif name.startswith('image/') and name.endswith('pos_embedding') and same_width:
        logging.info('Resampling %s from %s to %s', name, value.shape, want.shape)
        value = resample_grid(value, want.shape)
      else:
        raise ValueError(f'config.pretrain_dir={path!r}: parameter {name} has shape '
                         f'{value.shape} in the checkpoint but {want.shape} in this model')
    fitted[name] = jax.device_put(value.astype(want.dtype), want.sharding)
  return traverse_util.unflatten_dict(fitted, sep='/')


def into_state(path: str, state: state_lib.TrainState, objective) -> state_lib.TrainState:
  """`state` with the weights of `path` (and an EMA teacher starting from them)."""
  logging.info('Initialising weights from %s (optimiser state not loaded)', path)
  return state_lib.with_params(state, load_pretrained_params(path, state.params), objective)
