"""Text-token reduction: which of a caption's tokens the text tower encodes in training.

A policy keeps at most `num_tokens` tokens of each caption: its start and end tokens where
the tokenizer writes them, and as many of the words' tokens between as fit, in their order,
packed from position 0 (so the tower runs on `num_tokens` positions, not max_len). A caption
that fits is kept whole. Which tokens a longer caption keeps:

  truncation  its first ones (CLIPA's `first`)
  random      a uniformly random subset (CLIPA's `random`, which also shuffles them; the
              order is kept here, as open_clip's `random` does)
  block       a random run of consecutive tokens, every start equally likely
  syntax      nouns first, then adjectives, then verbs, then the rest, each in caption order
              (CLIPA's `syntax`)
  frequency   the largest u - d(w), u uniform, d(w) = max(0, 1 - sqrt(t / f(w))) the
              probability of discarding a token of frequency f(w) in the training captions
              (CLIPF's; tokens seen fewer than min_count times have d = 1)

Each policy scores every token (the higher, the sooner kept) and one stable sort picks the
kept ones, so all are pure jitted functions of the token ids and a key, with static shapes.
Syntax reads a part-of-speech rank per vocabulary entry and frequency a discard probability
per entry: both are tables made once (`syntax_ranks`, `discard_probabilities`).
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0
POLICIES = ('none', 'truncation', 'random', 'block', 'syntax', 'frequency')
# Part-of-speech ranks of syntax reduction (CLIPA's get_order: nouns, adjectives, verbs).
NOUN, ADJECTIVE, VERB, OTHER = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True, eq=False)
class TextReduction:
  policy: str
  num_tokens: int  # tokens encoded per caption, start and end tokens included
  start_id: Optional[int] = None
  end_id: Optional[int] = None
  ranks: Optional[np.ndarray] = None  # [vocab] syntax's part-of-speech rank
  discard: Optional[np.ndarray] = None  # [vocab] frequency's discard probability
  # Where words are, for the policies that keep words whole: [vocab] flags of a token that
  # goes on the word before it (WordPiece's ##) and of one the word goes on after (a CLIP
  # BPE token without </w>).
  continues: Optional[np.ndarray] = None
  open_ended: Optional[np.ndarray] = None

  @property
  def budget(self) -> int:
    """Tokens of the words kept, beside the start and end tokens."""
    return self.num_tokens - (self.start_id is not None) - (self.end_id is not None)

  def content(self, tokens):
    """Where the words' tokens are: neither padding nor the start or end token."""
    words = tokens != PAD_ID
    for special in (self.start_id, self.end_id):
      if special is not None:
        words &= tokens != special
    return words

  def draws(self, rng, tokens):
    """The uniform draws [B, L] that random, block and frequency reduction read."""
    return jax.random.uniform(rng, tokens.shape)

  def word_starts(self, tokens):
    """[B, L]: where a word's first token is (a token of no word counts as its own)."""
    starts = jnp.ones(tokens.shape, bool)
    if self.continues is not None:
      starts &= ~jnp.asarray(self.continues)[tokens]
    if self.open_ended is not None:
      before = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
      starts &= ~(jnp.asarray(self.open_ended)[before] & self.content(before))
    return starts

  def per_word(self, values, tokens):
    """`values` [B, L] of each token replaced by its word's first token's."""
    position = jnp.arange(tokens.shape[1])[None]
    first = jax.lax.cummax(jnp.where(self.word_starts(tokens), position, 0), axis=1)
    return jnp.take_along_axis(values, first, axis=1)

  def scores(self, tokens, draws):
    """[B, L]: the higher, the sooner a token is kept (ties go to the earlier one); -inf
    where it never is."""
    words = self.content(tokens)
    if self.policy == 'truncation':
      score = jnp.zeros(tokens.shape)
    elif self.policy == 'random':
      score = draws
    elif self.policy == 'block':
      count = words.sum(axis=1, keepdims=True)
      starts = jnp.maximum(count - self.budget, 0) + 1
      start = jnp.floor(draws[:, :1] * starts)
      index = jnp.cumsum(words, axis=1) - 1  # among the words' tokens
      score = jnp.where((index >= start) & (index < start + self.budget), 0.0, -jnp.inf)
    elif self.policy == 'syntax':
      # A word's pieces share its rank, so that a word is kept whole, or cut at the budget.
      score = -self.per_word(jnp.asarray(self.ranks, jnp.float32)[tokens], tokens)
    elif self.policy == 'frequency':
      # Per word, as CLIPF draws and discards words.
      score = self.per_word(draws - jnp.asarray(self.discard, jnp.float32)[tokens], tokens)
    else:
      raise ValueError(f'text reduction {self.policy!r}: expected one of {POLICIES}')
    return jnp.where(words, score, -jnp.inf)

  def reduce(self, tokens, draws):
    """[B, num_tokens] ids: start, the kept tokens in caption order, end, padding."""
    length = tokens.shape[1]
    budget = min(self.budget, length)
    scores = self.scores(tokens, draws)
    # A stable sort: among equal scores the earlier token goes first.
    picked = jnp.argsort(-scores, axis=1, stable=True)[:, :budget]
    kept = jnp.isfinite(jnp.take_along_axis(scores, picked, axis=1))
    # Kept tokens in caption order, then the unused picks.
    order = jnp.sort(jnp.where(kept, picked, length + picked), axis=1)
    kept = order < length
    words = jnp.where(kept, jnp.take_along_axis(tokens, jnp.where(kept, order, 0), axis=1),
                      PAD_ID)
    rows, start = tokens.shape[0], int(self.start_id is not None)
    columns = [jnp.full((rows, start), self.start_id or PAD_ID, tokens.dtype), words,
               jnp.full((rows, self.num_tokens - start - budget), PAD_ID, tokens.dtype)]
    out = jnp.concatenate(columns, axis=1)
    if self.end_id is None:
      return out
    end_at = kept.sum(axis=1) + start
    return jnp.where(jnp.arange(self.num_tokens)[None] == end_at[:, None], self.end_id, out)

  def __call__(self, rng, tokens):
    if self.policy == 'none':
      return tokens
    return self.reduce(tokens, self.draws(rng, tokens))


def syntax_ranks(vocabulary) -> np.ndarray:
  """A part-of-speech rank per vocabulary entry, the entry read alone as CLIPA's JAX code
  reads them (clipa_jax/transforms/bert_ops.py:69-83). The lexicon is lemminflect's (the
  parts of speech each English word form can take): an adjective ranks as one even where it
  can be a noun, a noun before a verb; a word it does not list (articles, prepositions,
  pieces of words, punctuation) ranks last."""
  import lemminflect  # pylint: disable=g-import-not-at-top

  @functools.lru_cache(maxsize=None)
  def rank(word):
    parts = lemminflect.getAllLemmas(word) if word.isalpha() else {}
    if 'ADJ' in parts:
      return ADJECTIVE
    if 'NOUN' in parts or 'PROPN' in parts:
      return NOUN
    if 'VERB' in parts or 'AUX' in parts:
      return VERB
    return OTHER

  return np.asarray([rank(_word_of(entry)) for entry in vocabulary], np.int32)


def _word_of(entry: str) -> str:
  """A vocabulary entry as a word: CLIP BPE's end-of-word mark dropped, a WordPiece that
  continues a word left as a piece (it is never a word alone)."""
  if entry.startswith('##'):
    return ''
  return entry.removesuffix('</w>').lower()


def discard_probabilities(counts, threshold: float, min_count: int) -> np.ndarray:
  """CLIPF's discard probability of each token id from its count in the training captions:
  max(0, 1 - sqrt(threshold / frequency)) among ids seen min_count times or more, whose
  counts make the frequencies (CLIPF's tests/data_counter.py:23-29 and :43), and 1 for the
  others (its src/open_clip/tokenizer.py:426)."""
  counts = np.asarray(counts, np.float64)
  seen = counts >= min_count
  frequency = counts / max(counts[seen].sum(), 1.0)
  with np.errstate(divide='ignore'):
    keep = np.sqrt(threshold / np.where(seen, frequency, np.inf))
  return np.where(seen, np.maximum(0.0, 1.0 - keep), 1.0).astype(np.float32)


# Syntax ranks by tokenizer name: a vocabulary is looked up once per process.
_RANKS = {}


def from_config(config, tokenizer, counts=None) -> TextReduction:
  """The reduction of config.model.model_txt.masking for captions of `tokenizer` (its
  start_id, end_id and vocabulary()); `frequency` reads `counts`, the token counts of the
  training captions (input_pipeline/token_counts.py)."""
  masking_config = config.model.model_txt.masking
  policy = masking_config.policy
  if policy not in POLICIES:
    raise ValueError(f'config.model.model_txt.masking.policy={policy!r}: expected one of '
                     f'{POLICIES}')
  ranks = discard = None
  if policy == 'syntax':
    name = config.aug.txt.tokenizer
    if name not in _RANKS:
      _RANKS[name] = syntax_ranks(tokenizer.vocabulary())
    ranks = _RANKS[name]
  if policy == 'frequency':
    if counts is None:
      raise ValueError('config.model.model_txt.masking.policy=frequency reads the token counts '
                       'of the training captions, and none were given')
    discard = discard_probabilities(counts, masking_config.frequency_threshold,
                                    masking_config.frequency_min_count)
  continues = open_ended = None
  if policy in ('syntax', 'frequency'):
    continues, open_ended = word_pieces(tokenizer.vocabulary())
  return TextReduction(policy, masking_config.num_tokens, tokenizer.start_id,
                       tokenizer.end_id, ranks, discard, continues, open_ended)


def word_pieces(vocabulary):
  """([vocab] a token goes on the word before it, [vocab] the word goes on after it); the
  start and end tokens are no word's (TextReduction.content)."""
  continues = np.asarray([entry.startswith('##') for entry in vocabulary])
  open_ended = np.zeros(len(vocabulary), bool)
  if any(entry.endswith('</w>') for entry in vocabulary):  # CLIP's BPE
    open_ended = np.asarray([not entry.endswith('</w>') for entry in vocabulary])
  return continues, open_ended


def describe(reduction: TextReduction) -> str:
  if reduction.policy == 'none':
    return 'every text token'
  return f'{reduction.policy} text reduction to {reduction.num_tokens} tokens'


def examples(reduction: TextReduction, tokenizer, tokens, rng, count: int = 3):
  """[(caption, what the tower encodes of it)] for the first `count` captions of `tokens`,
  as text."""
  tokens = np.asarray(tokens[:count])
  reduced = np.asarray(reduction(rng, jnp.asarray(tokens)))
  return [(tokenizer.decode(a), tokenizer.decode(b)) for a, b in zip(tokens, reduced)]
