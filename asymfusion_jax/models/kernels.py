"""Which implementation of an op runs: the stock XLA op, or the rewrite that is faster on CPUs.

config.model.kernels (a model's `kernels` attribute) takes one of KERNELS:

- 'xla': the stock lax / Flax ops (a 1x1 convolution as a convolution, max-pooling
  differentiated by JAX into select_and_scatter, nn.ConvTranspose's transposed convolution);
- 'cpu': the rewrites of models.layers, measured to win on XLA:CPU (experiments/PERF_LOG.md
  sections 8 and 9, and layers._max_pool): 1x1 convolutions as matrix products, max-pooling
  with a gradient made of shifted slices, the 4x4 transposed convolution with its gradients
  written out;
- 'auto' (the default): both are traced, and lowering keeps the rewrite for CPU and the stock op
  for every other platform (jax.lax.platform_dependent). The choice follows the platform the
  program is lowered for, not the host: a jit on a CPU runs exactly the 'cpu' program, one on a
  GPU or TPU the 'xla' one, and a multi-platform jax.export artifact holds both and runs the
  right one where it is called.

Both variants compute the same function; their gradients agree to float32 rounding
(tests/test_models.py). Models without a rewritten op (DeepLab / Xception, PatchGAN, the FID
Inception) run the stock ops under every value.
"""

from typing import Callable

import jax

KERNELS = ('auto', 'xla', 'cpu')


def check(kernels: str) -> str:
  """`kernels` if it is one of KERNELS, else a ValueError naming config.model.kernels."""
  if kernels not in KERNELS:
    raise ValueError(f'config.model.kernels={kernels!r}: choose one of {KERNELS}')
  return kernels


def lowered(kernels: str, platform: str) -> str:
  """The variant ('cpu' or 'xla') that `kernels` runs where lowered for `platform` (a
  jax.Device's platform, e.g. 'cpu', 'gpu', 'tpu', or a lowering platform such as 'cuda')."""
  if check(kernels) != 'auto':
    return kernels
  return 'cpu' if platform == 'cpu' else 'xla'


def choose(kernels: str, cpu: Callable, xla: Callable, *args):
  """cpu(*args) or xla(*args), as `kernels` says ('auto': per lowering platform, see above)."""
  if check(kernels) == 'cpu':
    return cpu(*args)
  if kernels == 'xla':
    return xla(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=xla)
