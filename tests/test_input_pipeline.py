"""Readers of both shard formats, corrupt-record accounting and the zero-shot data."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import evaluators
from input_pipeline import augment, demo_data, eval_data, training_pairs
from input_pipeline.tokenizer import BertTokenizer
from tests.conftest import MICRO_IMAGE, micro_config


@pytest.fixture(scope='module')
def tokenizer():
  return BertTokenizer(max_len=16)


def _batches(config, tokenizer, n):
  shards = training_pairs.list_shards(config.laion_path)
  it = training_pairs.train_dataset(config, tokenizer, shards, seed=0).as_numpy_iterator()
  return shards, [next(it) for _ in range(n)]


@pytest.mark.parametrize('folder,fmt', [('train', 'tfrecord'), ('train_tar', 'webdataset')])
def test_reads_both_shard_formats(demo_dir, tokenizer, folder, fmt):
  config = micro_config(demo_dir, laion_path=str(demo_dir / folder))
  shards, batches = _batches(config, tokenizer, 3)
  assert shards.format == fmt and len(shards.files) == 2
  batch = batches[0]
  assert batch['image'].shape == (8, MICRO_IMAGE, MICRO_IMAGE, 3)
  # Pixels as uint8, a quarter of the bytes of floats; the device normalises them.
  assert batch['image'].dtype == np.uint8 and batch['image'].std() > 10
  assert batch['tokens'].shape == (8, 16) and (batch['tokens'][:, 0] == 101).all()
  assert sum(int(b['skipped'].sum()) for b in batches) == 0


def test_colour_words_of_captions_reach_the_tokens(demo_dir, tokenizer):
  config = micro_config(demo_dir)
  _, batches = _batches(config, tokenizer, 2)
  colour_ids = set(tokenizer(list(demo_data.COLORS)).numpy()[:, 1])
  for row in np.concatenate([b['tokens'] for b in batches]):
    assert colour_ids & set(row)


def _write_tfrecord_with_corrupt_records(path, good_pairs, corrupt_positions):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i, (key, jpg, txt) in enumerate(good_pairs):
      if i in corrupt_positions:
        jpg = b'\xff\xd8 this is not a jpeg'
      writer.write(demo_data._tf_example(key, jpg, txt, MICRO_IMAGE))  # pylint: disable=protected-access
      if i == 5:
        writer.write(b'not a tf.train.Example')  # an unparsable record


def _pairs(n, seed=0):
  rng = np.random.RandomState(seed)
  return [(f'{i:09d}', *demo_data.render(rng, 'red', 'gray', MICRO_IMAGE)) for i in range(n)]


def test_corrupt_records_are_skipped_and_counted(tmp_path, demo_dir, tokenizer):
  shard = tmp_path / 'corrupt' / '00000.tfrecord'
  shard.parent.mkdir()
  _write_tfrecord_with_corrupt_records(shard, _pairs(17), corrupt_positions={2, 9})
  config = micro_config(demo_dir, laion_path=str(shard.parent), batch_size=5,
                        shuffle_buffer=1)
  _, batches = _batches(config, tokenizer, 3)  # 15 good records of the first pass
  assert sum(int(b['skipped'].sum()) for b in batches) == 3  # 2 bad images + 1 bad record
  assert all(b['image'].std() > 10 for b in batches)


def test_a_truncated_tfrecord_shard_counts_its_lost_tail_as_a_skipped_record(
    tmp_path, demo_dir, tokenizer, caplog):
  folder = tmp_path / 'truncated'
  folder.mkdir()
  for name, pairs in (('00000', _pairs(10)), ('00001', _pairs(8, seed=1))):
    with tf.io.TFRecordWriter(str(folder / f'{name}.tfrecord')) as writer:
      for key, jpg, txt in pairs:
        writer.write(demo_data._tf_example(key, jpg, txt, MICRO_IMAGE))  # pylint: disable=protected-access
  damaged = folder / '00001.tfrecord'
  damaged.write_bytes(damaged.read_bytes()[:-100])  # the copy stopped inside the last record
  config = micro_config(demo_dir, laion_path=str(folder), batch_size=17, shuffle_buffer=1)
  _, (batch,) = _batches(config, tokenizer, 1)  # the 10 + 7 whole records of the first pass
  assert int(batch['skipped'].sum()) == 1 and batch['image'].std() > 10
  assert f'TFRecord shard {damaged} ends early' in caplog.text


def test_corrupt_webdataset_samples_are_skipped_and_counted(tmp_path, demo_dir, tokenizer):
  folder = tmp_path / 'tar'
  folder.mkdir()
  with tarfile.open(folder / '00000.tar', 'w') as tar:
    for i, (key, jpg, txt) in enumerate(_pairs(9)):
      members = {'jpg': b'garbage' if i == 4 else jpg, 'txt': txt.encode()}
      if i == 6:
        del members['jpg']  # a sample without an image
      for ext, data in members.items():
        info = tarfile.TarInfo(f'{key}.{ext}')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  config = micro_config(demo_dir, laion_path=str(folder), batch_size=7, shuffle_buffer=1)
  _, batches = _batches(config, tokenizer, 1)
  assert int(batches[0]['skipped'].sum()) == 2


def test_records_without_a_usable_caption_are_skipped_and_counted(tmp_path, demo_dir,
                                                                   tokenizer):
  folder = tmp_path / 'captions'
  folder.mkdir()
  with tf.io.TFRecordWriter(str(folder / '00000.tfrecord')) as writer:
    for i, (key, jpg, txt) in enumerate(_pairs(10)):
      example = tf.train.Example.FromString(
          demo_data._tf_example(key, jpg, txt, MICRO_IMAGE))  # pylint: disable=protected-access
      caption = example.features.feature['txt'].bytes_list.value
      if i == 1:
        caption[0] = b'a red \xff circle'  # not UTF-8
      elif i == 3:
        caption[0] = b''
      elif i == 4:
        caption[0] = b' \t\n '
      elif i == 6:
        del example.features.feature['txt']
      writer.write(example.SerializeToString())
  config = micro_config(demo_dir, laion_path=str(folder), batch_size=6, shuffle_buffer=1)
  _, (batch,) = _batches(config, tokenizer, 1)
  assert batch['position'].tolist() == [1, 3, 6, 8, 9, 10]  # records 0, 2, 5, 7, 8, 9
  assert int(batch['skipped'].sum()) == 4
  # A webdataset sample without a caption.
  (tmp_path / 'tar').mkdir()
  with tarfile.open(tmp_path / 'tar' / '00000.tar', 'w') as tar:
    for i, (key, jpg, txt) in enumerate(_pairs(4)):
      for ext, data in {'jpg': jpg, 'txt': txt.encode()}.items():
        if not (i == 2 and ext == 'txt'):
          info = tarfile.TarInfo(f'{key}.{ext}')
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  config = micro_config(demo_dir, laion_path=str(tmp_path / 'tar'), batch_size=3,
                        shuffle_buffer=1)
  _, (batch,) = _batches(config, tokenizer, 1)
  assert batch['position'].tolist() == [1, 2, 4] and int(batch['skipped'].sum()) == 1


@pytest.mark.parametrize('make_path,message', [
    (lambda d: '', 'laion_path is empty'),
    (lambda d: str(d / 'missing' / '*.tfrecord'), 'nothing matches'),
    (lambda d: str(d / 'zeroshot'), 'holds no TFRecord'),
    (lambda d: f"{d / 'train'},{d / 'train_tar'}", 'mixes TFRecord and webdataset'),
])
def test_bad_laion_paths_are_refused(demo_dir, make_path, message):
  with pytest.raises((FileNotFoundError, ValueError), match=message):
    training_pairs.list_shards(make_path(demo_dir))


def test_each_host_reads_its_own_files():
  files = [f'{i}.tar' for i in range(5)]
  parts = [training_pairs.host_files(files, i, 2) for i in range(2)]
  assert parts == [['0.tar', '2.tar', '4.tar'], ['1.tar', '3.tar']]
  with pytest.raises(ValueError, match='5 shard files cannot be split over 8 hosts'):
    training_pairs.host_files(files, 0, 8)


def zeroshot_images(config, local_batch_size):
  """The images of the evaluation that config.eval_dataset defines."""
  return eval_data.classification_images(
      evaluators.eval_configs(config)['zeroshot'], image_size=config.image_size,
      eval_pad=config.aug.eval_pad, local_batch_size=local_batch_size,
      field='config.eval_dataset')


def test_zeroshot_folder_gives_classes_labels_and_padded_batches(demo_dir):
  config = micro_config(demo_dir)
  data = zeroshot_images(config, local_batch_size=10)
  assert len(data.classnames) == 32 and data.classnames[0] == 'black shape on beige'
  assert data.num_examples == 64 and data.num_batches == 7
  batches = list(data.dataset.as_numpy_iterator())
  assert len(batches) == 7 and all(b['image'].shape == (10, 32, 32, 3) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[mask > 0]
  assert mask.sum() == 64 and np.bincount(labels).tolist() == [2] * 32


def test_zeroshot_class_name_list_and_limits(demo_dir, tmp_path):
  names = tmp_path / 'names.json'
  names.write_text('[' + ','.join(f'"class {i}"' for i in range(32)) + ']')
  config = micro_config(demo_dir, eval_classnames=str(names), eval_max_images=5)
  data = zeroshot_images(config, local_batch_size=4)
  assert data.classnames[3] == 'class 3' and data.num_examples == 5
  # A capped set is drawn across the classes, not from the first few of them.
  config = micro_config(demo_dir, eval_max_images=16)
  data = zeroshot_images(config, local_batch_size=16)
  batch = next(data.dataset.as_numpy_iterator())
  assert batch['mask'].sum() == 16 and len(set(batch['label'].tolist())) >= 10
  config = micro_config(demo_dir, eval_classnames='imagenet')
  with pytest.raises(ValueError, match='1000 names but the dataset has 32 classes'):
    zeroshot_images(config, local_batch_size=4)


def test_zeroshot_errors_name_the_field(demo_dir, tmp_path):
  config = micro_config(demo_dir, eval_dataset=f'folder:{tmp_path / "nowhere"}')
  with pytest.raises(FileNotFoundError, match='eval_dataset=folder:'):
    zeroshot_images(config, local_batch_size=4)
  config = micro_config(demo_dir, eval_dataset='imagenet2012')
  os.environ['TFDS_DATA_DIR'] = str(tmp_path / 'tfds')
  try:
    with pytest.raises(FileNotFoundError, match="eval_dataset='imagenet2012'.*TFDS_DATA_DIR"):
      zeroshot_images(config, local_batch_size=4)
  finally:
    del os.environ['TFDS_DATA_DIR']
  with pytest.raises(ValueError, match='eval_templates'):
    eval_data.templates('openai81')


def test_prompts_fill_every_template_per_class():
  assert eval_data.prompts(['cat', 'dog'], ['a {}.', 'the {}!']) == [
      'a cat.', 'the cat!', 'a dog.', 'the dog!']
  assert len(eval_data.templates('openai80')) == 80 and len(eval_data.templates('short7')) == 7


def test_pixels_are_rounded_half_to_even_clipped_and_flipped():
  resized = tf.constant([[[-3.2, 0.5, 1.5], [2.5, 254.5, 255.7], [300.0, 99.49, 99.51]]])
  np.testing.assert_array_equal(augment.to_pixels(resized).numpy(),
                                [[[0, 0, 2], [2, 254, 255], [255, 99, 100]]])
  flipped = augment.to_pixels(resized, tf.constant(True)).numpy()
  np.testing.assert_array_equal(flipped, augment.to_pixels(resized).numpy()[:, ::-1])
  assert augment.to_pixels(resized, tf.constant(False)).dtype == tf.uint8


def test_a_jpeg_and_a_png_of_one_picture_get_the_same_crop():
  # A JPEG's window is decoded alone, a PNG is decoded whole and cut: same seed, same window.
  rows, columns = np.mgrid[0:72, 0:96]
  pixels = np.stack([rows * 3, columns * 2, (rows + columns) % 256], -1).astype(np.uint8)
  seed = tf.constant([3, 1], tf.int64)
  crop = lambda encoded, seed: augment.train_image(encoded, 16, seed, (0.1, 0.3)).numpy()
  jpeg, png = tf.io.encode_jpeg(pixels, quality=98), tf.io.encode_png(pixels)
  same = np.abs(crop(jpeg, seed).astype(int) - crop(png, seed)).mean()
  other = np.abs(crop(jpeg, seed + 1).astype(int) - crop(png, seed)).mean()
  assert same < 2 and other > 10


def test_flip_crops_are_seeded_and_eval_pad_crops_the_centre():
  pixels = np.zeros((64, 96, 3), np.uint8)
  pixels[:, :, 0] = np.arange(96)[None, :]  # red grows from left to right
  pixels[16:48, 32:64, 1] = 255  # a green centre square
  encoded = tf.io.encode_png(pixels)

  def crop(seed, version='v4'):
    return augment.train_image(encoded, 16, tf.constant([seed, 0], tf.int64), (0.2, 0.5),
                               (3 / 4, 4 / 3), False, version).numpy()
  assert crop(0).shape == (16, 16, 3)
  np.testing.assert_array_equal(crop(0), crop(0))
  assert not np.allclose(crop(0), crop(1))
  np.testing.assert_array_equal(crop(0, 'vc'), crop(1, 'vc'))  # no randomness
  whole = augment.eval_image(encoded, 16, 0).numpy()
  centre = augment.eval_image(encoded, 16, 16).numpy()  # the centre 16/32 of 64 rows
  green = lambda image: (image[..., 1] > 0).mean()
  assert green(centre) > 0.9 and 0.1 < green(whole) < 0.5
  with pytest.raises(ValueError, match='crop_ver'):
    augment.train_image(encoded, 16, tf.constant([0, 0], tf.int64), crop_ver='v3')
