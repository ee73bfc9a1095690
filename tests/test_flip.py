"""FLIP's config files, command lines and released weights work here unchanged.

The expected values and the reference forward pass are restated in tests/flip_reference.py.
"""

import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import clip
from tests.conftest import ROOT, metrics_rows, micro_config
from tests import flip_reference
from trainer import partitioning
from trainer import pretrained
from trainer import state as state_lib

HEADS = 2


def _flat(config, prefix=''):
  out = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      out.update(_flat(value, name + '.'))
    else:
      out[name] = value
  return out


# FLIP's values a recipe changes so that its step fits FLIP's own slice at FLIP's batch, as
# tools/plan.py compiled it for that slice (docs/pod-slices.md).
FITTING_FLIPS_SLICE = {'partitioning.num_partitions': 2,
                       'model.model_img.transformer.remat_policy': 'full',
                       'model.model_txt.transformer.remat_policy': 'full'}
CHANGED_TO_FIT = {'cfg_flip_huge14': FITTING_FLIPS_SLICE,
                  'cfg_flip_huge14_L2B_2x': FITTING_FLIPS_SLICE}


@pytest.mark.parametrize('recipe', sorted(flip_reference.FLIP_RECIPES))
def test_flip_config_files_hold_every_flip_field_with_flips_value(recipe):
  config = _flat(importlib.import_module(f'configs.{recipe}').get_config())
  expected = {**flip_reference.FLIP_DEFAULT, **flip_reference.FLIP_RECIPES[recipe],
              **CHANGED_TO_FIT.get(recipe, {})}
  assert not expected.keys() - config.keys()
  wrong = {k: (config[k], v) for k, v in expected.items() if config[k] != v}
  assert not wrong, wrong


def flip_model_config(demo_dir, scan_layers):
  """FLIP's model (cfg_flip_base's choices) at the micro test size."""
  config = micro_config(demo_dir, **{
      'model.scan_layers': scan_layers, 'aug.txt.cls_token': False,
      'aug.txt.sep_token': False, 'model.model_txt.mask_padding': False,
      'model.clr.img_avg_with_cls': True, 'model.model_img.patches.size': (8, 8),
      'model.model_img.transformer.num_layers': 2,
      'model.model_txt.transformer.num_layers': 2})
  return config


def flip_params(config, seed=0):
  return flip_reference.random_flip_params(
      np.random.default_rng(seed), image_width=32, text_width=32, layers=2, mlp_dim=64,
      embed=16, patch=8, grid_side=config.image_size // 8, vocab=30523,
      max_len=config.aug.txt.max_len)


def our_params(config, path):
  mesh = partitioning.make_mesh(config)
  model = clip.from_config(config)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(3), mesh)
  return model, pretrained.load_pretrained_params(path, state.params)


@pytest.mark.parametrize('scan_layers,bucket', [(False, None), (True, 'flip-release-bucket')])
def test_flip_release_loads_and_gives_flips_embeddings(tmp_path, demo_dir, scan_layers,
                                                        bucket):
  config = flip_model_config(demo_dir, scan_layers)
  weights = flip_params(config)
  flip_reference.write_t5x_checkpoint(str(tmp_path / 'release'), weights, 5000,
                                      bucket=bucket, inline=('img_encoder/cls', 'logit_scale'))
  # A release is loaded as it comes: the folder of checkpoint_<step>/ or that folder.
  for path in (tmp_path / 'release', tmp_path / 'release' / 'checkpoint_5000'):
    model, params = our_params(config, str(path))
    assert pretrained.pretrained_step(str(path)) == 5000  # where eval_only writes
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    tokens = rng.integers(1000, 30000, (3, 16)).astype(np.int32)
    tokens[:, 9:] = 0  # padding, which FLIP's text tower attends to
    ours_image = model.apply({'params': params}, jnp.asarray(images),
                             method=clip.CLIP.encode_image)
    ours_text = model.apply({'params': params}, jnp.asarray(tokens),
                            method=clip.CLIP.encode_text)
    np.testing.assert_allclose(ours_image, flip_reference.flip_image_embedding(
        weights, images, 8, HEADS), atol=2e-5)
    np.testing.assert_allclose(ours_text, flip_reference.flip_text_embedding(
        weights, tokens, HEADS), atol=2e-5)
    assert float(model.apply({'params': params}, method=clip.CLIP.logit_scale)) == (
        pytest.approx(np.log(1 / 0.07)))


def test_flip_parameters_that_do_not_map_are_named(tmp_path, demo_dir):
  config = flip_model_config(demo_dir, False)
  weights = flip_params(config)
  weights['img_encoder']['extra'] = {'kernel': np.zeros((2, 2), np.float32)}
  del weights['txt_mlp1']
  flip_reference.write_t5x_checkpoint(str(tmp_path / 'odd'), weights, 1,
                                      with_optimizer_state=False)
  with pytest.raises(ValueError, match=r"missing \['text/projection/kernel'\], unexpected "
                                       r"\['image/extra/kernel'\]"):
    our_params(config, str(tmp_path / 'odd'))
  os.remove(tmp_path / 'odd' / 'checkpoint_1' / 'checkpoint')
  with pytest.raises(FileNotFoundError, match='pretrain_dir'):
    our_params(config, str(tmp_path / 'odd'))


# Sizes shrunk by overrides, as a user fits FLIP's commands onto one small machine.
def shrunk(demo_dir):
  flags = [f'--config.laion_path={demo_dir / "train"}',
           f'--config.eval_dataset=folder:{demo_dir / "zeroshot"}', '--config.image_size=32',
           '--config.batch_size=8', '--config.eval_batch_size=16',
           '--config.shuffle_buffer=16', '--config.samples_per_epoch=96',
           '--config.num_parallel_reads=2', '--config.aug.txt.max_len=16',
           '--config.model.clr.proj_dim_out=16', '--config.model.model_img.patches.size=(8, 8)']
  for tower in ('model_img', 'model_txt'):
    flags += [f'--config.model.{tower}.hidden_size=32',
              f'--config.model.{tower}.transformer.mlp_dim=64',
              f'--config.model.{tower}.transformer.num_heads=2',
              f'--config.model.{tower}.transformer.num_layers=2']
  return flags


def _main(workdir, config_file, *flags):
  done = subprocess.run([sys.executable, 'main.py', f'--workdir={workdir}',
                         f'--config={config_file}', *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def test_flips_readme_commands_run(tmp_path, demo_dir):
  # 1. Pre-training (FLIP's README), two steps.
  pretrain = tmp_path / 'pretrain'
  _main(pretrain, 'configs/cfg_flip_large.py', *shrunk(demo_dir), '--config.total_steps=2')
  # 2. Unmasked tuning from it, with FLIP's activation checkpointing.
  tuned = tmp_path / 'tuned'
  _main(tuned, 'configs/cfg_flip_large.py', *shrunk(demo_dir),
        '--config.model.model_img.mask_ratio=0.0', '--config.learning_rate=4e-8',
        '--config.num_epochs=100', '--config.warmup_epochs=20',
        f'--config.pretrain_dir={pretrain}', '--config.total_steps=2',
        '--config.model.model_img.transformer.remat_policy=actcp')
  rows = [r for r in metrics_rows(tuned) if 'train_loss' in r]
  assert rows[-1]['kept_patches'] == 16  # every patch of the 4 x 4 grid
  # 3. eval_only of a released checkpoint (t5x layout).
  config = flip_model_config(demo_dir, True)
  flip_reference.write_t5x_checkpoint(str(tmp_path / 'release'), flip_params(config), 100)
  evaluated = tmp_path / 'eval'
  done = _main(evaluated, 'configs/cfg_flip_large.py', *shrunk(demo_dir),
               f'--config.pretrain_dir={tmp_path / "release"}', '--config.eval_only=True')
  assert 'FLIP (t5x) checkpoint' in done.stderr
  assert 0 <= metrics_rows(evaluated)[-1]['zeroshot/top1'] <= 1


@pytest.mark.parametrize('where', ['absolute', 'parent'])
def test_an_array_spec_pointing_outside_the_checkpoint_is_not_read(tmp_path, demo_dir, where):
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  config = flip_model_config(demo_dir, False)
  step_dir = flip_reference.write_t5x_checkpoint(str(tmp_path / 'release'), flip_params(config),
                                                 1, with_optimizer_state=False)
  name = 'target.txt_mlp1.kernel'
  outside = tmp_path / 'elsewhere' / name
  shutil.move(os.path.join(step_dir, name), outside.parent.mkdir() or outside)
  path = os.path.join(step_dir, 'checkpoint')
  with open(path, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  spec = tree['optimizer']['target']['txt_mlp1']['kernel']
  spec['kvstore']['path'] = str(outside) if where == 'absolute' else f'../../elsewhere/{name}'
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(tree))
  with pytest.raises(FileNotFoundError, match=f'parameter {name[len("target."):]} is stored in '
                                               '.*which is not in that folder'):
    our_params(config, str(tmp_path / 'release'))
