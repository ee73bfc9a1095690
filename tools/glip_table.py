"""GLIP's table for finished runs: masked inference, unmasked, and after unmasked tuning.

  python -m tools.glip_table --runs=workdirs/demo-none,workdirs/demo-random --out=DIR \
      [--tune_steps=50] [--tune_image_size=48] [--metric=zeroshot/top1]

For each run (a workdir, read with the config.json it saved) it evaluates the latest
checkpoint twice, with the training policy at evaluation ("masked inference") and with every
patch, then tunes it for --tune_steps without masking (FLIP's recipe: mask_ratio 0, the
learning rate times --tune_lr_scale, from the run's weights, no optimiser state) and
evaluates again. A run trained on smaller images (RECLIP's row) is evaluated at its own size
and tuned at --tune_image_size, its weights fitted to the larger grid as pretrain_dir fits
them. It writes DIR/glip_table.md (every configured evaluation's --metric and
the masked training's images/s) and DIR/glip_table.png.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import numpy as np

import config_checks
import metrics_writer
import train

COLUMNS = ('masked', 'unmasked', 'tuned')


def training_speed(workdir: str) -> float:
  """Median images/s of the run's logged windows (which leave out the compiling step)."""
  rows = metrics_writer.read_rows(os.path.join(workdir, 'metrics.jsonl'))
  speeds = [r['images_per_sec'] for r in rows if 'images_per_sec' in r]
  return float(np.median(speeds)) if speeds else float('nan')


def evaluate_run(workdir: str, out_dir: str, tune_steps: int, tune_lr_scale: float,
                 tune_image_size: int = 0):
  """(policy, mask ratio, image size, {column: {metric: value}}) of one run."""
  base = config_checks.saved_config(workdir)
  base.eval_only, base.pretrain_dir = False, ''
  results = {}
  for column, at_eval in (('masked', True), ('unmasked', False)):
    config = base.copy_and_resolve_references()
    config.eval_only, config.resume_dir = True, os.path.abspath(workdir)
    config.model.model_img.masking.at_eval = at_eval
    results[column] = train.train_and_evaluate(config, os.path.join(out_dir, column))
  tuned = base.copy_and_resolve_references()
  tuned.pretrain_dir, tuned.resume_dir = os.path.abspath(workdir), ''
  tuned.model.model_img.mask_ratio = 0.0
  tuned.model.model_img.masking.at_eval = False
  tuned.learning_rate *= tune_lr_scale
  tuned.abs_learning_rate *= tune_lr_scale
  tuned.image_size = tune_image_size or base.image_size
  tuned.total_steps, tuned.warmup_epochs, tuned.warmup_steps = tune_steps, 0.0, 0
  tuned.checkpoint_every_steps, tuned.save_every_epochs, tuned.save_at_end = 0, 0.0, False
  tuned.eval_every_steps, tuned.eval_at_end = 0, True
  for ecfg in tuned.evals.values():
    ecfg.every_steps = 0
  results['tuned'] = train.train_and_evaluate(tuned, os.path.join(out_dir, 'tuned'))
  policy = base.model.model_img.masking.policy
  return (policy, 0.0 if policy == 'none' else base.model.model_img.mask_ratio,
          base.image_size, results)


def table(rows, metrics) -> str:
  lines = ['| run | policy | mask ratio | image size | ' + ' | '.join(
      f'{m} {c}' for m in metrics for c in COLUMNS) + ' | training images/s |',
           '| --- ' * (5 + len(metrics) * len(COLUMNS)) + '|']
  for name, policy, ratio, size, results, speed in rows:
    cells = [f'{100 * results[c].get(m, float("nan")):.1f}' for m in metrics for c in COLUMNS]
    lines.append(f'| {name} | {policy} | {ratio:g} | {size} | ' + ' | '.join(cells) +
                 f' | {speed:.0f} |')
  return '\n'.join(lines) + '\n'


def figure(rows, metrics, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
  width = 0.8 / len(COLUMNS)
  for ax, metric in zip(axes[0], metrics):
    for i, column in enumerate(COLUMNS):
      values = [100 * r[4][column].get(metric, np.nan) for r in rows]
      ax.bar(np.arange(len(rows)) + (i - 1) * width, values, width, label=column)
    ax.set_xticks(np.arange(len(rows)), [_label(r) for r in rows], fontsize=8)
    ax.set_ylabel(f'{metric} (%)')
    ax.set_title(metric)
  axes[0][0].legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _label(row):
  _, policy, _, size = row[:4]
  return f'{policy}\n{size}px' if policy == 'none' else policy


def main(argv):
  del argv
  runs = [r for r in FLAGS.runs if r]
  os.makedirs(FLAGS.out, exist_ok=True)
  rows = []
  for workdir in runs:
    name = os.path.basename(os.path.normpath(workdir))
    logging.info('GLIP table: %s', workdir)
    policy, ratio, size, results = evaluate_run(workdir, os.path.join(FLAGS.out, name),
                                                FLAGS.tune_steps, FLAGS.tune_lr_scale,
                                                FLAGS.tune_image_size)
    rows.append((name, policy, ratio, size, results, training_speed(workdir)))
  metrics = list(FLAGS.metric)
  text = table(rows, metrics)
  with open(os.path.join(FLAGS.out, 'glip_table.md'), 'w') as f:
    f.write(text)
  figure(rows, metrics, os.path.join(FLAGS.out, 'glip_table.png'))
  print(text)


if __name__ == '__main__':
  flags.DEFINE_list('runs', [], 'Workdirs of finished runs.')
  flags.DEFINE_string('out', 'glip_table', 'Output directory.')
  flags.DEFINE_integer('tune_steps', 50, 'Steps of unmasked tuning per run.')
  flags.DEFINE_float('tune_lr_scale', 0.1, 'Tuning learning rate / the run\'s learning rate.')
  flags.DEFINE_integer('tune_image_size', 0, 'Image size of the tuning and its evaluation '
                       '(0: each run\'s own); RECLIP\'s low-resolution runs tune at full size.')
  flags.DEFINE_list('metric', ['zeroshot/top1'], 'Metrics (<evaluation>/<metric>) to tabulate.')
  FLAGS = flags.FLAGS
  app.run(main)
