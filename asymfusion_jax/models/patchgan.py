"""The PatchGAN discriminator of the image-translation task (docs/method.md section 11).

One discriminator judges every branch of the generator: its InstanceNorms have one affine
scale and bias shared by all inputs. Module names are those of CEN's PyTorch discriminator
(`conv{k}` blocks holding `conv` and `insnorm`), for weight import.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax.models.layers import InstanceNorm, conv4x4


class DiscriminatorBlock(nn.Module):
  """[LeakyReLU(0.2)], 4x4 conv (padding 1), [InstanceNorm]."""
  features: int
  stride: int
  activation: bool
  norm: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation:
      x = jax.nn.leaky_relu(x, 0.2)
    y = conv4x4(self.features, stride=self.stride, in_features=x.shape[-1], dtype=self.dtype,
                name='conv')(x)
    if self.norm:
      y = InstanceNorm(dtype=self.dtype, name='insnorm')(y)
    return y


class PatchDiscriminator(nn.Module):
  """70x70 PatchGAN: apply(variables, x) with x of shape (N, H, W, 6) (a domain input and an
  RGB image, concatenated on channels) returns float32 logits (N, H/8 - 2, W/8 - 2, 1).

  The outputs are logits, before the sigmoid: the losses apply log-sigmoid, which is the
  sigmoid followed by binary cross-entropy, computed stably.

  Attributes:
    ndf: width of the first block (64 in the paper); then 2x, 4x, 8x, and one output channel.
    dtype: compute dtype; parameters and the logits are float32.
  """
  ndf: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layers = ((self.ndf, 2, False, False), (2 * self.ndf, 2, True, True),
              (4 * self.ndf, 2, True, True), (8 * self.ndf, 1, True, True), (1, 1, True, False))
    for k, (features, stride, activation, norm) in enumerate(layers, start=1):
      x = DiscriminatorBlock(features, stride, activation, norm, self.dtype, name=f'conv{k}')(x)
    return x.astype(jnp.float32)
