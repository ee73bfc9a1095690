"""Evaluations as the papers report them: zero-shot classification, retrieval, linear probe,
from TFDS-, folder- and CLIP_benchmark-style (wds:) datasets."""

import io
import json
import os
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

import evaluators
from evaluators import linear_probe as probe
from evaluators.retrieval import recall_at_k
from input_pipeline import tokenizer as tokenizer_lib
from models import clip
from tests.conftest import metrics_rows, micro_config
import train
from trainer import partitioning


def test_recall_at_k_on_a_hand_made_case():
  e0, e1, e2 = np.eye(3)
  images = np.stack([e0, e1, e2])
  # Captions and the image each belongs to; image 1 has two (one looks like image 2's).
  texts = np.stack([e0, e2, (e0 + e2) / np.sqrt(2), e2, e0])
  owners = np.array([0, 1, 2, 2, 1])
  got = recall_at_k(images, texts, owners, ks=(1, 2, 3))
  # Text to image, ties to the lower index (lax.top_k): caption 2 is as close to image 0 as
  # to its own image 2, and loses at K=1.
  assert got['image_retrieval_recall@1'] == pytest.approx(2 / 5)
  assert got['image_retrieval_recall@2'] == pytest.approx(4 / 5)
  assert got['image_retrieval_recall@3'] == 1.0
  # Image to text: image 1 finds caption 1 at K=2; image 2 meets caption 1 (of image 1)
  # before its own caption 3 in a tie.
  assert got['text_retrieval_recall@1'] == pytest.approx(1 / 3)
  assert got['text_retrieval_recall@2'] == 1.0


def test_linear_probe_separates_separable_classes_and_not_random_labels(demo_dir):
  rng = np.random.default_rng(0)
  mesh = partitioning.make_mesh(micro_config(demo_dir))

  def blobs(n):
    labels = rng.integers(0, 3, n)
    return (np.eye(8)[labels * 2] + 0.1 * rng.standard_normal((n, 8))).astype(np.float32), labels

  train_x, train_y = blobs(90)
  test_x, test_y = blobs(30)
  result = probe.linear_probe(train_x, train_y, test_x, test_y, 3, (1e-4, 10.0), mesh=mesh,
                              steps=200)
  assert result['top1'] == 1.0 and result['weight_decay'] == 1e-4
  # The closed-form answer on this data: the class whose direction the point is nearest.
  w, b = probe.fit_logistic_regression(train_x, train_y, 3, 1e-4, mesh=mesh, steps=200)
  np.testing.assert_array_equal(np.argmax(test_x @ w + b, 1),
                                np.argmax(test_x[:, [0, 2, 4]], 1))
  shuffled = probe.linear_probe(train_x, rng.permutation(train_y), test_x, test_y, 3,
                                (1e-4,), mesh=mesh, steps=200)
  assert shuffled['top1'] < 0.8


def write_wds(root, demo_dir, split):
  """The demo's zero-shot folder in CLIP_benchmark's layout: the same JPEG bytes with
  <key>.cls labels, and captions (<key>.txt, two per image), in two shards."""
  folder = demo_dir / 'zeroshot'
  classes = sorted(os.listdir(folder))
  (root / split).mkdir(parents=True, exist_ok=True)
  (root / 'classnames.txt').write_text('\n'.join(c.replace('_', ' ') for c in classes))
  (root / 'zeroshot_classification_templates.txt').write_text('a photo of a {c}.\n{c}\n')
  samples = [(label, name, (folder / name / f).read_bytes())
             for label, name in enumerate(classes) for f in sorted(os.listdir(folder / name))]
  for shard in range(2):
    with tarfile.open(root / split / f'{shard}.tar', 'w') as tar:
      for key, (label, name, image) in enumerate(samples):
        if key % 2 != shard:
          continue
        words = name.replace('_', ' ')
        if split == 'retrieval':
          # Lossless WebP, as CLIP_benchmark's shards hold.
          buffer = io.BytesIO()
          Image.open(io.BytesIO(image)).save(buffer, 'WEBP', lossless=True)
          files = {'webp': buffer.getvalue(),
                   'txt': f'a picture of a {words}\n{words}\n'.encode()}
        else:
          files = {'jpg': image, 'cls': f'{label}\n'.encode()}
        for extension, data in files.items():
          info = tarfile.TarInfo(f's{key:04d}.{extension}')
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, demo_dir):
  workdir = tmp_path_factory.mktemp('trained')
  train.train_and_evaluate(micro_config(demo_dir, total_steps=4, eval_at_end=False),
                           str(workdir))
  return workdir


def test_eval_only_writes_at_the_weights_step_and_replaces_a_repeat(tmp_path, demo_dir,
                                                                      trained):
  workdir = tmp_path / 'evaluations'
  config = micro_config(demo_dir, eval_only=True, pretrain_dir=str(trained))
  train.train_and_evaluate(config, str(workdir))
  first = metrics_rows(workdir)
  assert {r['step'] for r in first} == {4}  # the checkpoint's step, not 0
  assert any('zeroshot/top1' in r for r in first) and any('retrieval/images' in r for r in first)
  train.train_and_evaluate(config, str(workdir))
  again = metrics_rows(workdir)
  assert sorted(sorted(r) for r in again) == sorted(sorted(r) for r in first)
  assert os.listdir(workdir / 'reevaluated')  # its TensorBoard events, apart


def test_eval_only_runs_every_configured_evaluation_from_wds(tmp_path, demo_dir, trained):
  wds = tmp_path / 'wds_demo'
  for split in ('test', 'train', 'retrieval'):
    write_wds(wds, demo_dir, split)
  config = micro_config(demo_dir, eval_only=True, resume_dir=str(trained),
                        eval_templates=str(tmp_path / 'templates.json'))
  (tmp_path / 'templates.json').write_text('["a photo of a {}.", "{}"]')
  config.evals.wds_zeroshot = dict(type='zeroshot_classification', dataset=f'wds:{wds}')
  config.evals.wds_retrieval = dict(type='retrieval', dataset=f'wds:{wds}',
                                    split='retrieval', recall_k=(1, 5))
  config.evals.wds_probe = dict(type='linear_probe', dataset=f'wds:{wds}', probe_steps=100)
  workdir = tmp_path / 'eval'
  results = train.train_and_evaluate(config, str(workdir))
  row = metrics_rows(workdir)[-1]
  assert row['step'] == 4 and row == {'step': 4, **results}
  # The same images and templates through folder: and wds: give the same zero-shot scores.
  for metric in ('top1', 'top5', 'mean_per_class_recall', 'images'):
    assert row[f'zeroshot/{metric}'] == row[f'wds_zeroshot/{metric}'], metric
  assert row['wds_zeroshot/images'] == 64
  assert row['wds_retrieval/images'] == 64 and row['wds_retrieval/captions'] == 128
  for k in (1, 5):
    for kind in ('image', 'text'):
      assert 0 <= row[f'wds_retrieval/{kind}_retrieval_recall@{k}'] <= 1
  assert row['wds_retrieval/image_retrieval_recall@1'] <= (
      row['wds_retrieval/image_retrieval_recall@5'])
  assert 0 <= row['wds_probe/top1'] <= 1 and row['wds_probe/train_images'] == 64


def test_evaluation_configs_are_checked_by_name(demo_dir):
  config = micro_config(demo_dir)
  config.evals.coco = dict(type='retreival', dataset='wds:/x')
  with pytest.raises(ValueError, match=r"config.evals.coco.type='retreival'"):
    evaluators.eval_configs(config)
  config = micro_config(demo_dir)
  config.evals.coco = dict(type='retrieval', dataset='wds:/x', recal_k=(1,))
  with pytest.raises(ValueError, match=r"config.evals.coco: unknown fields \['recal_k'\]"):
    evaluators.eval_configs(config)
  config = micro_config(demo_dir)
  config.evals.zeroshot = dict(type='retrieval', dataset='wds:/x')
  with pytest.raises(ValueError, match='taken by the evaluation that config.eval_dataset'):
    evaluators.eval_configs(config)
  defaults = evaluators.eval_configs(micro_config(demo_dir, eval_every_steps=7))['zeroshot']
  assert defaults.type == 'zeroshot_classification' and defaults.every_steps == 7


def test_glip_table_evaluates_masked_unmasked_and_tuned(tmp_path, trained):
  from tools import glip_table  # pylint: disable=g-import-not-at-top
  # Tuned at a larger size than trained, as RECLIP's row is.
  policy, ratio, size, results = glip_table.evaluate_run(
      str(trained), str(tmp_path / 'run'), tune_steps=2, tune_lr_scale=0.1, tune_image_size=48)
  assert (policy, ratio, size) == ('random', 0.5, 32)
  for column in glip_table.COLUMNS:
    assert 0 <= results[column]['zeroshot/top1'] <= 1, column
  # Tuning trained its steps without masking, from the run's weights, on 48-pixel images.
  tuned_rows = [r for r in metrics_rows(tmp_path / 'run' / 'tuned') if 'train_loss' in r]
  assert [r['step'] for r in tuned_rows] == [1, 2]
  assert all(r['kept_patches'] == 36 for r in tuned_rows)
  # What the run encoded, from its log: 8 of the 16 patches of a 32-pixel image.
  assert glip_table.patches_encoded(str(trained)) == (8.0, 16)
  # Speeds measured side by side: the run against an unmasked one of itself.
  unmasked = tmp_path / 'unmasked'
  unmasked.mkdir()
  saved = json.loads((trained / 'config.json').read_text())
  saved['model']['model_img']['masking']['policy'] = 'none'
  (unmasked / 'config.json').write_text(json.dumps(saved))
  speeds = glip_table.training_speeds([str(trained), str(unmasked)], rounds=2, steps=1)
  assert all(0 < s['min'] <= s['median'] <= s['max'] for s in speeds.values())
  # Every one of the 16 text positions, some of them padding.
  policy_text, length, kept = glip_table.text_tokens(str(trained))
  assert (policy_text, length) == ('none', 16) and 3 < kept < 16
  rows = [('trained', policy, ratio, size, results, (8.0, 16), (policy_text, length, kept),
           speeds[str(trained)]),
          ('reduced', policy, ratio, size, results, (8.0, 16), ('syntax', 6, 5.5),
           speeds[str(trained)])]
  text = glip_table.table(rows, ['zeroshot/top1'])
  assert text.splitlines()[2].startswith(
      f'| trained | random | 0.5 | 32 | 8.0 of 16 | 16 ({kept:.1f} in use) |')
  assert text.splitlines()[3].startswith(
      '| reduced | random | 0.5 | 32 | 8.0 of 16 | 6 (5.5 in use, syntax) |')
  glip_table.figure(rows, ['zeroshot/top1'], str(tmp_path / 'table.png'))
  assert Image.open(tmp_path / 'table.png').size[0] > 100


def test_unreadable_evaluation_images_are_counted_and_none_readable_is_an_error(
    tmp_path, demo_dir, trained):
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'zeroshot'
  shutil.copytree(demo_dir / 'zeroshot', folder)
  first = sorted(folder.iterdir())[0]
  (sorted(first.iterdir())[0]).write_bytes(b'not an image')
  config = micro_config(demo_dir, eval_only=True, resume_dir=str(trained),
                        eval_dataset=f'folder:{folder}')
  train.train_and_evaluate(config, str(tmp_path / 'one_bad'))
  row = metrics_rows(tmp_path / 'one_bad')[-1]
  assert row['zeroshot/skipped_images'] == 1 and row['zeroshot/images'] == 63
  for image in folder.glob('*/*'):
    image.write_bytes(b'not an image')
  with pytest.raises(ValueError, match='none of the 64 images of the evaluation set'):
    train.train_and_evaluate(config, str(tmp_path / 'all_bad'))
  # A training run finds out at start-up, naming the set, before any step is trained.
  training = micro_config(demo_dir, total_steps=2, eval_dataset=f'folder:{folder}')
  with pytest.raises(ValueError, match=r"config.eval_dataset='folder:.*zeroshot' \(validation\): "
                                       'none of the 64 images'):
    train.train_and_evaluate(training, str(tmp_path / 'training'))
  assert not os.path.exists(tmp_path / 'training' / 'metrics.jsonl')


def test_a_set_with_fewer_class_names_than_labels_is_refused_naming_the_file(tmp_path,
                                                                             demo_dir):
  wds = tmp_path / 'wds_demo'
  write_wds(wds, demo_dir, 'test')
  names = (wds / 'classnames.txt').read_text().splitlines()
  (wds / 'classnames.txt').write_text('\n'.join(names[:20]))
  config = micro_config(demo_dir, eval_dataset='')
  config.evals.wds = dict(type='zeroshot_classification', dataset=f'wds:{wds}')
  model = clip.from_config(config)
  with pytest.raises(ValueError, match=r'classnames.txt has 20 class names but the labels of '
                                       r'test/ go up to 31 \(32 classes\)'):
    evaluators.build(config, model, partitioning.make_mesh(config),
                     tokenizer_lib.from_config(config))
