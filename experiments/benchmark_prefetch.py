"""Training steps/s with and without prefetching batches to the device (config.data.prefetch_to_device).

  python experiments/benchmark_prefetch.py --config=configs/demo.py --steps=60 --repeats=3 \\
      [--prefetch=0,2] [--config.batch_size=8 ...]

Runs the real training loop (train.train_and_evaluate: the input pipeline's worker threads,
sharding.prefetch_to_device, the jitted step) for --steps steps in a fresh workdir per run, the
prefetch settings alternating within each repeat so that a machine whose load drifts affects
them alike. The data (synthetic for the demo configs) is prepared once, under --data_dir.
Reported per run: the steps/s of the loop after its first logging interval (which holds the
compilation), from metrics.jsonl's steps_per_second; then per setting the median over repeats.
The last line is one JSON object.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib, logger, tasks, train  # pylint: disable=g-import-not-at-top

config_lib.DEFINE_config_file('config', 'configs/demo.py', 'The config to train.')
flags.DEFINE_integer('steps', 60, 'Train steps per run.')
flags.DEFINE_integer('log_every', 10, 'Steps per logged interval (the first is left out).')
flags.DEFINE_integer('repeats', 3, 'Runs per prefetch setting.')
flags.DEFINE_list('prefetch', ['0', '2'], 'config.data.prefetch_to_device settings to compare.')
flags.DEFINE_string('data_dir', '', 'Where the synthetic data is written and built once '
                    '(default: a temporary folder).')
FLAGS = flags.FLAGS


def run_once(config, prefetch: int) -> float:
  config = config.copy_and_resolve_references()
  config.data.prefetch_to_device = prefetch
  workdir = tempfile.mkdtemp(prefix='prefetch_bench_')
  try:
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rates = [r['steps_per_second'] for r in map(json.loads, f) if 'steps_per_second' in r]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  timed = rates[1:] or rates
  # The intervals are of equal length, so the loop's rate is their harmonic mean.
  return len(timed) / sum(1 / r for r in timed)


def main(argv):
  del argv
  logger.setup_cli_logging(tensorflow=True)
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix='prefetch_bench_data_')
  config = FLAGS.config.copy_and_resolve_references()
  with config.unlocked():
    config.data.manual_dir = os.path.join(data_dir, 'synthetic')
    config.data.tfds_data_dir = os.path.join(data_dir, 'tfds')
    config.max_steps = FLAGS.steps
    config.log_every_steps = FLAGS.log_every
    config.eval_every_epochs = 10**6  # Only the evaluation at the end, which is not timed.
    config.checkpoint_every_steps = 10**6
    config.num_prediction_images = 0
  tasks.get(config).prepare_data(config)
  settings = [int(p) for p in FLAGS.prefetch]
  results = {p: [] for p in settings}
  for repeat in range(FLAGS.repeats):
    for prefetch in settings:
      rate = run_once(config, prefetch)
      results[prefetch].append(rate)
      print(f'repeat {repeat}: prefetch_to_device={prefetch}: {rate:.3f} steps/s', flush=True)
  summary = {f'prefetch_{p}': {'median_steps_per_s': statistics.median(r), 'runs': r}
             for p, r in results.items()}
  print(json.dumps({'steps': FLAGS.steps, 'batch_size': config.batch_size,
                    'crop_size': config.crop_size, **summary}))


if __name__ == '__main__':
  app.run(main)
