"""The config a run saves as WORKDIR/config.json, and reading it back (tools, resume).

The checkpoints carry the config they were trained with too (resume.py); config.json is for
people and for tools such as tools/glip_table.py and tools/export_open_clip.py.
"""

import json
import os

import jax
import ml_collections

from configs import default
from trainer import workdir as workdir_lib


def as_json(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def as_text(config) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def flat(tree, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def save(config, workdir: workdir_lib.Workdir):
  """WORKDIR/config.json, written whole (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(workdir.root, exist_ok=True)
    workdir_lib.write_text(workdir.config_json, as_text(config))


def read(path: str):
  """The config saved at `path` (a dict), None when there is none; a file that is not a
  config is an error naming it."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} is not a readable config ({type(e).__name__}: {e}); restore it '
                     'from a copy, or run the training command again, which rewrites it') from e
  if not isinstance(saved, dict):
    raise ValueError(f'{path} is not a config (a JSON object was expected)')
  return saved


def _fill_defaults(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict):
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        config[key], ml_collections.ConfigDict):
      _fill_defaults(config[key], value)


def of_run(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json. Fields added to the project after it was
  saved get their defaults, which are what that run trained with."""
  path = workdir_lib.Workdir(workdir).config_json
  saved = read(path)
  if saved is None:
    raise FileNotFoundError(f'{path}: no saved config; is {workdir} a run of this project?')
  return filled(saved)


def filled(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (a dict) as a ConfigDict, the fields added since it was saved holding
  their defaults."""
  config = ml_collections.ConfigDict(saved)
  _fill_defaults(config, default.get_config())
  return config
