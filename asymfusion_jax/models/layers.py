"""Building blocks shared by the encoder and decoder: shared convolutions, per-modality BatchNorm."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# torchvision's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
resnet_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch's default Conv2d init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def shared_conv(features: int, kernel: int, *, stride: int = 1, use_bias: bool = False,
                dtype: Dtype = jnp.float32, kernel_init=resnet_kernel_init, name: str) -> nn.Conv:
  """A convolution whose one kernel is applied to all M * B images of an (M, B, H, W, C) input.

  Flax flattens the leading (M, B) axes, so all modalities run as one batched convolution.
  Padding is explicit and symmetric, as in PyTorch (kernel // 2 on every side).
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """Max-pooling with PyTorch's -inf padding of window // 2 on every side, any leading axes."""
  lead = x.shape[:-3]
  flat = x.reshape((-1,) + x.shape[-3:])
  pad = window // 2
  out = nn.max_pool(flat, (window, window), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)))
  return out.reshape(lead + out.shape[1:])


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

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(1, x.ndim - 1))
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axes)
      var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        count = x.size // (num_modalities * features)
        unbiased = var * (count / max(count - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased

    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    return x * mul[expand].astype(self.dtype) + add[expand].astype(self.dtype)

