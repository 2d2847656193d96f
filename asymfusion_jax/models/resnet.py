"""ResNet v1 (torchvision layout) with shared convolutions, per-modality BatchNorm and AsymFusion.

The input is (M, B, H, W, 3). Every convolution kernel is shared by the M modalities; only the
BatchNorm layers are per modality. The last bottleneck of every stage with at least two blocks
exchanges information between modalities through channel shuffle and pixel shift
(docs/method.md section 4), or, for the fusion baselines (docs/method.md section 12), feeds
one aggregate of its M outputs to every branch.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax import fusion
from asymfusion_jax.models import scan_layout
from asymfusion_jax.models.layers import ModalBatchNorm, max_pool, shared_conv

# Bottleneck blocks per stage. 26 and 32 are tiny depths for tests (two blocks per stage, so every
# stage still has a fusion block; 32 has four in its third stage, two of which scan_blocks scans).
STAGE_SIZES = {
    26: (2, 2, 2, 2),
    32: (2, 2, 4, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
EXPANSION = 4
STAGE_NAMES = ('l1', 'l2', 'l3', 'l4')


def stage_sizes(depth: int) -> tuple[int, ...]:
  if depth not in STAGE_SIZES:
    raise ValueError(f'unsupported ResNet depth {depth}; choose one of {sorted(STAGE_SIZES)}')
  return STAGE_SIZES[depth]


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (stride on the 3x3 conv), optionally with AsymFusion (`fuse`) or
  an aggregation of its output (`aggregation`, one of fusion.AGGREGATIONS, or None)."""
  features: int
  stride: int = 1
  downsample: bool = False
  fuse: bool = False
  aggregation: str | None = None
  use_running_average: bool = True
  dtype: Any = jnp.float32
  kernels: str = 'auto'  # models.kernels.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def bn(name):
      return ModalBatchNorm(self.use_running_average, dtype=self.dtype, name=name)

    conv = functools.partial(shared_conv, dtype=self.dtype, kernels=self.kernels)

    h = jax.nn.relu(bn('bn1')(conv(self.features, 1, name='conv1')(x)))
    if self.fuse:
      shifted = fusion.pixel_shift(h)
      h = fusion.channel_shuffle(h)
    h = conv(self.features, 3, stride=self.stride, name='conv2')(h)
    h = jax.nn.relu(bn('bn2')(h))
    if self.fuse:
      # Modality m receives the shifted features of its partner (m + 1) mod M.
      h = h + jnp.roll(shifted, -1, axis=0)
      h = fusion.channel_shuffle(h)
    h = bn('bn3')(conv(self.features * EXPANSION, 1, name='conv3')(h))

    shortcut = x
    if self.downsample:
      shortcut = conv(self.features * EXPANSION, 1, stride=self.stride,
                      name='downsample_conv')(x)
      shortcut = bn('downsample_bn')(shortcut)
    out = jax.nn.relu(h + shortcut)
    if self.aggregation is not None:
      out = fusion.Aggregation(self.aggregation, dtype=self.dtype, name='aggregate')(out)
    return out


class ResNet(nn.Module):
  """Multimodal ResNet backbone returning {'stem', 'l1', 'l2', 'l3', 'l4'} features.

  Attributes:
    depth: 26 (tiny, for tests), 50, 101 or 152.
    fusion: a value of config.model.fusion (asymfusion_jax.fusion.method). 'asym':
      AsymFusion in the last block of every stage. 'concat', 'average', 'attention': that
      aggregation of the last block's output of every stage instead, so the stage outputs
      that feed the decoder are aggregated too (ours, docs/method.md section 12). 'none' and
      'late' leave shared convolutions with per-modality BatchNorm only. Fusion
      needs at least two modalities; M = 1 runs without it.
    width: channels of the stem and of the first stage's bottleneck (64 in the paper).
    remat: recompute every bottleneck in the backward pass instead of keeping its
      intermediate activations (only block inputs are kept): less memory, one more forward
      pass of the backbone. Outputs are unchanged; gradients agree to float32 rounding (XLA
      fuses and sums the recomputed graph in another order: 5e-6 relative, tiny model).
    kernels: models.kernels.KERNELS: the 1x1 convolutions and the stem's max-pooling as the
      CPU rewrites ('cpu'), the stock ops ('xla'), or per lowering platform ('auto').
    scan_blocks: run every stage's blocks after the first (but a last one that fuses) as one
      nn.scan (models.scan_layout, which also gives the variables' layout): the same outputs
      from a smaller program (on XLA:CPU it barely compiles faster and steps slower).
  """
  depth: int = 101
  fusion: str = 'asym'
  width: int = 64
  dtype: Any = jnp.float32
  remat: bool = False
  kernels: str = 'auto'
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool = True) -> dict[str, jax.Array]:
    if x.ndim != 5:
      raise ValueError(f'ResNet expects (M, B, H, W, C) input, got shape {x.shape}')
    num_modalities = x.shape[0]
    method = fusion.method(self.fusion) if num_modalities >= 2 else 'none'
    aggregation = method if method in fusion.AGGREGATIONS else None
    x = x.astype(self.dtype)
    x = shared_conv(self.width, 7, stride=2, dtype=self.dtype, name='conv1')(x)
    x = ModalBatchNorm(use_running_average, dtype=self.dtype, name='bn1')(x)
    x = jax.nn.relu(x)
    features = {'stem': x}
    x = max_pool(x, 3, 2, self.kernels)
    block = nn.remat(Bottleneck) if self.remat else Bottleneck
    for s, num_blocks in enumerate(stage_sizes(self.depth)):
      # Blocks 1.. are alike, but for the last one where it fuses (scan_layout.runs).
      fuses = num_blocks >= 2 and (method == 'asym' or aggregation is not None)
      for run in scan_layout.runs(num_blocks, 1, num_blocks - 1 - fuses, self.scan_blocks):
        i = run.start
        fusion_point = num_blocks >= 2 and i == num_blocks - 1
        x = scan_layout.apply(block(
            features=self.width * 2**s,
            stride=2 if (s > 0 and i == 0) else 1,
            downsample=(i == 0),
            fuse=fusion_point and method == 'asym',
            aggregation=aggregation if fusion_point else None,
            use_running_average=use_running_average,
            dtype=self.dtype,
            kernels=self.kernels,
            name=scan_layout.name(f'layer{s + 1}_', run)), x, run)
      features[STAGE_NAMES[s]] = x
    return features
