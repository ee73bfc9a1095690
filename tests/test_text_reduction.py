"""Text-token reduction (masking/text.py) against CLIPA's and CLIPF's own selections, restated
from their code and given the same uniform draws; the frequencies CLIPF reads; the policy in
the train step and in a run."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline import tokenizer as tokenizer_lib
from input_pipeline import training_pairs
from masking import text
from tests.conftest import ROOT, main_command, micro_config
from trainer import checks
from trainer import partitioning
from trainer import step as step_lib
from trainer import text_counts

CAPTIONS = [
    'a photo of a small red cat sitting on a blue mat next to two big dogs',
    'a cat',
    'the quick brown fox jumps over the lazy dog in the park on a sunny afternoon',
    'three green triangles and one yellow circle are drawn on a white sheet of paper',
    'an old man walking his dog',
    '',
    'a teal hexagon and a chartreuse rhombus beside an ocelot on the tessellated floor',
]
# The published code restated below: CLIPA's JAX text reduction (UCSC-VLAA/CLIPA at 38005085,
# clipa_jax/transforms/bert_ops.py) and CLIPF's, a fork of open_clip's tokenizer that also
# holds open_clip's random, block and syntax reductions (MingliangLiang3/CLIPF at 5a24b8b1,
# src/open_clip/tokenizer.py and tests/data_counter.py).


def tokenizer_of(name):
  config = micro_config_plain(name)
  return tokenizer_lib.from_config(config), config


def micro_config_plain(name):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.aug.txt.tokenizer = name
  config.aug.txt.max_len = 24
  if name == 'clip_bpe':
    config.model.model_txt.vocab_size = 49408
  return config


# --- The published selections, restated with explicit draws -----------------------------

def word_starts(pieces):
  """Which of a caption's word tokens (as vocabulary strings) begin a word: WordPiece marks a
  piece that goes on the word before with ##; CLIP's BPE ends a word's last piece with </w>."""
  bpe = any(piece.endswith('</w>') for piece in pieces)
  return np.asarray([not piece.startswith('##') and
                     not (bpe and i > 0 and not pieces[i - 1].endswith('</w>'))
                     for i, piece in enumerate(pieces)])


def by_words(per_word_score, starts, budget):
  """Word tokens kept when whole words are taken in order of score (earlier first among
  equals), a word's tokens in turn, until `budget` tokens."""
  words = np.cumsum(starts) - 1
  order = np.argsort(-np.asarray(per_word_score, np.float64), kind='stable')
  kept = [i for w in order for i in np.flatnonzero(words == w)][:budget]
  return sorted(kept)


def reference_keep(policy, words, pieces, draws, budget, ranks=None, discard=None):
  """The positions (within a caption's word tokens `words`, whose vocabulary strings are
  `pieces`) each published selection keeps, in caption order; all when the caption fits."""
  count = len(words)
  if count <= budget:  # both apply a reduction only to a caption too long (bert_ops.py:288)
    return list(range(count))
  if policy == 'truncation':  # CLIPA bert_ops.py:291-293; CLIPF tokenizer.py:279-283
    return list(range(budget))
  if policy == 'random':  # CLIPF tokenizer.py:315-319 (randperm[:num_keep], msort)
    order = np.argsort(-draws[:count], kind='stable')  # a permutation drawn from the draws
    return sorted(order[:budget].tolist())
  if policy == 'block':  # CLIPF tokenizer.py:344-345 (randint(0, n - k), high inclusive)
    start = int(np.floor(draws[0] * (count - budget + 1)))
    return list(range(start, start + budget))
  # Syntax and frequency choose words. CLIPF's syntax (tokenizer.py:385-388, nltk's tags of
  # the words) and CLIPA's (bert_ops.py:229-233, a rank per vocabulary entry) both keep the
  # best ranked first, caption order among equals (a stable argsort); CLIPF's frequency
  # (tokenizer.py:439-444) the words of largest rand - P, one draw per word. Both take
  # num_keep words and cut their tokens to the budget; here a word's tokens are taken with
  # it until the budget, the same for words of one token.
  starts = word_starts(pieces)
  firsts = np.flatnonzero(starts)
  if policy == 'syntax':
    return by_words(-ranks[words[firsts]].astype(np.float64), starts, budget)
  if policy == 'frequency':
    return by_words(draws[firsts] - discard[words[firsts]], starts, budget)
  raise ValueError(policy)


def expected_tokens(reduction, vocabulary, row, row_draws):
  """What the tower should read of one caption's ids `row`: start, kept words, end, padding."""
  is_word = np.asarray(reduction.content(jnp.asarray(row)))
  positions = np.flatnonzero(is_word)
  words = row[positions]
  # The draws of the words' own positions: a draw per word token (block reads the first).
  word_draws = row_draws[positions] if reduction.policy != 'block' else row_draws[:1]
  keep = reference_keep(reduction.policy, words, [vocabulary[w] for w in words], word_draws,
                        reduction.budget, reduction.ranks, reduction.discard)
  out = ([reduction.start_id] if reduction.start_id is not None else []) + list(words[keep])
  out += [reduction.end_id] if reduction.end_id is not None else []
  return out + [0] * (reduction.num_tokens - len(out))


@pytest.mark.parametrize('tokenizer_name', ['tf_bert', 'clip_bpe'])
@pytest.mark.parametrize('policy', ['truncation', 'random', 'block', 'syntax', 'frequency'])
def test_each_policy_keeps_what_clipa_or_clipf_keeps_given_the_same_draws(tokenizer_name,
                                                                           policy):
  tokenizer, config = tokenizer_of(tokenizer_name)
  config.aug.txt.cls_token = config.aug.txt.sep_token = True
  tokenizer = tokenizer_lib.from_config(config)
  ids = np.asarray(tokenizer(CAPTIONS * 4))
  counts = np.bincount(ids.reshape(-1), minlength=tokenizer.vocab_size) * 3
  vocabulary = tokenizer.vocabulary()
  config.model.model_txt.masking.policy = policy
  config.model.model_txt.masking.frequency_threshold = 1e-2
  for num_tokens in (4, 8, 12):
    config.model.model_txt.masking.num_tokens = num_tokens
    reduction = text.from_config(config, tokenizer, counts)
    for seed in range(3):
      # Draws at the words' own positions, which the restatement reads.
      draws = np.asarray(reduction.draws(jax.random.PRNGKey(seed), jnp.asarray(ids)))
      got = np.asarray(jax.jit(reduction.reduce)(jnp.asarray(ids), jnp.asarray(draws)))
      assert got.shape == (len(ids), num_tokens)
      for row, row_draws, out in zip(ids, draws, got):
        assert out.tolist() == expected_tokens(reduction, vocabulary, row, row_draws), (
            policy, num_tokens, tokenizer.decode(row), tokenizer.decode(out))


def test_a_caption_that_fits_is_kept_whole_and_the_rest_keep_their_order():
  tokenizer, config = tokenizer_of('clip_bpe')
  ids = np.asarray(tokenizer(CAPTIONS))
  config.model.model_txt.masking.policy = 'random'
  config.model.model_txt.masking.num_tokens = 6
  reduced = np.asarray(text.from_config(config, tokenizer)(jax.random.PRNGKey(0),
                                                          jnp.asarray(ids)))
  assert tokenizer.decode(reduced[1]) == '<start_of_text> a cat <end_of_text>'
  assert tokenizer.decode(reduced[5]) == '<start_of_text> <end_of_text>'
  for row, out in zip(ids, reduced):
    kept = [t for t in out if t not in (0, tokenizer.start_id, tokenizer.end_id)]
    where = [list(row).index(t) for t in kept]  # these captions repeat no kept token
    assert where == sorted(where) and len(kept) == min(4, np.count_nonzero(row) - 2)


def test_syntax_ranks_nouns_then_adjectives_then_verbs_then_the_rest():
  ranks = text.syntax_ranks(['cat', 'photo', 'red', 'small', 'sits', 'jumped', 'the', 'of',
                             '##ing', 'dog</w>', ',', '[CLS]'])
  assert ranks.tolist() == [text.NOUN, text.NOUN, text.ADJECTIVE, text.ADJECTIVE, text.VERB,
                            text.VERB, text.OTHER, text.OTHER, text.OTHER, text.NOUN,
                            text.OTHER, text.OTHER]


def test_discard_probabilities_are_clipfs():
  """CLIPF's tests/data_counter.py:23-29 and :43 (counts under min_count left out, then
  max(0, 1 - sqrt(t / f))) and tokenizer.py:426 (1.0 for a word it has no count of)."""
  counts = np.array([0, 1000, 400, 4, 5, 50, 0, 2541])
  threshold, min_count = 1e-2, 5
  kept = {i: c for i, c in enumerate(counts) if c >= min_count}
  total = sum(kept.values())
  want = [max(0.0, 1 - round(float(np.sqrt(threshold / (kept[i] / total))), 6)) if i in kept
          else 1.0 for i in range(len(counts))]
  np.testing.assert_allclose(text.discard_probabilities(counts, threshold, min_count), want,
                             atol=2e-6)


def test_token_counts_are_the_captions_and_are_counted_once_per_run(demo_dir, tmp_path):
  config = micro_config(demo_dir)
  tokenizer = tokenizer_lib.from_config(config)
  shards = training_pairs.list_shards(config.laion_path)
  path = str(tmp_path / 'text_token_counts.npz')
  counts = text_counts.load_or_count(config, tokenizer, shards, path)
  captions = [c.decode() for f in shards.files for c in _captions_of(f)]
  want = np.bincount(np.asarray(tokenizer(captions)).reshape(-1),
                     minlength=tokenizer.vocab_size)
  for special in (0, tokenizer.start_id, tokenizer.end_id):
    if special is not None:
      want[special] = 0
  np.testing.assert_array_equal(counts, want)
  # A resumed run reads the counts kept beside it, not the data.
  np.savez(path, counts=counts * 2, captions=1)
  np.testing.assert_array_equal(text_counts.load_or_count(config, tokenizer, shards, path),
                                counts * 2)
  np.savez(path, counts=counts[:10], captions=1)
  with pytest.raises(ValueError, match='counts 10 token ids, the tf_bert tokenizer has'):
    text_counts.load_or_count(config, tokenizer, shards, path)


def _captions_of(path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
    yield tf.io.parse_single_example(record, {'txt': tf.io.FixedLenFeature([], tf.string)})[
        'txt'].numpy()


@pytest.mark.parametrize('overrides, message', [
    ({'model.model_txt.masking.policy': 'nouns'},
     r"^config.model.model_txt.masking.policy='nouns': expected one of \('none'"),
    ({'model.model_txt.masking.policy': 'random', 'model.model_txt.masking.num_tokens': 17},
     '^config.model.model_txt.masking.num_tokens=17: expected more than the 2 start and end '
     'tokens and at most config.aug.txt.max_len=16'),
    ({'model.model_txt.masking.policy': 'block', 'model.model_txt.masking.num_tokens': 2},
     '^config.model.model_txt.masking.num_tokens=2: expected more than the 2'),
    ({'model.model_txt.masking.frequency_threshold': 0.0},
     '^config.model.model_txt.masking.frequency_threshold=0.0: expected'),
])
def test_text_reductions_that_cannot_be_done_are_refused_naming_the_field(demo_dir, overrides,
                                                                          message):
  with pytest.raises(ValueError, match=message):
    checks.check(micro_config(demo_dir, **overrides))


def test_the_train_step_encodes_the_reduced_text(demo_dir):
  config = micro_config(demo_dir, **{'model.model_txt.masking.policy': 'syntax',
                                     'model.model_txt.masking.num_tokens': 5})
  mesh = partitioning.make_mesh(config)
  training = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  batch = next(training_pairs.train_dataset(
      config, tokenizer_lib.from_config(config),
      training_pairs.list_shards(config.laion_path)).as_numpy_iterator())
  batch.pop('position')
  _, metrics = training.step(training.state, partitioning.global_batch(mesh, batch),
                             jax.random.PRNGKey(1))
  assert 3 <= float(metrics['text_tokens']) <= 5 < np.count_nonzero(batch['tokens'], 1).max()
  assert np.isfinite(float(metrics['train_loss']))


def test_a_frequency_run_counts_once_shows_its_captions_and_resumes_with_the_same_counts(
    demo_dir, tmp_path):
  workdir = tmp_path / 'run'
  flags = ['--config.model.model_txt.masking.policy=frequency',
           '--config.model.model_txt.masking.num_tokens=5']
  done = subprocess.run(main_command(workdir, demo_dir, '--config.total_steps=2', *flags),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  log = (workdir / 'train.log').read_text()
  assert 'frequency text reduction to 5 tokens' in log
  assert "-> '[CLS]" in log and 'counted the tokens of 96 captions' in log
  saved = np.load(workdir / 'text_token_counts.npz')
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert all(r['text_tokens'] <= 5 for r in rows if 'text_tokens' in r)
  done = subprocess.run(main_command(workdir, demo_dir, '--config.total_steps=4', *flags),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'the token counts of 96 captions, from' in (workdir / 'train.log').read_text()
  np.testing.assert_array_equal(np.load(workdir / 'text_token_counts.npz')['counts'],
                                saved['counts'])
  assert os.path.getsize(workdir / 'text_token_counts.npz') > 0


@pytest.mark.parametrize('name, start, end', [('tf_bert', '[CLS]', '[SEP]'),
                                               ('clip_bpe', '<start_of_text>', '<end_of_text>')])
def test_tokens_decode_to_their_caption(name, start, end):
  tokenizer, _ = tokenizer_of(name)
  ids = np.asarray(tokenizer(['A photo of a tabby cat, sitting']))[0]
  assert tokenizer.decode(ids) == f'{start} a photo of a tabby cat , sitting {end}'
