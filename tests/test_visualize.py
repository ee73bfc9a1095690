"""Pictures of what each policy keeps."""

import numpy as np
from PIL import Image

import pictures
from tools import visualize
from tests.conftest import micro_config


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
  images = np.zeros((1, 16, 16, 3), np.float32)  # normalised 0 = the ImageNet mean colour
  kept = np.array([[True, False, False, True]])
  grid = pictures.masked_grid(images, kept, (2, 2), columns=1)
  mean_colour = (np.array(pictures.augment.MEAN_RGB) * 255).astype(np.uint8)
  np.testing.assert_allclose(grid[0, 0], mean_colour, atol=1)
  assert abs(int(grid[0, 8, 0]) - int(0.3 * mean_colour[0] + 0.7 * 128)) <= 1
  np.testing.assert_allclose(grid[8, 8], mean_colour, atol=1)


def test_keep_mask_counts_only_valid_tokens():
  kept = pictures.keep_mask(np.array([[3, 1, 0]]), np.array([[True, True, False]]), 4)
  assert kept.tolist() == [[False, True, False, True]]
