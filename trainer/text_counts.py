"""A frequency run's token counts (input_pipeline/token_counts.py): counted on its first
start, kept in WORKDIR/text_token_counts.npz, and read back by its resumes and by tools, so
that a resumed run reduces its captions as before."""

from absl import logging
import jax
import numpy as np

from input_pipeline import token_counts
from trainer import workdir as workdir_lib


def _saved(path: str):
  saved = workdir_lib.read_arrays(path)
  return None if saved is None else (saved['counts'], int(saved['captions']))


def read_counts(path: str):
  """(counts, captions counted) kept at `path`."""
  saved = _saved(path)
  if saved is None:
    raise FileNotFoundError(f'{path}: no token counts there (a run with '
                            'model.model_txt.masking.policy=frequency writes them)')
  return saved


def load_or_count(config, tokenizer, shards, path: str) -> np.ndarray:
  """The run's counts from `path`, counted from `shards` and written there first when the
  run has none."""
  saved = _saved(path)
  if saved is not None:
    counts, read = saved
    if len(counts) != tokenizer.vocab_size:
      raise ValueError(f'{path} counts {len(counts)} token ids, the {config.aug.txt.tokenizer} '
                       f'tokenizer has {tokenizer.vocab_size}: it belongs to a run with '
                       'another tokenizer; move it away to count again')
    logging.info('Text frequencies: the token counts of %d captions, from %s', read, path)
    return counts
  counts, read = token_counts.count(config, tokenizer, shards,
                                    config.model.model_txt.masking.frequency_captions)
  if not read:
    raise ValueError(f'config.laion_path={config.laion_path!r}: no usable caption to count '
                     'token frequencies from (model.model_txt.masking.policy=frequency)')
  logging.info('Text frequencies: counted the tokens of %d captions (%d distinct ids), kept '
               'in %s', read, int((counts > 0).sum()), path)
  if jax.process_index() == 0:
    workdir_lib.write_arrays(path, counts=counts, captions=read)
  return counts
