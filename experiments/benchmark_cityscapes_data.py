"""Times the Cityscapes input pipeline: train examples/s and peak host memory per worker count.

  python experiments/benchmark_cityscapes_data.py --data_dir=/tmp/cs_bench --workers=1,2,4

Writes --num_train synthetic scenes of --height x --width (1024x2048 by default, the Cityscapes
size) into DATA_DIR/synthetic unless a Cityscapes root is given with --manual_dir, builds the
TFDS dataset into DATA_DIR/tfds, then for each worker count starts a fresh Python process that
reads --steps train batches of --batch_size at --crop_size (after one warm-up batch) and reports
examples/s and its peak resident memory (ru_maxrss), so that one count's memory does not count
against the next; also the peaks, sampled after each batch, of its anonymous memory and of its
mapped file pages (which the kernel reclaims under pressure). Files are read through the OS
page cache like any training run's.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

flags.DEFINE_string('data_dir', '/tmp/cityscapes_bench', 'Working folder (data and TFDS build).')
flags.DEFINE_string('manual_dir', '', 'A Cityscapes root to read instead of synthetic scenes.')
flags.DEFINE_integer('num_train', 24, 'Synthetic train scenes.')
flags.DEFINE_integer('height', 1024, 'Synthetic scene height.')
flags.DEFINE_integer('width', 2048, 'Synthetic scene width.')
flags.DEFINE_list('workers', ['1', '2', '4'], 'Worker thread counts to time.')
flags.DEFINE_integer('batch_size', 8, 'Examples per batch.')
flags.DEFINE_integer('crop_size', 769, 'Train crop.')
flags.DEFINE_integer('steps', 4, 'Timed batches per worker count.')
flags.DEFINE_integer('child_workers', -1, 'Internal: time one worker count in this process.')
FLAGS = flags.FLAGS


def _config():
  from configs import cityscapes_deeplab_xception65  # pylint: disable=g-import-not-at-top
  c = cityscapes_deeplab_xception65.get_config()
  c.data.synthetic = not FLAGS.manual_dir
  c.data.manual_dir = FLAGS.manual_dir or os.path.join(FLAGS.data_dir, 'synthetic')
  c.data.tfds_data_dir = os.path.join(FLAGS.data_dir, 'tfds')
  c.data.synthetic_image_size = (FLAGS.height, FLAGS.width)
  c.data.num_train, c.data.num_val = FLAGS.num_train, 1
  c.batch_size, c.crop_size = FLAGS.batch_size, FLAGS.crop_size
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
  from asymfusion_jax.data import cityscapes_pipeline  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.num_workers = workers
  batches = cityscapes_pipeline.train_batches(config)
  next(batches)  # Warm-up: opens the files, starts the threads.
  start = time.perf_counter()
  peak = _memory_mib()
  for _ in range(FLAGS.steps):
    next(batches)
    peak = {k: max(v, _memory_mib().get(k, 0.0)) for k, v in peak.items()}
  seconds = time.perf_counter() - start
  return {'workers': workers, 'examples_per_s': FLAGS.steps * FLAGS.batch_size / seconds,
          'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'peak_anon_mib': peak.get('RssAnon', float('nan')),
          'peak_file_mib': peak.get('RssFile', float('nan'))}


def main(argv):
  del argv
  if FLAGS.child_workers >= 0:
    print(json.dumps(_time_here(FLAGS.child_workers)))
    return
  from asymfusion_jax.data import cityscapes_pipeline  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  cityscapes_pipeline.prepare(_config())
  print(f'data ready in {time.perf_counter() - start:.0f} s', flush=True)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for workers in FLAGS.workers:
    args = [sys.executable, os.path.abspath(__file__), f'--child_workers={workers}'] + [
        f'--{name}={FLAGS[name].serialize().split("=", 1)[1]}' for name in
        ('data_dir', 'manual_dir', 'num_train', 'height', 'width', 'batch_size', 'crop_size',
         'steps')]
    out = subprocess.run(args, capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONPATH': repo})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f'{result["workers"]} workers: {result["examples_per_s"]:.2f} examples/s, peak host '
          f'memory {result["peak_rss_mib"]:.0f} MiB (sampled after each batch: anonymous '
          f'{result["peak_anon_mib"]:.0f} MiB, mapped files {result["peak_file_mib"]:.0f} MiB)',
          flush=True)


if __name__ == '__main__':
  app.run(main)
