"""BERT WordPiece tokenization of known strings."""

import numpy as np
import pytest

from input_pipeline.tokenizer import BertTokenizer


@pytest.fixture(scope='module')
def tokenizer():
  return BertTokenizer(max_len=8)


def test_known_strings(tokenizer):
  ids = tokenizer(['hello world', 'A red Circle!']).numpy()
  np.testing.assert_array_equal(ids[0], [101, 7592, 2088, 102, 0, 0, 0, 0])
  np.testing.assert_array_equal(ids[1], [101, 1037, 2417, 4418, 999, 102, 0, 0])


def test_long_text_is_truncated_and_still_ends_with_sep(tokenizer):
  ids = tokenizer('the quick brown fox jumps over the lazy dog').numpy()
  assert ids.shape == (8,) and ids[0] == 101 and ids[-1] == 102
  np.testing.assert_array_equal(ids[1:4], [1996, 4248, 2829])


def test_empty_text_is_cls_sep_and_padding(tokenizer):
  np.testing.assert_array_equal(tokenizer('').numpy(), [101, 102, 0, 0, 0, 0, 0, 0])


def test_without_markers_first_wordpiece_leads_as_in_flip():
  ids = BertTokenizer(max_len=4, cls_token=False, sep_token=False)
  np.testing.assert_array_equal(ids('hello world').numpy(), [7592, 2088, 0, 0])
  np.testing.assert_array_equal(ids('the quick brown fox jumps').numpy(),
                                [1996, 4248, 2829, 4419])


def test_flip_cls_token_has_no_sep():
  ids = BertTokenizer(max_len=4, cls_token=True, sep_token=False)('hello world').numpy()
  np.testing.assert_array_equal(ids, [101, 7592, 2088, 0])


def test_vocab_size_counts_the_out_of_vocabulary_bucket(tokenizer):
  assert tokenizer.vocab_size == 30523


def test_missing_vocabulary_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='vocab.txt'):
    BertTokenizer(vocab_path=tmp_path / 'vocab.txt')
