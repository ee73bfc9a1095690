"""Writes a checkpoint of this project as an open_clip model folder.

  python -m tools.export_open_clip --checkpoint=WORKDIR_OR_STEP_DIR --out=DIR

DIR gets open_clip_config.json (`model_cfg`, and `preprocess_cfg` with the run's pixel
statistics, size and bicubic resize) and open_clip_model.safetensors, which
`open_clip.create_model_and_transforms('local-dir:DIR')` opens, and so does CLIP_benchmark:

  clip_benchmark eval --model local-dir:DIR --pretrained none --dataset wds/NAME \
      --dataset_root PATH --task zeroshot_retrieval

The run's config is read from the config.json saved beside its checkpoints/. A model that
open_clip cannot express is refused, naming the config field, before anything is written.
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
from trainer import saved_config
from trainer import workdir as workdir_lib

CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'a run\'s workdir, its checkpoints/ folder or one step\'s folder',
    required=True)
OUT = flags.DEFINE_string('out', None, 'the folder to write the open_clip model to',
                          required=True)


def run_config_of(step_dir: str) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with: WORKDIR/config.json for WORKDIR/checkpoints/N."""
  return saved_config.of_run(workdir_lib.run_of(os.path.dirname(step_dir)).root)


def export(checkpoint: str, out_dir: str):
  """Exports the newest checkpoint behind `checkpoint`; returns the written paths."""
  step_dir = checkpoints.latest_step_dir(checkpoint)
  config = run_config_of(step_dir)
  open_clip_state.model_config(config)  # refuses before the weights are read
  params = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'params'))
  paths = open_clip_state.export(params, config, out_dir)
  logging.info('Exported %s to %s', step_dir, out_dir)
  return paths


def main(argv):
  del argv
  try:
    paths = export(CHECKPOINT.value, OUT.value)
  except (ValueError, OSError) as e:
    raise SystemExit(f'export_open_clip: {e}') from None
  print(f'wrote {paths["config"]} and {paths["weights"]}')
  print(f'open with: open_clip.create_model_and_transforms("local-dir:{OUT.value}")')


if __name__ == '__main__':
  app.run(main)
