"""FLIP's recipes on FLIP's slices and on v5e and v6e slices of as many chips, masked as
configured and unmasked: the table of docs/pod-slices.md, each row a plan (tools/plan.py)
of the recipe as it is, without remedies.

  make slice-table          # or: python -m tools.slice_table [--recipes=cfg_flip_base]

Prints the markdown table, then one JSON line of every plan (each row on stderr as it is
made). Each row compiles the train step and the evaluation step for its slice; on a 2-core
machine the whole table takes about 40 minutes.
"""

import importlib
import json
import sys

from absl import app
from absl import flags
from absl import logging

from tools import plan
from trainer import checks

# (config module, the model's name, the slice its paper trained it on)
RECIPES = (
    ('cfg_flip_base', 'B/16', 'v3-256'),
    ('cfg_flip_large', 'L/16', 'v3-256'),
    ('cfg_flip_huge14', 'H/14', 'v3-512'),
)
ALSO_ON = ('v5e', 'v6e')  # slices of the paper slice's chip count

RECIPES_FLAG = flags.DEFINE_list('recipes', [r[0] for r in RECIPES], 'Which recipes.')
UNMASKED_FLAG = flags.DEFINE_bool('unmasked', True, 'Also plan each recipe unmasked.')


def slices_for(paper_slice: str):
  """The paper's slice, then a slice of each of ALSO_ON with as many chips."""
  chips = plan.parse_slice(paper_slice).chips
  return [plan.parse_slice(paper_slice)] + [plan.parse_slice(f'{g}-{chips}') for g in ALSO_ON]


def recipe_config(module: str, mask_ratio=None):
  config = importlib.import_module(f'configs.{module}').get_config()
  if mask_ratio is not None:
    config.model.model_img.mask_ratio = mask_ratio
  return config


def table_row(recipe: str, model: str, result: dict) -> str:
  configured, = result['rows']
  evaluation = result['evaluation']
  if configured.get('refused'):  # the compiler's figure, from its refusal
    memory = f"{configured['gib_per_device']} (refused by the compiler)"
  else:
    memory = (f"{configured['gib_per_device']} ({configured['arguments_gib']} / "
              f"{configured['temporaries_gib']} / {configured['outputs_gib']})")
  images = f"{configured['images_per_sec']:,}" if configured.get('images_per_sec') else ''
  verdict = ('fits' if evaluation['fits'] else
             'refused' if 'refused' in evaluation else 'does not fit')
  evaluated = f"{evaluation['gib_per_device']} ({verdict})"
  return (f"| {recipe} ({model}) | {result['slice']} | {result['masking']} | "
          f"{result['per_device_batch']:g} | {memory} | "
          f"{'yes' if configured['fits'] else 'no'} | {result['tflops_per_step']:,.0f} T | "
          f"{images} | {evaluated} | "
          f"{configured.get('compile_seconds', '')} |")


HEADER = ('| recipe | slice | masking | per-device batch | GiB per device (args / temps / '
          'outputs) | fits | FLOPs per step | est. images/s | evaluation GiB per device | '
          'compile s |\n| --- | --- | --- | ---: | --- | --- | ---: | ---: | --- | ---: |')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = set(RECIPES_FLAG.value) - {r[0] for r in RECIPES}
  if unknown:
    raise app.UsageError(f'--recipes: {sorted(unknown)} unknown; expected some of '
                         f'{[r[0] for r in RECIPES]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  rows, results = [HEADER], []
  for module, model, paper_slice in RECIPES:
    if module not in RECIPES_FLAG.value:
      continue
    for slice_ in slices_for(paper_slice):
      for ratio in (None, 0.0) if UNMASKED_FLAG.value else (None,):
        config = recipe_config(module, ratio)
        try:
          checks.check(config)
          result = plan.plan(config, slice_, remedies=())
        except ValueError as e:  # the recipe refused on this slice (divisibility)
          rows.append(f'| {module} ({model}) | {slice_.name} | | | refused at start-up: '
                      f'{e} | no | | | | |')
          results.append({'recipe': module, 'slice': slice_.name, 'refused': str(e)})
          continue
        rows.append(table_row(module, model, result))
        results.append({'recipe': module, **result})
        print(rows[-1], file=sys.stderr, flush=True)  # progress: each row takes minutes
  print('\n'.join(rows))
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
