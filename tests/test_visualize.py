"""Pictures of what each policy keeps."""

import numpy as np
from PIL import Image

from tests.conftest import micro_config
from tools import visualize
from trainer import mask_pictures


def test_writes_a_heat_map_and_example_grid_per_policy(tmp_path, demo_dir):
  paths = visualize.write_pictures(micro_config(demo_dir), str(tmp_path), draws=64,
                                   examples=4)
  names = {p.split('/')[-1] for p in paths}
  for policy in visualize.POLICY_NAMES:
    assert {f'keep_frequency_{policy}.png', f'examples_{policy}.png'} <= names
  assert {'gaussian_sigma_0.1.png', 'gaussian_sigma_0.2.png', 'gaussian_sigma_0.8.png'} <= names
  # GLIP's sigma 0.2: the centre cell is brighter (kept more) than a corner cell.
  picture = np.asarray(Image.open(tmp_path / 'gaussian_sigma_0.2.png'))[16:]
  assert picture[84, 84].sum() > picture[2, 2].sum()


def test_masked_grid_greys_exactly_the_dropped_patches():
  colour = np.array([200, 40, 90], np.uint8)
  images = np.broadcast_to(colour, (1, 16, 16, 3))
  kept = np.array([[True, False, False, True]])
  grid = mask_pictures.masked_grid(images, kept, (2, 2), columns=1)
  np.testing.assert_array_equal(grid[0, 0], colour)
  np.testing.assert_allclose(grid[0, 8], 0.3 * colour + 0.7 * 128, atol=1)
  np.testing.assert_array_equal(grid[8, 8], colour)


def test_keep_mask_counts_only_valid_tokens():
  kept = mask_pictures.keep_mask(np.array([[3, 1, 0]]), np.array([[True, True, False]]), 4)
  assert kept.tolist() == [[False, True, False, True]]


def test_separate_view_crops_are_pictured_view_by_view(tmp_path, demo_dir):
  config = micro_config(demo_dir, **{'model.model_img.masking.num_views': 2,
                                     'model.model_img.masking.view_crops': 'separate'})
  paths = visualize.write_pictures(config, str(tmp_path), draws=16, examples=3)
  assert str(tmp_path / 'views_attentive.png') in paths
  picture = np.asarray(Image.open(tmp_path / 'views_attentive.png'))
  assert picture.shape == (3 * 34, 3 * 34, 3)  # per example: the teacher's crop, two views
  # Each view greys some patches; the teacher's crop none.
  teacher, view = picture[:32, :32], picture[:32, 34:66]
  grey = lambda tile: np.all(np.abs(tile.astype(int) - 128) < 40, axis=-1).mean()
  assert grey(view) > grey(teacher)
