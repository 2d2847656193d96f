"""The multimodal pix2pix U-Net generator of the image-translation task (docs/method.md
section 11).

Every convolution is shared by the M input domains, every InstanceNorm has its own affine
parameters per domain, and AsymFusion exchanges features between the domains after the
InstanceNorm of the configured encoder blocks. The module names are those of CEN's PyTorch
generator (`conv{k}` / `deconv{k}` blocks holding `conv` / `insnorm_conv` and `deconv` /
`insnorm_deconv`), so that weight import (asymfusion_jax.convert) is a renaming.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax import fusion as fusion_ops
from asymfusion_jax.models import kernels as kernels_lib
from asymfusion_jax.models.layers import ConvTranspose4x4, ModalInstanceNorm, conv4x4
from asymfusion_jax.models.layers import pix2pix_kernel_init
from asymfusion_jax.models.layers import torch_default_bias_init

# The decoder blocks nearest the bottleneck that pix2pix gives dropout: num_downs - 5 of them
# (blocks 1-3 of the 8-level U-Net).
_LEVELS_WITHOUT_DROPOUT = 5


def encoder_channels(ngf: int, block: int) -> int:
  """Output channels of encoder block `block` (1-based): ngf * min(2**(block - 1), 8)."""
  return ngf * min(2 ** (block - 1), 8)


def fuse(y: jax.Array) -> jax.Array:
  """AsymFusion after an InstanceNorm: channel_shuffle(y) + modality (m + 1)'s pixel_shift."""
  return fusion_ops.channel_shuffle(y) + jnp.roll(fusion_ops.pixel_shift(y), -1, axis=0)


class EncoderBlock(nn.Module):
  """[LeakyReLU(0.2)], 4x4 stride-2 conv, [per-modality InstanceNorm, [fusion]].

  fusion: a config.model.fusion value (fusion_ops.method): 'asym' exchanges features by
  shuffle and shift, an aggregation of fusion_ops.AGGREGATIONS feeds its aggregate to every
  branch, and 'none' and 'late' do nothing here.
  """
  features: int
  num_modalities: int
  activation: bool
  norm: bool
  fusion: str = 'none'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation:
      x = jax.nn.leaky_relu(x, 0.2)
    y = conv4x4(self.features, stride=2, in_features=x.shape[-1], dtype=self.dtype,
                name='conv')(x)
    if self.norm:
      y = ModalInstanceNorm(self.num_modalities, dtype=self.dtype, name='insnorm_conv')(y)
    method = fusion_ops.method(self.fusion)
    if method == 'asym':
      y = fuse(y)
    elif method in fusion_ops.AGGREGATIONS:
      y = fusion_ops.Aggregation(method, dtype=self.dtype, name='aggregate')(y)
    return y


class DecoderBlock(nn.Module):
  """ReLU, 4x4 stride-2 transposed conv, [per-modality InstanceNorm], [dropout]."""
  features: int
  num_modalities: int
  norm: bool
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = 'auto'  # models.kernels: the transposed convolution's.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # PyTorch's ConvTranspose2d(k=4, s=2, p=1) is the gradient of the matching convolution:
    # transpose_kernel=True flips the kernel spatially and swaps its feature axes (so the Flax
    # kernel is the PyTorch weight (in, out, kh, kw) transposed to (kh, kw, out, in)), and the
    # padding of the stride-dilated input is k - 1 - p = 2 on every side (output = 2 x input).
    # layers.ConvTranspose4x4 is nn.ConvTranspose with these settings, with the gradients
    # written out where `kernels` chooses the CPU rewrite (XLA:CPU ran nn.ConvTranspose's
    # kernel gradient 33x slower).
    y = ConvTranspose4x4(
        self.features, dtype=self.dtype, kernel_init=pix2pix_kernel_init,
        bias_init=torch_default_bias_init(self.features * 16), kernels=self.kernels,
        name='deconv')(jax.nn.relu(x))
    if self.norm:
      y = ModalInstanceNorm(self.num_modalities, dtype=self.dtype, name='insnorm_deconv')(y)
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return y


class UNetGenerator(nn.Module):
  """pix2pix U-Net for M input domains with AsymFusion and a learned ensemble.

  apply(variables, x, train=...) with x of shape (M, B, H, W, 3) in [-1, 1] returns float32
  images of shape (M + 1, B, H, W, 3) in [-1, 1]: the M branch outputs (tanh), then their
  ensemble sum_m softmax(alpha)_m * stop_gradient(out_m), or with fusion 'late' their plain
  mean (no alpha; the gradient flows through it into the branches). Training needs
  rngs={'dropout': key}. The variables hold `params` only: the InstanceNorms use every
  image's own statistics, in training and evaluation alike.

  Attributes:
    num_modalities: M; the input's first axis must equal it.
    ngf: width of the first encoder block (64 in the paper); block k has
      ngf * min(2**(k-1), 8) channels.
    num_downs: number of stride-2 levels (8 for 256x256 inputs); H and W must be divisible by
      2**num_downs.
    fusion: a value of config.model.fusion (asymfusion_jax.fusion.method): 'asym',
      AsymFusion after the InstanceNorm of the encoder blocks `fusion_blocks`; 'concat',
      'average' or 'attention', that aggregation there instead (docs/method.md section 12);
      'none', no fusion; 'late' (MMF), no fusion in the encoder and the plain mean
      of the branch outputs as the ensemble. Fusion inside the network needs M >= 2 to have an
      effect (M = 1 runs without it).
    fusion_blocks: 1-based encoder blocks with fusion inside the network; only blocks
      2..num_downs-1 have an InstanceNorm, so only they may be named.
    dropout_rate: dropout of the num_downs - 5 decoder blocks nearest the bottleneck (training
      only).
    dtype: compute dtype; parameters, normalisation statistics and the outputs are float32.
    kernels: models.kernels.KERNELS (config.model.kernels): the decoder's transposed
      convolutions with the CPU rewrite's gradients ('cpu'), JAX's ('xla'), or the rewrite only
      where the program is lowered for a CPU ('auto').
  """
  num_modalities: int
  ngf: int = 64
  num_downs: int = 8
  fusion: str = 'asym'
  fusion_blocks: Sequence[int] = (2, 3, 4, 5, 6, 7)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  # How to run it on an image of any size (asymfusion_jax.predict): padded to the multiple of
  # 2**num_downs it needs; its outputs are at the input size.
  output_resize = None

  @property
  def input_multiple(self) -> int:
    return 2 ** self.num_downs

  def _check(self, x: jax.Array) -> None:
    kernels_lib.check(self.kernels)
    if self.num_downs < 2:
      raise ValueError(f'UNetGenerator needs num_downs >= 2, got {self.num_downs}')
    if x.ndim != 5 or x.shape[0] != self.num_modalities:
      raise ValueError(f'UNetGenerator(num_modalities={self.num_modalities}) expects input of '
                       f'shape (M={self.num_modalities}, B, H, W, C), got {x.shape}')
    factor = 2 ** self.num_downs
    if x.shape[2] % factor or x.shape[3] % factor:
      raise ValueError(f'UNetGenerator(num_downs={self.num_downs}) needs H and W divisible by '
                       f'2**num_downs = {factor}, got H x W = {x.shape[2]} x {x.shape[3]}')
    if fusion_ops.method(self.fusion) not in ('none', 'late'):
      bad = [b for b in self.fusion_blocks if not 2 <= b <= self.num_downs - 1]
      if bad:
        raise ValueError(f'fusion_blocks {tuple(self.fusion_blocks)} name blocks {bad} without '
                         f'an InstanceNorm; with num_downs={self.num_downs} choose from '
                         f'2..{self.num_downs - 1}')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    self._check(x)
    n, m = self.num_downs, self.num_modalities
    method = fusion_ops.method(self.fusion)
    fused = set(self.fusion_blocks) if m >= 2 else set()
    skips = []
    h = x
    for k in range(1, n + 1):
      h = EncoderBlock(encoder_channels(self.ngf, k), m, activation=k > 1, norm=1 < k < n,
                       fusion=method if k in fused else 'none', dtype=self.dtype, name=f'conv{k}')(h)
      skips.append(h)
    for k in range(1, n + 1):
      features = encoder_channels(self.ngf, n - k) if k < n else 3
      dropout = self.dropout_rate if k <= n - _LEVELS_WITHOUT_DROPOUT else 0.0
      h = DecoderBlock(features, m, norm=k < n, dropout_rate=dropout, dtype=self.dtype,
                       kernels=self.kernels, name=f'deconv{k}')(h, train)
      if k < n:  # Channels [decoder, encoder block n - k].
        h = jnp.concatenate([h, skips[n - k - 1]], axis=-1)
    out = jnp.tanh(h.astype(jnp.float32))
    if method == 'late':
      ensemble = jnp.mean(out, axis=0)
    else:
      alpha = self.param('alpha', nn.initializers.ones, (m,), jnp.float32)
      ensemble = jnp.einsum('m,m...->...', jax.nn.softmax(alpha), jax.lax.stop_gradient(out))
    return jnp.concatenate([out, ensemble[None]], axis=0)
