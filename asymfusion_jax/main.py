"""Command line: train (with periodic evaluation) or evaluate AsymFusion from a config.

  python -m asymfusion_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m asymfusion_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=eval [--step=N]

Any config field can be overridden with --config.<key>=<value>. On a multi-host cluster, pass
--distributed (and, outside TPU pods and SLURM/Open MPI clusters, --coordinator_address,
--num_processes and --process_id) to start jax.distributed before anything touches a device.

Exit status: 0 when training ran to its last step (or the evaluation finished); 143 (128 +
SIGTERM, what a shell reports for a process SIGTERM ended) when SIGTERM stopped training early,
after it saved a checkpoint: the same command resumes it; 1 for any error, which is one line
on stderr naming the fault and what to do (--verbosity=1 adds its traceback).
"""

import ast
import os
import sys

from absl import app, flags, logging
import jax

from asymfusion_jax import cli, config_lib, logger, train

FLAGS = flags.FLAGS
EXIT_STOPPED_BY_SIGTERM = 143
config_lib.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                              lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and predictions.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Train (with evaluation) or only evaluate.')
flags.DEFINE_integer('step', None, '--mode=eval: the checkpoint step (default: the best one).')
flags.DEFINE_bool('distributed', False, 'Initialise jax.distributed (multi-host).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 for jax.distributed.')
flags.DEFINE_integer('num_processes', None, 'Number of processes for jax.distributed.')
flags.DEFINE_integer('process_id', None, 'This process index for jax.distributed.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a flag or config that cannot be read is one line, not a traceback.

  A missing config file, a misspelt --config.<key> override, a value of the wrong type or a
  config file's own ValueError exit with status 1 and one line naming the flag and the fault (a
  Python error inside a config file keeps its traceback: its line number is what one needs then).
  """
  try:
    rest = FLAGS(argv)
    FLAGS.config.get('seed')  # A file that failed to load raises only when first read.
  except flags.Error as e:
    sys.exit(f'main: {cli.flag_error(e)} (--helpfull lists the flags)')
  except (KeyError, AttributeError, OSError, ValueError, TypeError) as e:
    sys.exit(f'main: {config_error(e, argv)}')
  return rest


def config_error(error: Exception, argv: list[str]) -> str:
  """One line on a config error, naming the --config flag or override at fault."""
  text = str(error.args[0]) if error.args else str(error)
  if isinstance(error, (KeyError, AttributeError)):
    try:  # ml_collections puts the repr of a KeyError's message in the AttributeError.
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
    lines = text.splitlines() or ['']
    key = lines[0].strip('\'"')
    culprit = next((a.split('=')[0] for a in argv
                    if a.startswith('--config.') and key in a.split('=')[0].split('.')),
                   '--config')
    return ' '.join([f'{culprit}: the config has no field {key!r}.'] + lines[1:])
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if isinstance(error, OSError):  # ml_collections: how it tried, then why it failed (last).
    config = next((a for a in argv if a.startswith('--config=')), '--config')
    path = config.partition('=')[2].split(':')[0]
    where = '' if os.path.isabs(path) else f' (relative to {os.getcwd()})'
    return (f'{config}: {lines[-1] if lines else error}{where}; --config takes a config file, '
            "e.g. the repository's configs/demo.py.")
  return f'--config: {type(error).__name__}: {" ".join(lines)}'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  logger.setup_cli_logging(tensorflow=True)
  if FLAGS.distributed:
    try:  # CPU processes exchange collectives through gloo; GPUs and TPUs ignore this option.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    except AttributeError:  # Newer JAX chooses CPU collectives by itself.
      pass
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info('JAX process %d/%d, local devices %s, global device count %d',
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  # Any other error (a bad config value, an unusable workdir or checkpoint, a non-finite loss)
  # is one line naming the fault (cli.run); --verbosity=1 shows its traceback.
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.step)
  except train.StoppedBySignal as e:
    logging.warning('Exiting with status %d: %s.', EXIT_STOPPED_BY_SIGTERM, e)
    return EXIT_STOPPED_BY_SIGTERM


if __name__ == '__main__':
  cli.run(main, 'main', flags_parser=parse_flags)
