"""Masked language-image pre-training: trains (or evaluates) a CLIP model from a config.

  python main.py --workdir=DIR --config=configs/cfg_flip_base.py --config.laion_path=PATH
  python main.py --workdir=DIR --config=configs/cfg_flip_large.py
      --config.pretrain_dir=CKPT --config.eval_only=True

The console shows the start-up, progress, evaluations and results; WORKDIR/train.log holds
everything the libraries logged too.
"""

import os
import re
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow's native notes and errors

# TensorFlow and the training modules are imported once the flags are read, so that --help
# answers at once, and with their native start-up chatter sent to the log file.
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from trainer import console

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS, argv=None):
  """main.py's flags (the documentation's commands are checked against these too); `argv`:
  the command line the config's overrides are read from (default: sys.argv)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and '
                      'metrics.jsonl.', flag_values=flag_values)
  config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py); override '
                                  'any field with --config.FIELD=VALUE.',
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (one process '
                    'per host). Default: when the environment shows several hosts (a TPU pod '
                    'slice, SLURM, Open MPI or JAX_COORDINATOR_ADDRESS).',
                    flag_values=flag_values)
  flags.DEFINE_bool('traceback', False, 'Show the full traceback of an error instead of its '
                    'one-line message (as --verbosity=1 does).', flag_values=flag_values)
  flags.mark_flags_as_required(['workdir', 'config'], flag_values=flag_values)


define_flags()

HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def user_errors():
  """What a user can cause (a config, a path, the data, the disk): one line, not a
  traceback."""
  import train  # pylint: disable=g-import-not-at-top
  from trainer import checkpoints  # pylint: disable=g-import-not-at-top
  from trainer import resume  # pylint: disable=g-import-not-at-top
  from trainer import workdir  # pylint: disable=g-import-not-at-top
  return (ValueError, OSError, train.NonFiniteLossError, checkpoints.CheckpointError,
          workdir.WorkdirBusy, resume.ConfigChanged)


def launched_on_several_hosts(env=os.environ) -> bool:
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return True
  return any(int(env.get(name, '1') or '1') > 1 for name in ('SLURM_NTASKS',
                                                              'OMPI_COMM_WORLD_SIZE'))


def _unknown_field_message(error, argv) -> str:
  """One line for an override of a field the config lacks: which override, and what
  ml_collections suggests instead."""
  text = str(error.args[0] if error.args else error)
  name = re.search(r'[A-Za-z_][A-Za-z0-9_]*', text).group(0)
  overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  given = next((o for o in overrides if o.split('.')[-1] == name), f'--config...{name}')
  suggestion = re.search(r'Did you mean \\?"([A-Za-z0-9_]+)', text)
  hint = f'; did you mean {suggestion.group(1)}?' if suggestion else ''
  return (f'{given}: the config has no field {name}{hint} (configs/default.py lists every '
          'field)')


def parse_flags(argv):
  """absl's parser, with one-line refusals of unknown flags, unknown config fields, values
  of the wrong type and a missing --workdir or --config; --help exits 0."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    try:
      FLAGS(argv)
    except SystemExit as e:  # absl ends a help request with status 1
      sys.exit(0 if e.code == 1 else e.code)
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    sys.exit(f'error: {_unknown_field_message(e, argv)}')
  except flags.Error as e:
    message = str(e).splitlines()[0]
    for required in ('workdir', 'config'):
      if f'--{required}=None' in message:
        message = f'--{required} is required: {FLAGS[required].help}'
    sys.exit(f'error: {message} (python main.py --help lists the flags)')


def _exit_with(message: str, status: int = 1):
  """Prints the one line a user reads, then ends the process without running the background
  threads' shutdown (orbax and tensorstore would print tracebacks as the interpreter goes)."""
  console.error_for_the_log(message)
  logging.flush()
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access


def _start_and_train():
  with console.native_stderr_filtered():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import train  # pylint: disable=g-import-not-at-top
    # TensorFlow only feeds data: keep it off the accelerators that JAX owns.
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
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
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.setup()
  # From here on, a Ctrl-C at any point ends in the one line below, never a traceback; an
  # error ends as a normal exit does, its temporary files removed.
  try:
    with console.private_temp_dir():
      _start_and_train()
  except KeyboardInterrupt:
    _exit_with('interrupted (Ctrl-C) before training began; nothing was saved', 130)
  except Exception as e:  # pylint: disable=broad-except
    import train  # pylint: disable=g-import-not-at-top
    from trainer import preemption  # pylint: disable=g-import-not-at-top
    if isinstance(e, preemption.Preempted):
      # 143 after SIGTERM, 130 after SIGINT: the same command resumes from the checkpoint.
      _exit_with(str(e), e.exit_status)
    if isinstance(e, train.Interrupted):
      _exit_with(f'interrupted: {e}', 130)
    if FLAGS.traceback or FLAGS.verbosity >= 1 or not isinstance(e, user_errors()):
      raise
    _exit_with(f'error: {e} (--verbosity=1 shows where it was raised)')


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
