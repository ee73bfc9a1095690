"""GLIP's table for finished runs: masked inference, unmasked, and after unmasked tuning.

  python -m tools.glip_table --runs=workdirs/demo-none,workdirs/demo-random --out=DIR \
      [--tune_steps=50] [--tune_image_size=48] [--metric=zeroshot/top1]

For each run (a workdir, read with the config.json it saved) it evaluates the latest
checkpoint twice, with the training policy at evaluation ("masked inference") and with every
patch, then tunes it for --tune_steps without masking (FLIP's recipe: mask_ratio 0, the
learning rate times --tune_lr_scale, from the run's weights, no optimiser state) and
evaluates again. A run trained on smaller images (RECLIP's row) is evaluated at its own size
and tuned at --tune_image_size, its weights fitted to the larger grid as pretrain_dir fits
them.

Two columns compare the runs' costs. `patches encoded` is the mean number of patches each
run's image tower encoded per image during training, from its own log (kept_fraction_mean:
the cluster policy's count varies per image, the attentive one keeps whole blocks). The
training images/s are measured here, side by side: every run's model and policy take train
steps in turns (--speed_rounds rounds of --speed_steps steps each, on random images at the
run's batch size or --speed_batch_size), so that all see the same machine; the median and
the range over the rounds are shown. It writes DIR/glip_table.md and DIR/glip_table.png.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import numpy as np

from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import interleaved_seconds, spread, stepping
import masking
import train
from trainer import console
from trainer import metric_writers
from trainer import partitioning
from trainer import saved_config
from trainer import step as step_lib
from trainer import text_counts
from trainer import workdir as workdir_lib

COLUMNS = ('masked', 'unmasked', 'tuned')


def patches_encoded(workdir: str):
  """(mean patches the run encoded per image over its logged windows, patches per image)."""
  config = saved_config.of_run(workdir)
  total = masking.get_policy(config, train=True).num_patches
  rows = metric_writers.read_rows(workdir_lib.Workdir(workdir).metrics_jsonl)
  fractions = [r['kept_fraction_mean'] for r in rows if 'kept_fraction_mean' in r]
  return (float(np.mean(fractions)) * total if fractions else float('nan')), total


def text_tokens(workdir: str):
  """(the run's text reduction, the positions its text tower encoded per caption, the mean
  number of them that held caption tokens, from its log)."""
  config = saved_config.of_run(workdir)
  text = config.model.model_txt.masking
  length = config.aug.txt.max_len if text.policy == 'none' else text.num_tokens
  rows = metric_writers.read_rows(workdir_lib.Workdir(workdir).metrics_jsonl)
  kept = [r['text_tokens'] for r in rows if 'text_tokens' in r]
  return text.policy, length, float(np.mean(kept)) if kept else float('nan')


def _token_counts(config, workdir: str):
  """The token counts a frequency run reduced its captions with, None for other runs."""
  if config.model.model_txt.masking.policy != 'frequency':
    return None
  return text_counts.read_counts(workdir_lib.Workdir(workdir).text_token_counts)[0]


def training_speeds(workdirs, rounds: int, steps: int, batch_size: int = 0):
  """{workdir: {min, median, max} training images/s}, every run's train step timed in turns
  in this process (random images; the weights do not change the cost)."""
  calls, batches = {}, {}
  for workdir in workdirs:
    config = saved_config.of_run(workdir)
    config.batch_size = batch_size or config.batch_size
    mesh = partitioning.make_mesh(config)
    training = step_lib.new_training(config, mesh, jax.random.PRNGKey(0),
                                     token_counts=_token_counts(config, workdir))
    calls[workdir] = stepping(training.step, training.state, synthetic_batch(config, mesh),
                              jax.random.PRNGKey(1))
    batches[workdir] = config.batch_size
  seconds = interleaved_seconds(calls, rounds, steps)
  return {w: spread([batches[w] / s for s in seconds[w]], 1) for w in workdirs}


def evaluate_run(workdir: str, out_dir: str, tune_steps: int, tune_lr_scale: float,
                 tune_image_size: int = 0):
  """(policy, mask ratio, image size, {column: {metric: value}}) of one run."""
  base = saved_config.of_run(workdir)
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
  tuned.model.model_txt.masking.policy = 'none'
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
  """`rows`: (name, policy, ratio, size, results, (patches encoded, of), (text reduction,
  text positions, caption tokens among them), images/s spread)."""
  lines = ['| run | policy | mask ratio | image size | patches encoded | text tokens encoded | '
           + ' | '.join(f'{m} {c}' for m in metrics for c in COLUMNS) +
           ' | training images/s (range) |',
           '| --- ' * (7 + len(metrics) * len(COLUMNS)) + '|']
  for name, policy, ratio, size, results, (encoded, total), text, speed in rows:
    cells = [f'{100 * results[c].get(m, float("nan")):.1f}' for m in metrics for c in COLUMNS]
    reduction, length, kept = text
    reduced = f'{length} ({kept:.1f} in use' + (f', {reduction})' if reduction != 'none' else ')')
    lines.append(f'| {name} | {policy} | {ratio:g} | {size} | {encoded:.1f} of {total} | '
                 f'{reduced} | ' + ' | '.join(cells) + f' | {speed["median"]:.0f} '
                 f'({speed["min"]:.0f}-{speed["max"]:.0f}) |')
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
  label = f'{policy}\n{size}px' if policy == 'none' else policy
  text = row[6][0]
  return label if text == 'none' else f'{label}\n{text} text'


@console.one_line_errors('glip_table')
def main(argv):
  del argv
  runs = [r for r in FLAGS.runs if r]
  os.makedirs(FLAGS.out, exist_ok=True)
  evaluated = []
  for workdir in runs:
    name = os.path.basename(os.path.normpath(workdir))
    logging.info('GLIP table: %s', workdir)
    evaluated.append((name, *evaluate_run(workdir, os.path.join(FLAGS.out, name),
                                          FLAGS.tune_steps, FLAGS.tune_lr_scale,
                                          FLAGS.tune_image_size)))
  logging.info('GLIP table: training speed of the %d runs side by side (%d rounds)',
               len(runs), FLAGS.speed_rounds)
  speeds = training_speeds(runs, FLAGS.speed_rounds, FLAGS.speed_steps,
                           FLAGS.speed_batch_size)
  rows = [(*row, patches_encoded(workdir), text_tokens(workdir), speeds[workdir])
          for row, workdir in zip(evaluated, runs)]
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
  flags.DEFINE_integer('speed_rounds', 5, 'Rounds in which the runs\' train steps take turns.')
  flags.DEFINE_integer('speed_steps', 3, 'Timed train steps per run and round.')
  flags.DEFINE_integer('speed_batch_size', 0, 'Batch size of the speed measurement (0: each '
                       'run\'s own; smaller for large models on one device).')
  FLAGS = flags.FLAGS
  console.setup()
  with console.private_temp_dir():
    app.run(main)
