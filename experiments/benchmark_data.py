"""Times a segmentation input pipeline: train examples/s and peak host memory per worker count.

  python experiments/benchmark_data.py --dataset=cityscapes --data_dir=/tmp/cs_bench
  python experiments/benchmark_data.py --dataset=nyudv2 --data_dir=/tmp/nyu_bench --num_train=200

Writes --num_train synthetic examples of --height x --width (by default the dataset's own size:
1024x2048 for Cityscapes, 480x640 for NYUDv2) into DATA_DIR/synthetic unless the dataset's root
is given with --manual_dir, builds the TFDS dataset into DATA_DIR/tfds, then for each worker
count starts a fresh Python process that asks for the train batches, reads the first (the time
to it, `first_batch_s`, is the start-up a training run waits for), then --steps more of the
paper recipe's batch size and crop (or --batch_size, --crop_size), and reports examples/s and
its peak resident memory (ru_maxrss), so that one count's memory does not count against the
next; also the peaks, sampled after each batch, of its anonymous memory and of its mapped file
pages (which the kernel reclaims under pressure). Files are read through the OS page cache like
any training run's.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

# The paper config of each dataset, and its images' (height, width).
DATASETS = {'cityscapes': ('cityscapes_deeplab_xception65', (1024, 2048)),
            'nyudv2': ('nyudv2_refinenet101', (480, 640))}

flags.DEFINE_enum('dataset', 'cityscapes', list(DATASETS), 'The dataset whose pipeline to time.')
flags.DEFINE_string('data_dir', '', 'Working folder (data and TFDS build); default '
                    '/tmp/DATASET_bench. Synthetic data already there is reused as it is.')
flags.DEFINE_string('manual_dir', '', "A root of the dataset's files to read instead of "
                    'synthetic ones.')
flags.DEFINE_integer('num_train', 24, 'Synthetic train examples.')
flags.DEFINE_integer('height', 0, "Synthetic image height (0: the dataset's).")
flags.DEFINE_integer('width', 0, "Synthetic image width (0: the dataset's).")
flags.DEFINE_list('workers', ['1', '2', '4'], 'Worker thread counts to time.')
flags.DEFINE_integer('batch_size', 0, "Examples per batch (0: the paper config's).")
flags.DEFINE_integer('crop_size', 0, "Train crop (0: the paper config's).")
flags.DEFINE_integer('steps', 4, 'Timed batches per worker count.')
flags.DEFINE_integer('child_workers', -1, 'Internal: time one worker count in this process.')
FLAGS = flags.FLAGS


def _config():
  from asymfusion_jax import config_lib  # pylint: disable=g-import-not-at-top
  name, (height, width) = DATASETS[FLAGS.dataset]
  c = config_lib.load(f'configs/{name}.py')
  c.data.synthetic = not FLAGS.manual_dir
  data_dir = FLAGS.data_dir or f'/tmp/{FLAGS.dataset}_bench'
  c.data.manual_dir = FLAGS.manual_dir or os.path.join(data_dir, 'synthetic')
  c.data.tfds_data_dir = os.path.join(data_dir, 'tfds')
  c.data.synthetic_image_size = (FLAGS.height or height, FLAGS.width or width)
  c.data.num_train, c.data.num_val = FLAGS.num_train, 1
  c.batch_size = FLAGS.batch_size or c.batch_size
  c.crop_size = FLAGS.crop_size or c.crop_size
  return c


def _memory_mib() -> dict[str, float]:
  """This process's resident memory now, split as Linux reports it (/proc/self/status): RssAnon
  (the process's own allocations) and RssFile (file pages mapped, e.g. the ArrayRecord files,
  which the kernel can drop at any time)."""
  out = {}
  with open('/proc/self/status') as f:
    for line in f:
      key, _, value = line.partition(':')
      if key in ('RssAnon', 'RssFile'):
        out[key] = int(value.split()[0]) / 1024
  return out


def _time_here(workers: int) -> dict:
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.num_workers = workers
  start = time.perf_counter()
  batches = data.get(config).train_batches(config)
  next(batches)  # Also the warm-up: opens the files, starts the threads.
  first_batch_s = time.perf_counter() - start
  start = time.perf_counter()
  peak = _memory_mib()
  for _ in range(FLAGS.steps):
    next(batches)
    peak = {k: max(v, _memory_mib().get(k, 0.0)) for k, v in peak.items()}
  seconds = time.perf_counter() - start
  return {'workers': workers, 'first_batch_s': first_batch_s,
          'examples_per_s': FLAGS.steps * config.batch_size / seconds,
          'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'peak_anon_mib': peak.get('RssAnon', float('nan')),
          'peak_file_mib': peak.get('RssFile', float('nan'))}


def main(argv):
  del argv
  if FLAGS.child_workers >= 0:
    print(json.dumps(_time_here(FLAGS.child_workers)))
    return
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  config = _config()
  data.get(config).prepare(config)
  print(f'data ready in {time.perf_counter() - start:.0f} s', flush=True)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for workers in FLAGS.workers:
    args = [sys.executable, os.path.abspath(__file__), f'--child_workers={workers}'] + [
        f'--{name}={FLAGS[name].serialize().split("=", 1)[1]}' for name in
        ('dataset', 'data_dir', 'manual_dir', 'num_train', 'height', 'width', 'batch_size',
         'crop_size', 'steps')]
    out = subprocess.run(args, capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONPATH': repo})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f'{result["workers"]} workers: first batch after {result["first_batch_s"]:.1f} s, '
          f'then {result["examples_per_s"]:.2f} examples/s, peak host '
          f'memory {result["peak_rss_mib"]:.0f} MiB (sampled after each batch: anonymous '
          f'{result["peak_anon_mib"]:.0f} MiB, mapped files {result["peak_file_mib"]:.0f} MiB)',
          flush=True)


if __name__ == '__main__':
  app.run(main)
