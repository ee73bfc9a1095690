"""Pictures of what each masking policy keeps.

  python -m tools.visualize --config=configs/tiny.py --out=DIR [--checkpoint=WORKDIR]

Writes, per policy, `keep_frequency_POLICY.png` (how often each grid position is kept over
many draws, as a heat map on the patch grid) and `examples_POLICY.png` (demo images with the
masked patches greyed out), plus `gaussian_sigma_S.png` for GLIP's sigmas 0.1, 0.2 and 0.8.
With separate view crops (masking.view_crops='separate', A-CLIP's) it also writes
`views_attentive.png`: per example the teacher's crop, then each view with what it keeps.
The attentive policy scores patches with the EMA teacher of --checkpoint when given, else
with a freshly initialised image tower.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
from flax import linen as nn
import orbax.checkpoint as ocp
from PIL import Image

import masking
from models import clip
from models import pixel_normalization
from trainer import checkpoints
from trainer import console
from trainer.mask_pictures import heat_map, keep_mask, masked_grid, views_grid

POLICY_NAMES = ('random', 'gaussian', 'cluster', 'attentive')
def policy_config(config, name):
  config = config.copy_and_resolve_references()
  config.model.model_img.masking.policy = name
  return config


def sample_kept(config, name, rng, images, scores):
  policy = masking.get_policy(policy_config(config, name))
  keep = jax.jit(policy.__call__)(rng, images, scores)
  if keep is None:
    return np.ones((images.shape[0], policy.num_patches), bool)
  return keep_mask(*keep, policy.num_patches)


def teacher_scores(config, images, checkpoint):
  """Class-token attention of the EMA teacher (or of a fresh image tower)."""
  attentive = policy_config(config, 'attentive')
  model = clip.from_config(attentive)
  image_params = nn.unbox(model.image.init(jax.random.PRNGKey(0), images[:1]))['params']
  if checkpoint:
    step_dir = checkpoints.latest_step_dir(checkpoint)
    item = 'ema_params' if os.path.isdir(os.path.join(step_dir, 'ema_params')) else 'params'
    image_params = ocp.StandardCheckpointer().restore(os.path.join(step_dir, item))['image']
  _, scores = model.image.apply({'params': image_params}, images, cls_attention=True)
  return scores


def demo_batch(config, count):
  from input_pipeline import tokenizer, training_pairs  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.batch_size = count
  shards = training_pairs.list_shards(config.laion_path)
  dataset = training_pairs.train_dataset(config, tokenizer.from_config(config), shards,
                                         seed=config.seed_tf)
  return next(dataset.as_numpy_iterator())


def write_pictures(config, out_dir, *, draws=512, examples=8, checkpoint=None):
  os.makedirs(out_dir, exist_ok=True)
  grid_hw = masking.grid_of(config)
  batch = demo_batch(config, examples)
  images = jnp.asarray(batch['image'])
  pool = pixel_normalization.normalize(
      jnp.tile(images, (-(-draws // examples), 1, 1, 1))[:draws],
      *pixel_normalization.of_config(config))
  scores = teacher_scores(config, pool, checkpoint)
  cluster = config.model.model_img.masking
  if cluster.calibrate:
    config = config.copy_and_resolve_references()
    config.model.model_img.masking.threshold = masking.calibrate_threshold(
        jax.random.PRNGKey(2), pool, tuple(config.model.model_img.patches.size),
        cluster.anchor_ratio, cluster.target_mask_ratio)
  written = []
  for i, name in enumerate(POLICY_NAMES):
    rng = jax.random.PRNGKey(i)
    kept = sample_kept(config, name, rng, pool, scores)
    path = os.path.join(out_dir, f'keep_frequency_{name}.png')
    heat_map(kept.mean(0), grid_hw, f'{name}: kept {kept.mean():.2f}').save(path)
    path_examples = os.path.join(out_dir, f'examples_{name}.png')
    Image.fromarray(masked_grid(images, kept[:examples], grid_hw)).save(path_examples)
    written += [path, path_examples]
  if 'views' in batch:
    attentive = masking.get_policy(policy_config(config, 'attentive'))
    normalize = lambda x: pixel_normalization.normalize(
        x, *pixel_normalization.of_config(config))
    teacher = teacher_scores(config, normalize(images), checkpoint)
    path = os.path.join(out_dir, 'views_attentive.png')
    Image.fromarray(views_grid(attentive, jax.random.PRNGKey(5), batch, teacher,
                               normalize)).save(path)
    written.append(path)
  for sigma in (0.1, 0.2, 0.8):
    keep_idx = masking.gaussian_keep(jax.random.PRNGKey(7), 4000, (14, 14), 98, sigma)
    path = os.path.join(out_dir, f'gaussian_sigma_{sigma}.png')
    heat_map(keep_mask(keep_idx, None, 196).mean(0), (14, 14),
             f'sigma {sigma}, 50% of 14x14', cell=12).save(path)
    written.append(path)
  return written


@console.one_line_errors('visualize')
def main(argv):
  del argv
  for path in write_pictures(FLAGS.config, FLAGS.out, draws=FLAGS.draws,
                             checkpoint=FLAGS.checkpoint):
    print(path)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
  flags.DEFINE_string('out', 'masking_pictures', 'Output directory.')
  flags.DEFINE_integer('draws', 512, 'Masks drawn per policy for the keep frequencies.')
  flags.DEFINE_string('checkpoint', None, 'A run (workdir or checkpoint folder) whose EMA '
                      'teacher scores patches for the attentive policy.')
  FLAGS = flags.FLAGS
  app.run(main)
