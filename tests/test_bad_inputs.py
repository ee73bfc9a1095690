"""Damaged or wrong evaluation sets and evaluation fields: refused at start-up, before any
training, with the field, the file and what was expected named in one line."""

import io
import json
import shutil
import tarfile

import pytest

import evaluators
import train
from tests.conftest import micro_config


def _rewrite_first_shard(root, change):
  """Copies of every member of root/test/0.tar, `change(name, data)` applied to each."""
  path = root / 'test' / '0.tar'
  with tarfile.open(path) as tar:
    members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
  with tarfile.open(path, 'w') as tar:
    for name, data in members:
      data = change(name, data)
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _set(demo_dir, tmp_path, name, change=None):
  root = tmp_path / name
  shutil.copytree(demo_dir / name, root)
  if change:
    _rewrite_first_shard(root, change)
  return root


def _build(config):
  train.check_config(config)
  from models import clip  # pylint: disable=g-import-not-at-top
  from trainer import partitioning  # pylint: disable=g-import-not-at-top
  from input_pipeline import tokenizer  # pylint: disable=g-import-not-at-top
  evaluators.build(config, clip.from_config(config), partitioning.make_mesh(config),
                   tokenizer.from_config(config))


@pytest.mark.parametrize('label', [b'-1', b'abc', b''])
def test_a_class_label_that_is_no_class_number_is_named(demo_dir, tmp_path, label):
  first = {}

  def change(name, data):
    if name.endswith('.cls') and not first:
      first['name'] = name
      return label
    return data

  root = _set(demo_dir, tmp_path, 'wds_zeroshot', change)
  config = micro_config(demo_dir, eval_dataset=f'wds:{root}', eval_split='test')
  key = first['name'][:-len('.cls')]
  with pytest.raises(ValueError, match=rf'config.eval_dataset=wds:.*0.tar: {key}.cls holds '
                                       rf"'{label.decode()}': expected a class number >= 0"):
    _build(config)


def test_a_caption_that_is_not_utf8_is_named(demo_dir, tmp_path):
  root = _set(demo_dir, tmp_path, 'wds_retrieval',
              lambda name, data: b'a red \xff circle' if name.endswith('.txt') else data)
  config = micro_config(demo_dir, **{'evals.retrieval.dataset': f'wds:{root}'})
  with pytest.raises(ValueError, match=r'config.evals.retrieval.dataset=wds:.*0.tar: '
                                       r'\w+.txt is not UTF-8 text \(byte 6'):
    _build(config)


def test_a_truncated_shard_is_named(demo_dir, tmp_path):
  root = _set(demo_dir, tmp_path, 'wds_zeroshot')
  shard = root / 'test' / '0.tar'
  shard.write_bytes(shard.read_bytes()[:700])
  config = micro_config(demo_dir, eval_dataset=f'wds:{root}', eval_split='test')
  with pytest.raises(ValueError, match=r'0.tar is not a whole tar shard .*copy it again'):
    _build(config)


@pytest.mark.parametrize('templates,message', [
    (['a photo of a {}.', 'a {adjective} {}.'], "'a {adjective} {}.' cannot take a class"),
    (['a photo of a {} and a {}.'], 'cannot take a class name'),
    (['a photo.'], "'a photo.' has no {} where the class name goes"),
])
def test_templates_that_cannot_take_a_class_name_are_refused_at_start_up(
    demo_dir, tmp_path, templates, message):
  path = tmp_path / 'templates.json'
  path.write_text(json.dumps(templates))
  with pytest.raises(ValueError, match=f'config.eval_templates=.*templates.json.*{message}'):
    train.check_config(micro_config(demo_dir, eval_templates=str(path)))


def test_a_templates_file_that_is_not_json_is_named(demo_dir, tmp_path):
  path = tmp_path / 'templates.json'
  path.write_text('["a photo of a {}.",')
  with pytest.raises(ValueError, match='config.eval_templates=.*is not a readable JSON file'):
    train.check_config(micro_config(demo_dir, eval_templates=str(path)))


@pytest.mark.parametrize('field,value,message', [
    ('evals.retrieval.max_images', -1, r'config.evals.retrieval.max_images=-1: expected a '
                                       'whole number >= 0'),
    ('evals.retrieval.recall_k', (0, 5), r'config.evals.retrieval.recall_k=\(0, 5\): '
                                         'expected one or more whole numbers >= 1'),
    ('evals.retrieval.every_steps', -2, 'config.evals.retrieval.every_steps=-2'),
])
def test_evaluation_fields_out_of_range_are_named(demo_dir, field, value, message):
  with pytest.raises(ValueError, match=message):
    train.check_config(micro_config(demo_dir, **{field: value}))
