"""Pictures of masks: which patches are kept, on the patch grid and on the images."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from models import clip
from trainer import partitioning
from trainer import workdir as workdir_lib
from trainer.state import TrainState
from trainer.step import separate_view_inputs, teacher_forward

# Low -> high: dark blue, teal, yellow (a perceptually ordered ramp).
RAMP = np.array([[20, 30, 90], [30, 140, 140], [250, 230, 60]], np.float32)


def keep_mask(keep_idx, valid, num_patches):
  """bool [B, N]: True where a patch is encoded (kept and valid)."""
  keep_idx = np.asarray(keep_idx)
  valid = np.ones(keep_idx.shape, bool) if valid is None else np.asarray(valid)
  kept = np.zeros((keep_idx.shape[0], num_patches), bool)
  np.put_along_axis(kept, keep_idx, valid, axis=1)
  return kept


def masked_grid(images, kept, grid_hw, columns=4):
  """uint8 images [B, H, W, 3] with dropped patches greyed -> one uint8 picture."""
  images = np.asarray(images, np.float32)
  batch, height, width, _ = images.shape
  gh, gw = grid_hw
  mask = kept.reshape(batch, gh, gw).repeat(height // gh, 1).repeat(width // gw, 2)
  images = np.where(mask[..., None], images, 0.3 * images + 0.7 * 128).astype(np.uint8)
  rows = -(-batch // columns)
  canvas = np.full((rows * (height + 2), columns * (width + 2), 3), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    canvas[r * (height + 2):r * (height + 2) + height,
           c * (width + 2):c * (width + 2) + width] = image
  return canvas


def heat_map(frequency, grid_hw, title, cell=24):
  """Keep frequency per position [N] in [0, 1] -> a labelled RGB picture."""
  values = np.clip(np.asarray(frequency).reshape(grid_hw), 0, 1)
  position = values * (len(RAMP) - 1)
  low = np.floor(position).astype(int).clip(0, len(RAMP) - 2)
  colours = RAMP[low] + (position - low)[..., None] * (RAMP[low + 1] - RAMP[low])
  pixels = colours.repeat(cell, 0).repeat(cell, 1).astype(np.uint8)
  picture = Image.new('RGB', (pixels.shape[1], pixels.shape[0] + 16), 'white')
  picture.paste(Image.fromarray(pixels), (0, 16))
  ImageDraw.Draw(picture).text((2, 2), title, fill='black')
  return picture


def _teacher_scores(model, state: TrainState, images, mesh):
  scores = jax.jit(lambda ema_params, x: teacher_forward(model, ema_params,
                                                         clip.normalize_pixels(model, x)),
                   out_shardings=partitioning.replicated(mesh))(
                       state.ema_params, partitioning.replicate(mesh, images))[1]
  return jnp.asarray(scores.addressable_data(0))


def kept_patches(policy, keep, rows):
  return (np.ones((rows, policy.num_patches), bool) if keep is None
          else keep_mask(*keep, policy.num_patches))


EXAMPLE_KEYS = ('image', 'views', 'crop_boxes')


def training_examples(first_batch, workdir: workdir_lib.Workdir, resumed: bool,
                      count: int = 8):
  """The training examples the run's pictures show: the first batch's first `count`, kept in
  WORKDIR/picture_examples.npz by the run's first start, so that a `resumed` run draws the
  same ones. Only process 0's pictures are written; other hosts use their own batch."""
  examples = {k: first_batch[k][:count] for k in EXAMPLE_KEYS if k in first_batch}
  if jax.process_index() > 0:
    return examples
  path = workdir.picture_examples
  kept = workdir_lib.read_arrays(path) if resumed else None
  if kept and kept.keys() == examples.keys() and all(kept[k].shape == examples[k].shape
                                                     for k in kept):
    return kept
  workdir_lib.write_arrays(path, **examples)
  return examples


def example_grid(model, policy, state: TrainState, examples, rng, mesh):
  """Training examples ({'image': uint8 [B, H, W, 3]}, a batch's) with the patches `policy`
  drops greyed out, as one uint8 picture; with separate view crops, views_grid's."""
  images = examples['image']
  scores = _teacher_scores(model, state, images, mesh) if policy.needs_scores else None
  normalize = lambda x: clip.normalize_pixels(model, x)
  if 'views' in examples:
    return views_grid(policy, rng, examples, scores, normalize)
  keep = policy(rng, normalize(images), scores)
  return masked_grid(images, kept_patches(policy, keep, len(images)), policy.grid_hw)


def views_grid(policy, rng, examples, scores, normalize):
  """Separate view crops (A-CLIP's): a row per example, the teacher's crop whole, then each
  view with the patches it drops greyed out. `scores`: the teacher's attention on its crop
  (attentive policy), mapped onto each view as in training."""
  images, views = np.asarray(examples['image']), np.asarray(examples['views'])
  batch, num_views = views.shape[:2]
  view_images, view_scores = separate_view_inputs(normalize, policy.grid_hw, examples, scores)
  kept = [np.ones((batch, policy.num_patches), bool)]
  for v, key in enumerate(jax.random.split(rng, num_views)):
    keep = policy(key, view_images[v], None if view_scores is None else view_scores[v])
    kept.append(kept_patches(policy, keep, batch))
  tiles = np.concatenate([images[:, None], views], 1)  # [B, 1 + V, H, W, 3]
  return masked_grid(tiles.reshape(-1, *tiles.shape[2:]),
                     np.stack(kept, 1).reshape(batch * (1 + num_views), -1),
                     policy.grid_hw, columns=1 + num_views)
