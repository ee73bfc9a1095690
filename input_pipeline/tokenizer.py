"""BERT uncased WordPiece tokenization inside the tf.data graph (FLIP's text tokenizer)."""

import pathlib

import tensorflow as tf
import tensorflow_text as tf_text

VOCAB_PATH = pathlib.Path(__file__).parent / 'vocab' / 'bert_base_uncased_vocab.txt'
PAD_ID = 0


class BertTokenizer:
  """Maps strings to int32 ids [..., max_len]: [[CLS]] wordpieces [[SEP]], padded with 0.

  Without either marker (FLIP's default) the ids are the first max_len word pieces. Words
  outside the 30,522-entry vocabulary map to id 30522, the one out-of-vocabulary bucket.
  """

  def __init__(self, max_len: int = 32, cls_token: bool = True, sep_token: bool = True,
               vocab_path=VOCAB_PATH):
    vocab_path = pathlib.Path(vocab_path)
    if not vocab_path.is_file():
      raise FileNotFoundError(f'WordPiece vocabulary not found: {vocab_path}')
    vocab = vocab_path.read_text(encoding='utf-8').splitlines()
    self.vocab_size = len(vocab) + 1
    self.max_len = max_len
    self.cls_token, self.sep_token = cls_token, sep_token
    self._cls_id, self._sep_id = vocab.index('[CLS]'), vocab.index('[SEP]')
    self._tokenizer = tf_text.BertTokenizer(str(vocab_path), lower_case=True,
                                            token_out_type=tf.int32)

  def __call__(self, texts):
    texts = tf.convert_to_tensor(texts, tf.string)
    scalar = texts.shape.rank == 0
    texts = tf.reshape(texts, [-1])
    ids = self._tokenizer.tokenize(texts).merge_dims(-2, -1)
    ids = ids[:, :self.max_len - int(self.cls_token) - int(self.sep_token)]
    rows = tf.shape(texts)[0]
    if self.cls_token:
      ids = tf.concat([tf.fill([rows, 1], self._cls_id), ids], axis=1)
    if self.sep_token:
      ids = tf.concat([ids, tf.fill([rows, 1], self._sep_id)], axis=1)
    ids = ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_len])
    return ids[0] if scalar else ids


TOKENIZERS = ('tf_bert',)


def from_config(config) -> BertTokenizer:
  txt = config.aug.txt
  if txt.tokenizer not in TOKENIZERS:
    raise ValueError(f'config.aug.txt.tokenizer={txt.tokenizer!r}: expected one of '
                     f'{TOKENIZERS} (BERT uncased WordPiece)')
  return BertTokenizer(txt.max_len, txt.cls_token, txt.sep_token)
