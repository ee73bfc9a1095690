"""Evaluations of a train state, each built from its config and chosen by type name.

Every evaluation is a named entry of `config.evals` (its fields and their defaults are
documented in configs/default.py); FLIP's `eval_dataset` defines one more, named
`zeroshot`. An evaluator is called with the train state and a key and returns named
metrics, written as `<name>/<metric>`.
"""

import math
from typing import Dict

import ml_collections

from evaluators import common
from evaluators.linear_probe import LinearProbe
from evaluators.retrieval import Retrieval
from evaluators.zeroshot_classification import ZeroShotClassification
from input_pipeline import eval_data

EVALUATORS = {'zeroshot_classification': ZeroShotClassification, 'retrieval': Retrieval,
              'linear_probe': LinearProbe}

# Every evaluation's fields and their defaults (configs/default.py: config.evals); each
# kind reads its own. every_steps -1 stands for config.eval_every_steps.
DEFAULTS = dict(
    type='', dataset='', split='test', every_steps=-1, max_images=0,
    classnames='', templates='',
    recall_k=(1, 5, 10),
    train_split='train', train_max_images=0, weight_decays=(1e-6, 1e-4, 1e-2),
    probe_steps=500,
)


def eval_configs(config) -> Dict[str, ml_collections.ConfigDict]:
  """Every configured evaluation, with defaults filled in, by name."""
  evals = {}
  if config.eval_dataset:
    evals['zeroshot'] = dict(type='zeroshot_classification', dataset=config.eval_dataset,
                             split=config.eval_split, every_steps=config.eval_every_steps,
                             classnames=config.eval_classnames,
                             templates=config.eval_templates,
                             max_images=config.eval_max_images, field='config.eval_dataset')
  for name, fields in config.evals.items():
    fields = fields.to_dict() if hasattr(fields, 'to_dict') else dict(fields)
    if name in evals:
      raise ValueError(f'config.evals.{name}: the name {name!r} is taken by the evaluation '
                       'that config.eval_dataset defines; choose another')
    unknown = set(fields) - set(DEFAULTS)
    if unknown:
      raise ValueError(f'config.evals.{name}: unknown fields {sorted(unknown)}; expected '
                       f'some of {sorted(DEFAULTS)}')
    evals[name] = dict(fields)
  resolved = {}
  for name, fields in evals.items():
    ecfg = ml_collections.ConfigDict({'field': f'config.evals.{name}.dataset', **DEFAULTS,
                                      **fields, 'name': name})
    if ecfg.type not in EVALUATORS:
      raise ValueError(f'config.evals.{name}.type={ecfg.type!r}: expected one of '
                       f'{sorted(EVALUATORS)}')
    if not ecfg.dataset:
      raise ValueError(f'{ecfg.field} is empty: name a TFDS dataset, folder:PATH or '
                       'wds:PATH')
    if ecfg.every_steps < -1:
      raise ValueError(f'config.evals.{name}.every_steps={ecfg.every_steps}: expected a whole '
                       'number >= -1 (-1: config.eval_every_steps)')
    if ecfg.every_steps == -1:
      ecfg.every_steps = config.eval_every_steps
    resolved[name] = ecfg
  return resolved


# The smallest valid value of each numeric field (every_steps -1: eval_every_steps).
_LEAST = {'every_steps': -1, 'max_images': 0, 'train_max_images': 0, 'probe_steps': 1}
_FLIP_FIELDS = {'templates': 'config.eval_templates', 'max_images': 'config.eval_max_images',
                'every_steps': 'config.eval_every_steps'}


def check(config):
  """Start-up checks of the evaluations' fields, each naming its field."""
  for name, ecfg in eval_configs(config).items():
    def field(key, name=name):
      return (f'config.evals.{name}.{key}' if name in config.evals
              else _FLIP_FIELDS.get(key, f'config.{key}'))

    for key, least in _LEAST.items():
      value = ecfg[key]
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f'{field(key)}={value!r}: expected a whole number >= {least}')
    for key, least, kind in (('recall_k', 1, int), ('weight_decays', 0, float)):
      values = tuple(ecfg[key])
      if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= least
                               and (kind is float or float(v).is_integer()) for v in values):
        raise ValueError(f'{field(key)}={values}: expected one or more '
                         f'{"whole numbers" if kind is int else "finite values"} >= {least}')
    if ecfg.templates:
      eval_data.templates(ecfg.templates, field('templates'))


def build(config, model, mesh, tokenizer):
  """{name: (its config, the evaluator)} of every configured evaluation."""
  towers = common.Towers(config, model, mesh, tokenizer)
  return {name: (ecfg, EVALUATORS[ecfg.type](ecfg, config, towers))
          for name, ecfg in eval_configs(config).items()}
