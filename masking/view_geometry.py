"""A-CLIP's view geometry: the teacher's attention, cut and resized onto each view's grid.

With separate view crops (masking.view_crops='separate') every online view is its own random
crop of the image and the EMA teacher encodes one crop covering them all. Before blocks are
chosen, A-CLIP (models.py:448-467, ACLIP.get_mask) resizes the teacher's [gh, gw] attention
bilinearly to the teacher crop's size in pixels, cuts out the view's window and resizes that
bilinearly back to [gh, gw] (PyTorch's interpolate: align_corners=False, no antialiasing).

Both resizes are linear and separable, so the result is R_rows @ A @ R_cols^T with two small
per-image matrices; the image-sized map in between is never formed, and shapes stay static
whatever the crop sizes.
"""

import jax
import jax.numpy as jnp


def _bilinear_taps(positions, in_size, out_size):
  """PyTorch's bilinear source taps (align_corners=False) of output `positions` resizing
  `in_size` -> `out_size`: (lower index, upper index, weight of the upper)."""
  scale = in_size / out_size
  source = jnp.maximum((positions + 0.5) * scale - 0.5, 0.0)
  lower = jnp.floor(source)
  upper = jnp.minimum(lower + 1, in_size - 1)
  return lower, upper, source - lower


def _resize_matrix(grid: int, view_offset, view_size, teacher_size):
  """[grid, grid]: row y mixes the teacher's grid cells into the view's grid cell y, along
  one axis. Offsets and sizes are in the image's pixels."""
  cells = jnp.arange(grid, dtype=jnp.float32)
  # Second resize: the view's window (view_size pixels) down to the grid.
  p0, p1, w = _bilinear_taps(cells, view_size, grid)

  def upsampled(pixel):
    """The first resize (grid -> teacher_size pixels) at a pixel of the teacher crop, as a
    row of weights over the grid cells."""
    i0, i1, v = _bilinear_taps(pixel, grid, teacher_size)
    one_hot = lambda i: jax.nn.one_hot(i.astype(jnp.int32), grid)
    return (1 - v)[:, None] * one_hot(i0) + v[:, None] * one_hot(i1)

  return ((1 - w)[:, None] * upsampled(p0 + view_offset)
          + w[:, None] * upsampled(p1 + view_offset))


def attention_on_view(scores, grid_hw, view_box, teacher_box):
  """The teacher's attention as the view sees it.

  scores [B, gh * gw]: the teacher's class-token attention on its crop. view_box and
  teacher_box [B, 4]: (top, left, height, width) in the image's pixels, as torchvision's
  RandomResizedCrop.get_params gives them. Returns [B, gh * gw] on the view's grid.
  """
  gh, gw = grid_hw
  view_box = view_box.astype(jnp.float32)
  teacher_box = teacher_box.astype(jnp.float32)

  def one(attention, view, teacher):
    rows = _resize_matrix(gh, view[0] - teacher[0], view[2], teacher[2])
    cols = _resize_matrix(gw, view[1] - teacher[1], view[3], teacher[3])
    return rows @ attention.reshape(gh, gw) @ cols.T

  mapped = jax.vmap(one)(scores.astype(jnp.float32), view_box, teacher_box)
  return mapped.reshape(scores.shape[0], gh * gw)
