"""Writes a checkpoint of this project as an open_clip model folder.

  python -m tools.export_open_clip --checkpoint=WORKDIR_OR_STEP_DIR --out=DIR

DIR gets open_clip_config.json (`model_cfg`, and `preprocess_cfg` with the run's pixel
statistics, size and bicubic resize) and open_clip_model.safetensors, which
`open_clip.create_model_and_transforms('local-dir:DIR')` opens, and so does CLIP_benchmark:

  clip_benchmark eval --model local-dir:DIR --pretrained none --dataset wds/NAME \
      --dataset_root PATH --task zeroshot_retrieval

The model is the one the checkpoint was trained with: the config its checkpoint carries (or,
for checkpoints older than that, the config.json saved beside checkpoints/). A model that
open_clip cannot express, or weights holding NaN or infinities, are refused, naming the
field or tensor, before anything is written. DIR is replaced whole, never in part: an export
killed or out of disk leaves the previous one as it was, and a second export to DIR while
one runs is refused. --verbosity=1 shows the traceback of an error.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import ml_collections
import orbax.checkpoint as ocp

from foreign_weights import open_clip_state
from trainer import checkpoints
from trainer import console
from trainer import saved_config
from trainer import state as state_lib
from trainer import workdir as workdir_lib

CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'a run\'s workdir, its checkpoints/ folder or one step\'s folder',
    required=True)
OUT = flags.DEFINE_string('out', None, 'the folder to write the open_clip model to',
                          required=True)


def run_config_of(step_dir: str) -> ml_collections.ConfigDict:
  """The config checkpoint WORKDIR/checkpoints/N was trained with: the one it carries, else
  (a checkpoint older than that) WORKDIR/config.json."""
  step = os.path.basename(step_dir)
  carried = {}
  if step.isdigit():
    carried = checkpoints.restore_run_state(
        ocp.CheckpointManager(os.path.dirname(step_dir)), int(step)) or {}
  if carried.get('config'):
    return saved_config.filled(carried['config'])
  logging.info('%s carries no config: reading the run\'s config.json', step_dir)
  return saved_config.of_run(workdir_lib.run_of(os.path.dirname(step_dir)).root)


def export(checkpoint: str, out_dir: str):
  """Exports the newest checkpoint behind `checkpoint`; returns the written paths."""
  step_dir = checkpoints.latest_step_dir(checkpoint)
  config = run_config_of(step_dir)
  open_clip_state.model_config(config)  # refuses before the weights are read
  params = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'params'))
  spoilt = state_lib.non_finite_names(params)
  if spoilt:
    raise ValueError(f'{step_dir} holds NaN or infinite values in {len(spoilt)} tensors, '
                     f'{spoilt[0]} first: these weights are not exported')
  paths = open_clip_state.export(params, config, out_dir)
  logging.info('Exported %s to %s', step_dir, out_dir)
  return paths


@console.one_line_errors('export_open_clip', (ValueError, OSError, checkpoints.CheckpointError))
def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # orbax's restore notes are not the user's
    logging.set_verbosity(logging.WARNING)
  paths = export(CHECKPOINT.value, OUT.value)
  print(f'wrote {", ".join(paths.values())}')
  print(f'open with: open_clip.create_model_and_transforms("local-dir:{OUT.value}")')


if __name__ == '__main__':
  app.run(main)
