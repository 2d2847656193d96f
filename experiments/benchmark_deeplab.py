"""Times DeepLabv3+ / Xception-65 (full size, random weights): eval forward or training gradient.

  python experiments/benchmark_deeplab.py --modalities=2 --mode=eval --batch_size=1 \
      --height=257 --width=513
  python experiments/benchmark_deeplab.py --modalities=2 --mode=train --batch_size=2 \
      --height=129 --width=129

experiments/benchmark.py times the library's own train step, which needs the Cityscapes training
recipe (optimiser, schedule) that DeepLab's configs do not have yet; until then this script
times the model alone: --mode=eval is the eval-mode forward pass, --mode=train the gradient of
the summed cross-entropy of the M + 1 outputs with BatchNorm statistics updated (no optimiser
update). Variables are drawn from shapes (jax.eval_shape), so nothing but the timed program
is compiled. Prints one line: compile time, median step (min-max), GFLOP per step.
"""

import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
import optax

from asymfusion_jax.models import DeepLab, random_variables

flags.DEFINE_integer('modalities', 2, 'M (fusion on when M >= 2).')
flags.DEFINE_enum('mode', 'eval', ('eval', 'train'), 'What to time.')
flags.DEFINE_integer('batch_size', 1, 'B.')
flags.DEFINE_integer('height', 257, 'Input height.')
flags.DEFINE_integer('width', 513, 'Input width.')
flags.DEFINE_integer('output_stride', 16, '16 or 8.')
flags.DEFINE_integer('steps', 3, 'Timed steps after the first (compiling) call.')
FLAGS = flags.FLAGS
NUM_CLASSES = 19


def main(argv):
  del argv
  m, b, h, w = FLAGS.modalities, FLAGS.batch_size, FLAGS.height, FLAGS.width
  model = DeepLab(num_classes=NUM_CLASSES, num_modalities=m, output_stride=FLAGS.output_stride)
  variables = random_variables(model, (m, b, h, w, 3))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(m, b, h, w, 3)).astype(np.float32)
  if FLAGS.mode == 'eval':
    fn, args = jax.jit(lambda v, x: model.apply(v, x)), (variables, x)
  else:
    label = rng.integers(0, NUM_CLASSES, (b, h, w)).astype(np.int32)

    def step(params, stats, x, label):
      def loss(p):
        out, updates = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                   rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
        ce = optax.softmax_cross_entropy_with_integer_labels(out, label[None])
        return ce.mean(axis=(1, 2, 3)).sum(), updates
      (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
      return value, grads, updates

    fn, args = jax.jit(step), (variables['params'], variables['batch_stats'], x, label)
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  print(f'M={m} {FLAGS.mode} batch {b} {h}x{w} OS {FLAGS.output_stride}: compile '
        f'{compile_s:.1f} s, step {statistics.median(times) * 1e3:.0f} ms '
        f'({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}), '
        f'{float(cost.get("flops", float("nan"))) / 1e9:.1f} GFLOP')


if __name__ == '__main__':
  app.run(main)
