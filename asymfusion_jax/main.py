"""Command line: train (with periodic evaluation) or evaluate AsymFusion from a config.

  python -m asymfusion_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m asymfusion_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=eval [--step=N]

Any config field can be overridden with --config.<key>=<value>. On a multi-host cluster, pass
--distributed (and, outside TPU pods and SLURM/Open MPI clusters, --coordinator_address,
--num_processes and --process_id) to start jax.distributed before anything touches a device.
"""

from absl import app, flags, logging
import jax

from asymfusion_jax import config_lib, logger, train

FLAGS = flags.FLAGS
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  logger.quiet_library_logs()
  if FLAGS.distributed:
    try:  # CPU processes exchange collectives through gloo; GPUs and TPUs ignore this option.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    except AttributeError:  # Newer JAX chooses CPU collectives by itself.
      pass
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info('JAX process %d/%d, local devices %s, global device count %d',
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  if FLAGS.mode == 'train':
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.step)


if __name__ == '__main__':
  app.run(main)
