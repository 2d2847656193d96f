"""Building blocks shared by the models: shared convolutions, per-modality BatchNorm and
InstanceNorm."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax.models import kernels as kernels_lib

Dtype = Any

# torchvision's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
resnet_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch's default Conv2d init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, kernels: str = 'auto', **kwargs) -> jax.Array:
  """lax.conv_general_dilated, with unpadded 1x1 NHWC convolutions run as one matrix product
  where `kernels` (models.kernels) chooses the CPU rewrite.

  A 1x1 convolution is x (N*H*W, C) @ w (C, O) after the stride's subsampling. Written as a
  dot_general, its two gradients are matrix products too (g @ w^T, x^T @ g), which XLA:CPU runs
  on the operands as they lie; as a convolution, XLA:CPU computes the kernel gradient as a
  convolution with the channels as batch, so it first transposes the activations and the
  gradient batch-last, and it swaps the kernel's axes for the input gradient. That made a 1x1
  convolution's forward + backward 1.6 to 3.2 times slower than the matrix products
  (experiments/PERF_LOG.md, section 8); ResNet-101 has 70 of them. Every other convolution, and
  any call with dilation, groups or padding, goes to lax.conv_general_dilated unchanged.
  """
  trivial = (lambda d: d is None or all(v == 1 for v in d))
  nhwc = (dimension_numbers is not None and lhs.ndim == 4
          and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
          and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
          and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  unpadded = (padding == 'VALID' or (not isinstance(padding, str)
                                     and all(tuple(p) == (0, 0) for p in padding)))
  def stock(lhs, rhs):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)

  def matmul(lhs, rhs):
    sh, sw = window_strides
    if (sh, sw) != (1, 1):
      lhs = lhs[:, ::sh, ::sw, :]
    y = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs[0, 0],
                            (((1,), (0,)), ((), ())), precision=precision)
    return y.reshape(lhs.shape[:-1] + (rhs.shape[-1],))

  if (nhwc and rhs.shape[:2] == (1, 1) and unpadded and trivial(lhs_dilation)
      and trivial(rhs_dilation) and feature_group_count == 1 and not kwargs):
    return kernels_lib.choose(kernels, matmul, stock, lhs, rhs)
  return stock(lhs, rhs)


def shared_conv(features: int, kernel: int, *, stride: int = 1, use_bias: bool = False,
                dtype: Dtype = jnp.float32, kernel_init=resnet_kernel_init, name: str,
                kernels: str = 'auto') -> nn.Conv:
  """A convolution whose one kernel is applied to all M * B images of an (M, B, H, W, C) input.

  Flax flattens the leading (M, B) axes, so all modalities run as one batched convolution.
  Padding is explicit and symmetric, as in PyTorch (kernel // 2 on every side). 1x1 kernels run
  as matrix products where `kernels` chooses the CPU rewrite (conv_general_dilated above); the
  parameters are nn.Conv's either way.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=kernel_init, name=name,
                 conv_general_dilated=functools.partial(conv_general_dilated, kernels=kernels))


# pix2pix's init of every (transposed) convolution kernel: N(0, 0.02).
pix2pix_kernel_init = nn.initializers.normal(0.02)


def torch_default_bias_init(fan_in: int):
  """PyTorch's default bias init of a layer with `fan_in` inputs: U(-1/sqrt(fan_in), ...).

  PyTorch derives fan_in from the weight's dimension 1 times the kernel area: in_channels * k * k
  for a Conv2d, but out_channels * k * k for a ConvTranspose2d, whose weight is (in, out, k, k).
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv4x4(features: int, *, stride: int, in_features: int, dtype: Dtype = jnp.float32,
            name: str) -> nn.Conv:
  """pix2pix's 4x4 convolution with bias, padding 1 on every side (PyTorch's), shared by all
  leading axes (modalities and batch): kernel N(0, 0.02), bias as PyTorch's default."""
  return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=pix2pix_kernel_init,
                 bias_init=torch_default_bias_init(in_features * 16), name=name)


def _conv4x4_stride2(u: jax.Array, kernel: jax.Array) -> jax.Array:
  """The 4x4, stride-2, padding-1 NHWC convolution whose gradient a transposed conv is."""
  return jax.lax.conv_general_dilated(u, kernel, (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def conv_transpose4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """PyTorch's ConvTranspose2d(k=4, s=2, p=1) of (N, H, W, C) x: (N, 2H, 2W, O).

  `kernel` is (4, 4, O, C), the kernel of the convolution _conv4x4_stride2 (O -> C channels)
  whose input gradient this is, as nn.ConvTranspose(transpose_kernel=True) stores it. The
  forward is that input gradient (what nn.ConvTranspose computes). The backward is written out
  because JAX differentiates the input gradient into a kernel gradient of a convolution over
  the stride-dilated input, which XLA:CPU runs through its generic convolution loop, not
  YNNPACK: 20 to 30 s for one decoder block of the paper's U-Net, 33 times the same gradients
  written as below (experiments/PERF_LOG.md, section 9). With L = <y, g>, y = conv^T(x):
  L = <x, conv(g)>, so dL/dx = conv(g, kernel), a plain strided convolution, and dL/dkernel is
  the kernel gradient of conv(g, .) at cotangent x, the one every strided convolution has.
  """
  u = jax.ShapeDtypeStruct(
      (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], kernel.shape[2]), x.dtype)
  return jax.linear_transpose(lambda u: _conv4x4_stride2(u, kernel), u)(x)[0]


def _conv_transpose4x4_fwd(x, kernel):
  return conv_transpose4x4(x, kernel), (x, kernel)


def _conv_transpose4x4_bwd(residuals, g):
  x, kernel = residuals
  dx = _conv4x4_stride2(g, kernel)
  (dkernel,) = jax.vjp(lambda k: _conv4x4_stride2(g, k), kernel)[1](x)
  return dx, dkernel


conv_transpose4x4.defvjp(_conv_transpose4x4_fwd, _conv_transpose4x4_bwd)


def _stock_conv_transpose4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv_transpose4x4 as nn.ConvTranspose computes it, gradients by JAX (the 'xla' kernel)."""
  return jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)),
                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'), transpose_kernel=True)


class ConvTranspose4x4(nn.Module):
  """nn.ConvTranspose((4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), transpose_kernel=True)
  with the same parameters ('kernel' (4, 4, features, in), 'bias' (features,)) and outputs,
  over any leading axes, computed by conv_transpose4x4 (whose gradients XLA:CPU runs fast) or
  by nn.ConvTranspose's lax.conv_transpose, as `kernels` (models.kernels) chooses."""
  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = pix2pix_kernel_init
  bias_init: Any = nn.initializers.zeros
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (4, 4, self.features, x.shape[-1]),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:]).astype(self.dtype)
    y = kernels_lib.choose(self.kernels, conv_transpose4x4, _stock_conv_transpose4x4, flat,
                           kernel.astype(self.dtype))
    y = y + bias.astype(self.dtype)
    return y.reshape(lead + y.shape[1:])


def max_pool(x: jax.Array, window: int, stride: int, kernels: str = 'auto') -> jax.Array:
  """Max-pooling with PyTorch's -inf padding of window // 2 on every side, any leading axes.

  The gradient is _max_pool's or JAX's own (select_and_scatter), as `kernels` (models.kernels)
  chooses; the values and gradients are the same.
  """
  lead = x.shape[:-3]
  out = kernels_lib.choose(kernels, lambda x: _max_pool(x, window, stride),
                           lambda x: _stock_max_pool(x, window, stride),
                           x.reshape((-1,) + x.shape[-3:]))
  return out.reshape(lead + out.shape[1:])


def _stock_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """(N, H, W, C) max-pooling with PyTorch's padding, differentiated by JAX."""
  pad = window // 2
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


def _window_taps(window: int) -> list[tuple[int, int]]:
  """Window offsets (a, b) in row-major order, the order PyTorch scans a pooling window in."""
  return [(a, b) for a in range(window) for b in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """(N, H, W, C) max-pooling whose gradient is computed with shifted slices.

  JAX differentiates reduce_window max into select_and_scatter, which XLA:CPU rewrites into a
  variadic reduce_window that carries four index arrays and then scatters, and which GPUs run with
  atomics. That took 11% of the CPU time of a RefineNet-101 train step (the 5x5 stride-1 pools
  of the chained residual pooling). The gradient below selects the same element of every window
  (the first maximum in row-major order, as PyTorch and select_and_scatter choose) and adds
  the contributions of overlapping windows in the order the scatter adds them, so gradients are
  unchanged; it is two fusible elementwise passes instead (5x faster on the CPU for the 5x5
  pools, the same bits).
  """
  return _stock_max_pool(x, window, stride)


def _max_pool_fwd(x, window, stride):
  out = _max_pool(x, window, stride)
  return out, (x, out)


def _max_pool_bwd(window, stride, residuals, g):
  x, out = residuals
  n, height, width, channels = x.shape
  out_h, out_w = out.shape[1:3]
  pad = window // 2
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  taps = _window_taps(window)
  # Index of the first window element equal to the maximum; len(taps) if none (NaN windows).
  first = jnp.full(out.shape, len(taps), jnp.int8 if len(taps) < 127 else jnp.int32)
  for k in reversed(range(len(taps))):
    a, b = taps[k]
    value = jax.lax.slice(padded, (0, a, b, 0),
                          (n, a + (out_h - 1) * stride + 1, b + (out_w - 1) * stride + 1,
                           channels), (1, stride, stride, 1))
    first = jnp.where(value == out, jnp.asarray(k, first.dtype), first)
  # Output (i, j) sends its gradient to input (i * stride + a - pad, j * stride + b - pad).
  # Spread `first` and g onto the input grid (output (i, j) at (i * stride + pad, ...), the
  # rest filled with "no tap" and 0) so that every tap is one static slice.
  def spread(v, fill):
    return jax.lax.pad(v, jnp.asarray(fill, v.dtype), (
        (0, 0, 0),
        (pad, height + pad - (out_h - 1) * stride - 1, stride - 1),
        (pad, width + pad - (out_w - 1) * stride - 1, stride - 1),
        (0, 0, 0)))

  first, g = spread(first, len(taps)), spread(g, 0)
  zero = jnp.zeros((), g.dtype)
  grad = jnp.zeros_like(x)
  # Descending k visits, for every input pixel, the windows that chose it in ascending row-major
  # order of the window, the order in which the scatter-add of select_and_scatter sums them.
  for k in reversed(range(len(taps))):
    a, b = taps[k]
    start = (0, 2 * pad - a, 2 * pad - b, 0)
    limit = (n, 2 * pad - a + height, 2 * pad - b + width, channels)
    grad = grad + jnp.where(jax.lax.slice(first, start, limit) == k,
                            jax.lax.slice(g, start, limit), zero)
  return (grad,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class ModalBatchNorm(nn.Module):
  """BatchNorm with its own scale, bias and running statistics for every modality.

  Input (M, B, H, W, C). Modality m is normalised with row m of the (M, C) parameters and
  statistics, over its own (B, H, W) only. Training mode follows PyTorch: normalise with the
  biased batch variance, update the running variance with the unbiased one, momentum 0.1.
  Statistics are computed in float32 whatever the compute dtype.
  """
  use_running_average: bool
  momentum: float = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch.
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    num_modalities, features = x.shape[0], x.shape[-1]
    shape = (num_modalities, features)
    scale = self.param('scale', nn.initializers.ones, shape, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, shape, jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, shape, jnp.float32)

    # Statistics and the affine map are computed in float32 from one upcast of x, and only the
    # result is cast to the compute dtype. With the affine map in bfloat16, its gradient summed
    # g * x over (B, H, W) in bfloat16 for d(scale), and with two upcasts the gradients of the
    # normalisation and of the statistics, which nearly cancel, met in bfloat16: backbone
    # gradients came out more than 100% off (tests/test_bf16.py). In float32 compute the casts
    # vanish and nothing changes; on accelerators they fuse with the neighbouring elementwise
    # ops, so they add no memory traffic.
    x32 = x.astype(jnp.float32)
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(1, x.ndim - 1))
      mean = jnp.mean(x32, axes)
      # Two passes, as PyTorch: E[(x - mean)^2]. The one-pass E[x^2] - E[x]^2 cancels
      # catastrophically in float32 when |mean| >> std (at mean/std = 300 it was 2e-2 off).
      var = jnp.mean(jnp.square(x32 - mean[expand]), axes)
      if not self.is_initializing():
        count = x.size // (num_modalities * features)
        unbiased = var * (count / max(count - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased

    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    y = x32 * mul[expand] + add[expand]
    return y.astype(self.dtype)



def _instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                   dtype: Dtype) -> jax.Array:
  """Normalises every image of x (..., H, W, C) over its own (H, W), then scale * x + bias.

  scale and bias broadcast against x with H and W removed, i.e. have shape (..., C) up to
  leading singleton axes. As in ModalBatchNorm, the statistics and the affine map are float32
  from one upcast of x (the variance in two passes, biased, as PyTorch's InstanceNorm2d), and
  only the result is cast to the compute dtype.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(-3, -2), keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=(-3, -2), keepdims=True)
  scale = jnp.expand_dims(scale, (-3, -2))
  bias = jnp.expand_dims(bias, (-3, -2))
  mul = scale * jax.lax.rsqrt(var + epsilon)
  return (x32 * mul + (bias - mean * mul)).astype(dtype)


class ModalInstanceNorm(nn.Module):
  """InstanceNorm with its own affine scale and bias for every modality.

  Input (M, B, H, W, C); scale and bias of shape (M, C) in `params` (ones and zeros at init).
  Every image is normalised with its own statistics over (H, W), in training and evaluation
  alike, so there is no state: PyTorch's running statistics (track_running_stats) would only be
  used in eval mode, which the image-translation model never relies on (docs/method.md
  section 11).
  """
  num_modalities: int
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 5 or x.shape[0] != self.num_modalities:
      raise ValueError(f'ModalInstanceNorm(num_modalities={self.num_modalities}) expects input '
                       f'of shape (M={self.num_modalities}, B, H, W, C), got {x.shape}')
    shape = (self.num_modalities, x.shape[-1])
    scale = self.param('scale', nn.initializers.ones, shape, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, shape, jnp.float32)
    return _instance_norm(x, scale[:, None], bias[:, None], self.epsilon, self.dtype)


class InstanceNorm(nn.Module):
  """InstanceNorm with one affine scale and bias of shape (C,) for all images (..., H, W, C).

  The discriminator's normalisation: it judges every modality's branch with the same weights.
  """
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (x.shape[-1],)
    scale = self.param('scale', nn.initializers.ones, shape, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, shape, jnp.float32)
    return _instance_norm(x, scale, bias, self.epsilon, self.dtype)
