"""One convolution's forward and backward, timed in JAX (XLA:CPU) and PyTorch side by side.

  python experiments/conv_microbench.py [--cores=1] [--repeats=5]

The minimal program behind the CPU comparison in experiments/RESULTS.md: for each of the
convolution shapes that carry most of the RefineNet-101 train step (M * B = 4 images of 128x128,
NHWC in JAX, NCHW in PyTorch, float32), it times y = conv(x, w) and the gradients of sum(y * g)
with respect to x and w (what a train step runs per convolution: forward, input gradient,
kernel gradient), and each of the three on its own, in one process per framework, alternating.
--cores pins both processes to that many cores (and gives PyTorch as many threads), so that on a
shared machine both get the same share of it. Best of --repeats per figure.
"""

import json
import multiprocessing as mp
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS

# (name, batch, size, in channels, out channels, kernel, stride): the layers of RefineNet-101 at
# crop 128, batch 2, M = 2 (batch 4) that hold most of its convolution time.
SHAPES = (
    ('dec 3x3 256->256 @32', 4, 32, 256, 256, 3, 1),
    ('l1 3x3 64->64 @32', 4, 32, 64, 64, 3, 1),
    ('l3 3x3 256->256 @8', 4, 8, 256, 256, 3, 1),
    ('l1 1x1 64->256 @32', 4, 32, 64, 256, 1, 1),
    ('l3 1x1 1024->256 @8', 4, 8, 1024, 256, 1, 1),
    ('l3 1x1 256->1024 @8', 4, 8, 256, 1024, 1, 1),
)
PARTS = ('fwd', 'fwd+bwd', 'dx', 'dw')


def _best(fn, repeats):
  fn()  # Warm up (and compile).
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def jax_times(shape, repeats):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  _, n, s, cin, cout, k, stride = shape
  rng = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(rng[0], (n, s, s, cin))
  w = jax.random.normal(rng[1], (k, k, cin, cout)) * 0.05
  out = (s + 2 * (k // 2) - k) // stride + 1
  g = jax.random.normal(rng[2], (n, out, out, cout))

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  fwd = jax.jit(conv)
  both = jax.jit(lambda x, w: jax.value_and_grad(
      lambda x, w: jnp.sum(conv(x, w) * g), argnums=(0, 1))(x, w))
  dx = jax.jit(lambda x, w: jax.vjp(lambda x: conv(x, w), x)[1](g))
  dw = jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](g))
  fns = {'fwd': fwd, 'fwd+bwd': both, 'dx': dx, 'dw': dw}
  return {p: _best(lambda f=fns[p]: jax.block_until_ready(f(x, w)), repeats) for p in PARTS}


def torch_times(shape, repeats):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  _, n, s, cin, cout, k, stride = shape
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(n, cin, s, s, generator=gen)
  w = torch.randn(cout, cin, k, k, generator=gen) * 0.05
  out = (s + 2 * (k // 2) - k) // stride + 1
  g = torch.randn(n, cout, out, out, generator=gen)
  xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()

  def fwd():
    with torch.no_grad():
      F.conv2d(x, w, stride=stride, padding=k // 2)

  def both():
    xr.grad = wr.grad = None
    (F.conv2d(xr, wr, stride=stride, padding=k // 2) * g).sum().backward()

  def dx():
    torch.nn.grad.conv2d_input(x.shape, w, g, stride=stride, padding=k // 2)

  def dw():
    torch.nn.grad.conv2d_weight(x, w.shape, g, stride=stride, padding=k // 2)

  fns = {'fwd': fwd, 'fwd+bwd': both, 'dx': dx, 'dw': dw}
  return {p: _best(fns[p], repeats) for p in PARTS}


def worker(conn, framework, cores, repeats):
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
  if framework == 'torch':
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(cores)
    version = torch.__version__
  else:
    import jax  # pylint: disable=import-outside-toplevel
    version = jax.__version__
  conn.send(version)
  fn = torch_times if framework == 'torch' else jax_times
  while True:
    shape = conn.recv()
    if shape is None:
      return
    conn.send(fn(shape, repeats))


def main(argv):
  del argv
  ctx = mp.get_context('spawn')
  conns, procs = {}, []
  for framework in ('jax', 'torch'):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=worker, args=(child, framework, FLAGS.cores, FLAGS.repeats),
                       daemon=True)
    proc.start()
    conns[framework], procs = parent, procs + [proc]
  versions = {f: c.recv() for f, c in conns.items()}
  load = os.getloadavg()[0]
  print(f'jax {versions["jax"]}, torch {versions["torch"]}, {FLAGS.cores} core(s), '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}, load {load:.2f}')
  print(f'{"shape":24}' + ''.join(f'{p + " jax":>13}{p + " torch":>14}{"ratio":>7}'
                                  for p in PARTS))
  results = []
  for shape in SHAPES:
    row = {}
    for framework, conn in conns.items():
      conn.send(shape)
      row[framework] = conn.recv()
    results.append({'shape': shape[0]} | row)
    print(f'{shape[0]:24}' + ''.join(
        f'{row["jax"][p]:13.2f}{row["torch"][p]:14.2f}{row["jax"][p] / row["torch"][p]:7.2f}'
        for p in PARTS), flush=True)
  for conn in conns.values():
    conn.send(None)
  for proc in procs:
    proc.join(timeout=30)
  print(json.dumps({'versions': versions, 'cores': FLAGS.cores, 'load': load,
                    'xla_flags': os.environ.get('XLA_FLAGS', ''), 'results': results}))


if __name__ == '__main__':
  flags.DEFINE_integer('cores', 1, 'Cores each framework is pinned to (PyTorch threads).')
  flags.DEFINE_integer('repeats', 5, 'Timed calls per figure; the best is reported.')
  app.run(main)
