"""A-CLIP's view geometry: each view its own crop, the teacher's attention cut and resized onto
it, checked against A-CLIP's own functions (tests/aclip_reference.py, run in torch)."""

import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from input_pipeline import augment
from input_pipeline.tokenizer import BertTokenizer
from input_pipeline import training_pairs
import masking
from masking import view_geometry
from tests.conftest import ROOT, micro_config
from trainer import mask_pictures
from trainer import partitioning
from trainer import step as step_lib


def torchvision_window(rng, height, width, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
  """RandomResizedCrop.get_params's first attempt that fits: (top, left, height, width)."""
  while True:
    area = height * width * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return [rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w]


def fixed_geometry(count=6, seed=0):
  """Images of several shapes, two view crops each and a teacher crop covering both, and a
  smooth positive attention map per teacher crop."""
  rng = np.random.default_rng(seed)
  views, teachers = [], []
  for _ in range(count):
    height, width = rng.integers(260, 520, 2)
    pair = [torchvision_window(rng, height, width) for _ in range(2)]
    top = min(b[0] for b in pair)
    left = min(b[1] for b in pair)
    bottom = max(b[0] + b[2] for b in pair)
    right = max(b[1] + b[3] for b in pair)
    new_top, new_left = rng.integers(0, top + 1), rng.integers(0, left + 1)
    new_bottom, new_right = rng.integers(bottom, height + 1), rng.integers(right, width + 1)
    views.append(pair)
    teachers.append([new_top, new_left, new_bottom - new_top, new_right - new_left])
  logits = rng.standard_normal((count, 14, 14))
  logits = (logits + np.roll(logits, 1, 1) + np.roll(logits, 1, 2)) / 3
  attention = np.exp(2 * logits).reshape(count, 196)
  attention /= attention.sum(1, keepdims=True)
  return (attention.astype(np.float32), np.array(views, np.int64),
          np.array(teachers, np.int64))


def test_each_views_kept_blocks_equal_aclips(tmp_path):
  attention, views, teacher = fixed_geometry()
  np.savez(tmp_path / 'inputs.npz', attention=attention, views=views, teacher=teacher)
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'aclip_reference.py'),
                           f'--inputs={tmp_path / "inputs.npz"}',
                           f'--out={tmp_path / "out.npz"}'],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  theirs = np.load(tmp_path / 'out.npz')
  num_keep = masking.num_keep(196, 0.5)
  for v in range(views.shape[1]):
    mapped = view_geometry.attention_on_view(jnp.asarray(attention), (14, 14),
                                             jnp.asarray(views[:, v]), jnp.asarray(teacher))
    np.testing.assert_allclose(mapped, theirs['mapped'][v], rtol=1e-5, atol=1e-9)
    keep = masking.attentive_keep(jax.random.PRNGKey(0), mapped, (14, 14), num_keep, block=2)
    kept = mask_pictures.keep_mask(keep, None, 196)
    assert kept.sum(1).tolist() == [100] * len(attention)  # 25 of 49 blocks, as A-CLIP's
    np.testing.assert_array_equal(kept, theirs['kept'][v])
  # The two views of an image keep different patches: each sees its own part of the map.
  assert (theirs['kept'][0] != theirs['kept'][1]).any()


def _png(height=180, width=260):
  """A lossless image, so that each crop's pixels are known exactly."""
  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
  picture = Image.fromarray(pixels).resize((width, height), Image.BILINEAR)
  buffer = io.BytesIO()
  picture.save(buffer, format='PNG')
  return buffer.getvalue(), np.asarray(picture)


def test_views_and_teacher_crop_are_the_pixels_their_boxes_name():
  data, image = _png()
  width = image.shape[1]
  views_of = lambda seed, flip: [x.numpy() for x in augment.train_views(
      tf.constant(data), 32, tf.constant([seed, 1], tf.int64), 2, (0.3, 0.6), flip=flip,
      crop_ver='rrc')]
  mirrored = 0
  for seed in range(8):
    teacher, views, boxes = views_of(seed, False)
    top, left, h, w = boxes[-1]
    for box in boxes[:-1]:  # the teacher's crop holds every view
      assert top <= box[0] and left <= box[1]
      assert box[0] + box[2] <= top + h and box[1] + box[3] <= left + w
    assert (boxes[0] != boxes[1]).any()  # each view is a crop of its own
    for tile, box in zip([teacher, *views], [boxes[-1], *boxes[:-1]]):
      crop = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
      expected = augment.to_pixels(augment.resize(tf.constant(crop), 32, antialias=True))
      np.testing.assert_array_equal(tile, expected.numpy())
    # A flip mirrors the whole example, pixels and boxes alike, or leaves it as it is.
    f_teacher, f_views, f_boxes = views_of(seed, True)
    if (f_boxes == boxes).all():
      np.testing.assert_array_equal(f_views, views)
    else:
      mirrored += 1
      np.testing.assert_array_equal(f_boxes[:, 1], width - boxes[:, 1] - boxes[:, 3])
      np.testing.assert_array_equal(f_views, views[:, :, ::-1])
      np.testing.assert_array_equal(f_teacher, teacher[:, ::-1])
  assert 0 < mirrored < 8


def test_separate_views_train_through_the_pipeline_and_are_pictured(demo_dir):
  config = micro_config(demo_dir, total_steps=20, warmup_epochs=0.0, learning_rate=0.05, **{
      'model.model_img.masking.policy': 'attentive', 'model.model_img.masking.num_views': 2,
      'model.model_img.masking.view_crops': 'separate', 'aug.crop_ver': 'rrc',
      'model.aclip.distill_weight': 2.0, 'model.aclip.simclr_weight': 1.0,
      'model.aclip.head_dim': 16})
  dataset = training_pairs.train_dataset(
      config, BertTokenizer(16), training_pairs.list_shards(config.laion_path), seed=0)
  batch = next(dataset.as_numpy_iterator())
  assert batch['views'].shape == (8, 2, 32, 32, 3) and batch['crop_boxes'].shape == (8, 3, 4)
  batch.pop('position')
  mesh = partitioning.make_mesh(config)
  training = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  state, losses = training.state, []
  for _ in range(6):
    state, metrics = training.step(state, partitioning.global_batch(mesh, batch),
                                   jax.random.PRNGKey(1))
    losses.append(float(metrics['train_loss']))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  examples = {k: batch[k][:2] for k in ('image', 'views', 'crop_boxes')}
  picture = mask_pictures.example_grid(training.model, training.policy, state, examples,
                                       jax.random.PRNGKey(2), mesh)
  assert picture.shape == (2 * 34, 3 * 34, 3)  # a row per example: teacher, view 1, view 2
