"""Masked language-image pre-training: trains (or evaluates) a CLIP model from a config.

  python main.py --workdir=DIR --config=configs/cfg_flip_base.py --config.laion_path=PATH
  python main.py --workdir=DIR --config=configs/cfg_flip_large.py --config.pretrain_dir=CKPT \
      --config.eval_only=True
"""

import logging as std_logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

import checkpoints
import preemption
import train
import workdir_lock

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and '
                    'metrics.jsonl.')
config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py); override any '
                                'field with --config.FIELD=VALUE.', lock_config=True)
flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (one process per '
                  'host). Default: when the environment shows several hosts (a TPU pod '
                  'slice, SLURM, Open MPI or JAX_COORDINATOR_ADDRESS).')
flags.mark_flags_as_required(['workdir', 'config'])


def launched_on_several_hosts(env=os.environ) -> bool:
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return True
  return any(int(env.get(name, '1') or '1') > 1 for name in ('SLURM_NTASKS',
                                                              'OMPI_COMM_WORLD_SIZE'))


class _QuietCheckpointing(std_logging.Filter):
  """Orbax logs every step of every save at INFO; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def parse_flags(argv):
  """absl's parser, with a one-line refusal of --config.FIELD overrides the config lacks."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = ' '.join(a.split('=')[0] for a in argv[1:] if a.startswith('--config.'))
    sys.exit(f'FATAL Flags parsing error: unknown config field {e} (overrides given: '
             f'{overrides}); configs/default.py lists every field')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietCheckpointing())
  distributed = FLAGS.distributed
  if distributed is None:
    distributed = launched_on_several_hosts()
  if distributed:
    # TPU pods, SLURM and Open MPI describe themselves; other hosts name the coordinator in
    # JAX_COORDINATOR_ADDRESS and themselves in JAX_NUM_PROCESSES / JAX_PROCESS_ID.
    jax.distributed.initialize(**{
        arg: int(os.environ[name]) for arg, name in (('num_processes', 'JAX_NUM_PROCESSES'),
                                                     ('process_id', 'JAX_PROCESS_ID'))
        if name in os.environ})
  # TensorFlow only feeds data: keep it off the accelerators that JAX owns.
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  logging.info('JAX process %d/%d, %d local of %d devices (%s)', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.NonFiniteLossError, checkpoints.CheckpointError,
          workdir_lock.WorkdirBusy) as e:
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:
    # 143 after SIGTERM, 130 after SIGINT: the same command resumes from the checkpoint.
    print(e, file=sys.stderr)
    sys.exit(e.exit_status)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
