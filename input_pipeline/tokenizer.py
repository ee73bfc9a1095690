"""Text tokenizers, a batch of strings at a time: BERT uncased WordPiece inside the tf.data
graph (FLIP's) and CLIP's byte-level BPE (open_clip's).

Both map strings to int32 ids [N, max_len] padded with 0: a tf.Tensor of strings (as in a
tf.data map) gives a tf.Tensor, a list or array of strings gives ids the caller can read with
np.asarray; a single string gives [max_len].
"""

import functools
import gzip
import html
import os
import pathlib
import re
from typing import List, Optional

# tf.data already tokenizes several batches at once on all cores; a second thread pool in
# the BPE library would compete with the image decoding for them. A user's setting wins.
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import ftfy  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
import tokenizers  # pylint: disable=g-import-not-at-top

VOCAB_DIR = pathlib.Path(__file__).parent / 'vocab'
VOCAB_PATH = VOCAB_DIR / 'bert_base_uncased_vocab.txt'
BPE_PATH = VOCAB_DIR / 'clip_bpe_simple_vocab_16e6.txt.gz'
PAD_ID = 0

# Control characters at which TensorFlow Text's BERT tokenizer splits words (tab, newline and
# carriage return are whitespace to both libraries).
_SPLITTING_CONTROLS = '[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]'


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
    self._vocab = vocab
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

  @property
  def start_id(self) -> Optional[int]:
    return self._cls_id if self.cls_token else None

  @property
  def end_id(self) -> Optional[int]:
    return self._sep_id if self.sep_token else None

  def vocabulary(self) -> List[str]:
    """The piece of each id (`##` before a piece that continues a word)."""
    return self._vocab + ['[UNK]']  # the out-of-vocabulary bucket

  def decode(self, ids) -> str:
    """The pieces of `ids` as text, padding left out, for showing which were kept."""
    text = ''
    for piece in (self.vocabulary()[i] for i in ids if i != PAD_ID):
      text += piece[2:] if piece.startswith('##') else ' ' + piece
    return text.strip()

  def hugging_face(self) -> tokenizers.Tokenizer:
    """The same ids from Hugging Face's `tokenizers` (what an open_clip export carries):
    called with max_length=max_len, truncation and padding to max_length.

    TensorFlow Text lower-cases by NFKC case folding, where Hugging Face's BERT normalizer
    lower-cases alone, and splits words at control characters, which Hugging Face's drops:
    the normalizers below do both its way first. (A line or paragraph separator, U+2028 and
    U+2029, still parts them: TensorFlow Text reads the word around it as unknown.)
    """
    vocab = self._vocab
    normalizers = tokenizers.normalizers
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(
        {token: i for i, token in enumerate(vocab)}, unk_token='[UNK]',
        max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Replace(tokenizers.Regex(_SPLITTING_CONTROLS), ' '),
        # The case foldings that NFKC followed by lower-casing lacks.
        normalizers.Replace(tokenizers.Regex('[\u00df\u1e9e]'), 'ss'),
        normalizers.Replace('\u03c2', '\u03c3'),
        normalizers.NFKD(),
        normalizers.Replace('\u0345', '\u03b9'),  # the iota written below a Greek vowel
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                   strip_accents=True, lowercase=True)])
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = tokenizers.decoders.WordPiece()
    marks = [name for name, used in (('[CLS]', self.cls_token), ('[SEP]', self.sep_token))
             if used]
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=' '.join(['[CLS]'] * self.cls_token + ['$A'] + ['[SEP]'] * self.sep_token),
        special_tokens=[(name, vocab.index(name)) for name in marks])
    tokenizer.add_special_tokens(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'])
    return tokenizer


# The bytes that stand for themselves in CLIP's byte map: printable Latin-1.
_PRINTABLE_BYTES = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) +
                    list(range(ord('®'), ord('ÿ') + 1)))


def _byte_symbols():
  """The characters that stand for the 256 byte values in CLIP's first 256 tokens, in token
  order (GPT-2's byte map, as the ByteLevel pre-tokenizer applies it): printable Latin-1
  bytes stand for themselves, the others for the characters from U+0100 on."""
  return ([chr(b) for b in _PRINTABLE_BYTES] +
          [chr(256 + n) for n in range(256 - len(_PRINTABLE_BYTES))])


def _byte_order():
  """The byte value of each of _byte_symbols(), in the same order."""
  return _PRINTABLE_BYTES + [b for b in range(256) if b not in _PRINTABLE_BYTES]


# CLIP's pre-tokenizer: contractions, runs of letters, single digits, runs of other symbols.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Text that ftfy leaves as it is: printable ASCII, tabs and newlines, no HTML entity.
_PLAIN = re.compile(r"[ -%'-~\t\n]*")


def clean(text: str) -> str:
  """open_clip's text cleaning: ftfy's fixes, HTML unescaped twice, whitespace runs as one
  space, stripped, lower case."""
  if not _PLAIN.fullmatch(text):
    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text))
  return ' '.join(text.split()).lower()


class ClipBpeTokenizer:
  """CLIP's byte-level BPE with open_clip's ids: cleaned text, <start_of_text> (49406), the
  BPE tokens, <end_of_text> (49407), truncated to max_len with the end token kept, padded
  with 0. The BPE runs in the `tokenizers` library (Rust, a batch at a time); the cleaning,
  which must match open_clip's Python, stays in Python.
  """
  START, END = '<start_of_text>', '<end_of_text>'

  def __init__(self, max_len: int = 77, bpe_path=BPE_PATH):
    bpe_path = pathlib.Path(bpe_path)
    if not bpe_path.is_file():
      raise FileNotFoundError(f'CLIP BPE merges not found: {bpe_path}')
    with gzip.open(bpe_path, 'rt', encoding='utf-8') as f:
      lines = f.read().split('\n')
    # The file's first line is a header; CLIP uses the first 48,894 merges.
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = _byte_symbols()
    vocab = symbols + [s + '</w>' for s in symbols] + [''.join(m) for m in merges]
    vocab += [self.START, self.END]
    self._vocab = vocab
    self.vocab_size = len(vocab)
    self.max_len = max_len
    self.start_id, self.end_id = vocab.index(self.START), vocab.index(self.END)
    model = tokenizers.models.BPE({token: i for i, token in enumerate(vocab)}, merges,
                                  end_of_word_suffix='</w>', fuse_unk=False)
    self._bpe = tokenizers.Tokenizer(model)
    self._bpe.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(_WORDS), behavior='removed',
                                        invert=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # open_clip reads these two written in a caption as the tokens themselves.
    self._bpe.add_special_tokens([self.START, self.END])

  def vocabulary(self) -> List[str]:
    """The token of each id in CLIP's byte symbols (`</w>` ending a word)."""
    return self._vocab

  def decode(self, ids) -> str:
    """The text of `ids`, padding left out, for showing which tokens were kept."""
    byte_of = dict(zip(_byte_symbols(), _byte_order()))
    parts, word = [], bytearray()
    for i in (int(i) for i in ids if i != PAD_ID):
      token = self._vocab[i]
      if i in (self.start_id, self.end_id):
        parts += [word.decode('utf-8', 'replace'), token]
        word = bytearray()
        continue
      word += bytes(byte_of[c] for c in token.removesuffix('</w>'))
      if token.endswith('</w>'):
        word += b' '
    parts.append(word.decode('utf-8', 'replace'))
    return ' '.join(' '.join(parts).split())

  def ids(self, texts) -> np.ndarray:
    """int32 [N, max_len] for a sequence of str or UTF-8 bytes."""
    texts = [clean(t.decode('utf-8', 'replace') if isinstance(t, bytes) else t) for t in texts]
    out = np.zeros((len(texts), self.max_len), np.int32)
    for row, encoding in enumerate(self._bpe.encode_batch(texts, add_special_tokens=False)):
      ids = [self.start_id] + encoding.ids[:self.max_len - 2] + [self.end_id]
      out[row, :len(ids)] = ids
    return out

  def __call__(self, texts):
    if isinstance(texts, tf.Tensor):
      ids = tf.numpy_function(lambda t: self.ids(t.tolist()), [tf.reshape(texts, [-1])],
                              tf.int32, stateful=False)
      ids = tf.ensure_shape(ids, [None, self.max_len])
      if texts.shape.is_fully_defined():
        return tf.reshape(ids, texts.shape.as_list() + [self.max_len])
      return tf.reshape(ids, tf.concat([tf.shape(texts), [self.max_len]], 0))
    if isinstance(texts, (str, bytes)):
      return self.ids([texts])[0]
    return self.ids(list(np.asarray(texts, object).reshape(-1)))


TOKENIZERS = ('tf_bert', 'clip_bpe')


@functools.lru_cache(maxsize=4)
def _clip_bpe(max_len: int) -> ClipBpeTokenizer:
  return ClipBpeTokenizer(max_len)


def from_config(config):
  """The tokenizer of config.aug.txt: a callable on strings giving int32 ids [N, max_len]."""
  txt = config.aug.txt
  if txt.tokenizer not in TOKENIZERS:
    raise ValueError(f'config.aug.txt.tokenizer={txt.tokenizer!r}: expected one of '
                     f'{TOKENIZERS} (BERT uncased WordPiece, CLIP byte-level BPE)')
  if txt.tokenizer == 'clip_bpe':
    if txt.max_len < 2:
      raise ValueError(f'config.aug.txt.max_len={txt.max_len}: CLIP BPE needs at least 2 '
                       'tokens (start and end of text)')
    return _clip_bpe(txt.max_len)
  return BertTokenizer(txt.max_len, txt.cls_token, txt.sep_token)
