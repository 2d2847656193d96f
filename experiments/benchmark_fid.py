"""Images per second of FID feature extraction (asymfusion_jax.fid.FeatureExtractor).

  python experiments/benchmark_fid.py [--weights=pt_inception-2015-12-05-6726825d.pth or DIR] \
      [--batch_size=8] [--image_size=256] [--dtype=float32|bfloat16] [--steps=10 --warmup=2]

What is timed is one call of the extractor on a batch of random uint8 images, as the FID command
line makes them: host-to-device transfer, the resize to 299x299 and scaling, the Inception
network and the features' return to the host, all sharded over the local devices. Timing does
not depend on the weights, so without --weights they are random (nothing to download). The
float64 host statistics of each batch (FeatureStats.update, the running sums behind FID) are
timed on their own: `stats_ms_per_batch`.

Reported: the first call (compilation included, `first_call_s`), the median and range of the
timed calls, images per second, the process's CPU time per call (steadier than wall time on a
shared CPU); the last line is one JSON object, so scripts read `tail -n 1`.
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import fid  # pylint: disable=g-import-not-at-top
from asymfusion_jax.models import inception  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS


def random_variables(seed: int = 0) -> dict:
  """InceptionV3 variables with random values (NumPy, quicker than model.init): the timing of a
  network does not depend on its weights."""
  rng = np.random.default_rng(seed)
  abstract = inception.abstract_variables(logits=False)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name or 'scale' in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    scale = 0.1 if leaf.ndim < 4 else (2.0 / np.prod(leaf.shape[:3])) ** 0.5
    return (rng.standard_normal(leaf.shape) * scale).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def time_extraction(extractor: fid.FeatureExtractor, images: np.ndarray, steps: int,
                    warmup: int) -> dict:
  """Times `steps` calls of extractor(images) after the first call and `warmup` more."""
  start = time.perf_counter()
  features = extractor(images)
  first_call_s = time.perf_counter() - start
  for _ in range(warmup):
    extractor(images)
  wall, cpu = [], []
  for _ in range(steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    extractor(images)
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  stats = fid.FeatureStats()
  stats.update(features)  # The first update only sets the shift; time the next ones.
  stats_s = []
  for _ in range(max(steps, 1)):
    start = time.perf_counter()
    stats.update(features)
    stats_s.append(time.perf_counter() - start)
  step = statistics.median(wall)
  return {
      'batch_size': len(images), 'image_size': list(images.shape[1:3]),
      'first_call_s': first_call_s, 'step_ms': 1e3 * step, 'step_ms_min': 1e3 * min(wall),
      'step_ms_max': 1e3 * max(wall), 'images_per_s': len(images) / step,
      'process_cpu_s_per_step': statistics.median(cpu),
      'stats_ms_per_batch': 1e3 * statistics.median(stats_s),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  variables = fid.load_weights(FLAGS.weights) if FLAGS.weights else random_variables()
  extractor = fid.FeatureExtractor(variables, batch_size=FLAGS.batch_size,
                                   dtype=jnp.dtype(FLAGS.dtype))
  rng = np.random.default_rng(0)
  size = FLAGS.image_size
  images = rng.integers(0, 256, (FLAGS.batch_size, size, size, 3), dtype=np.uint8)
  result = time_extraction(extractor, images, FLAGS.steps, FLAGS.warmup)
  result.update(dtype=FLAGS.dtype, devices=jax.device_count(),
                device_kind=jax.devices()[0].device_kind, weights=FLAGS.weights or 'random')
  print(f'FID Inception features: batch {FLAGS.batch_size} of {size}x{size} uint8, '
        f'{FLAGS.dtype}, {result["devices"]} x {result["device_kind"]}')
  print(f'  first call (compiles): {result["first_call_s"]:.1f} s')
  print(f'  step: {result["step_ms"]:.1f} ms (min {result["step_ms_min"]:.1f}, max '
        f'{result["step_ms_max"]:.1f}), CPU {result["process_cpu_s_per_step"]:.2f} s')
  print(f'  images/s: {result["images_per_s"]:.2f}')
  print(f'  host float64 statistics: {result["stats_ms_per_batch"]:.1f} ms per batch')
  print(json.dumps(result))


if __name__ == '__main__':
  flags.DEFINE_string('weights', None, 'FID Inception .pth or converted directory (timing does '
                      'not depend on it; random weights by default).')
  flags.DEFINE_integer('batch_size', 8, 'Images per call.')
  flags.DEFINE_integer('image_size', 256, 'Side of the square input images (resized to 299).')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
  flags.DEFINE_integer('steps', 10, 'Timed calls.')
  flags.DEFINE_integer('warmup', 2, 'Untimed calls after the first.')
  app.run(main)
