"""TF-DeepLab's Xception-65 with shared convolutions, per-modality BatchNorm and AsymFusion.

docs/method.md section 13. The input is (M, B, H, W, 3); every convolution kernel is shared by
the M modalities and every BatchNorm has its own (M, C) scale, offset and statistics. The layer
structure, padding and atrous rates are those of tensorflow/models research/deeplab
core/xception.py, so that its checkpoints load by name (asymfusion_jax.convert.deeplab_from_tf):
Flax module names are the TF scopes with '/' written as '_' where a level has no module of its
own (`entry_flow_block1_unit_1` is `entry_flow/block1/unit_1/xception_module`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax import fusion
from asymfusion_jax.models import scan_layout
from asymfusion_jax.models.layers import ModalBatchNorm

# TF-DeepLab's batch_norm_decay 0.9997 as Flax momentum, and the epsilons of the backbone and head.
BN_MOMENTUM = 0.9997
BACKBONE_EPSILON = 1e-3
HEAD_EPSILON = 1e-5
# xception_65's default initializer: truncated normal, stddev 0.09.
backbone_kernel_init = nn.initializers.truncated_normal(0.09)
OUTPUT_STRIDES = (8, 16)
MIDDLE_FLOW_UNITS = 16


def same_padding(kernel: int, rate: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
  """TF-DeepLab's explicit padding of a kernel at an atrous rate, on both spatial axes.

  pad_beg = (k_eff - 1) // 2 and pad_end the rest, k_eff = k + (k - 1)(rate - 1). This is its
  "fixed padding" for strided convolutions and equals TF's 'SAME' at stride 1, so one rule
  covers every convolution of the model (TF's 'SAME' at stride 2 would depend on the input size;
  TF-DeepLab never uses it with kernels larger than 1).
  """
  total = kernel + (kernel - 1) * (rate - 1) - 1
  return ((total // 2, total - total // 2),) * 2


class ConvBN(nn.Module):
  """A shared convolution ('conv') and a per-modality BatchNorm ('BatchNorm'), then ReLU or not.

  depthwise=True makes it a depthwise convolution (one 3x3 filter per channel, depth multiplier
  1): its kernel is (k, k, 1, C) where TF stores (k, k, C, 1).
  """
  features: int
  kernel: int = 1
  stride: int = 1
  rate: int = 1
  depthwise: bool = False
  relu: bool = False
  epsilon: float = BACKBONE_EPSILON
  use_running_average: bool = True
  kernel_init: Any = backbone_kernel_init
  dtype: Any = jnp.float32
  momentum: float = BN_MOMENTUM  # Of the BatchNorm running statistics (Flax convention).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=same_padding(self.kernel, self.rate),
                kernel_dilation=(self.rate, self.rate),
                feature_group_count=x.shape[-1] if self.depthwise else 1, use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=self.kernel_init,
                name='conv')(x)
    x = ModalBatchNorm(self.use_running_average, momentum=self.momentum, epsilon=self.epsilon,
                       dtype=self.dtype, name='BatchNorm')(x)
    return jax.nn.relu(x) if self.relu else x


class SeparableConv(nn.Module):
  """TF-DeepLab's split separable conv: 3x3 depthwise + BN, then 1x1 pointwise + BN.

  relu puts a ReLU after each BN (exit_flow block2 and the head); the other Xception units put
  one before the whole separable conv instead (XceptionUnit).
  """
  features: int
  stride: int = 1
  rate: int = 1
  relu: bool = False
  epsilon: float = BACKBONE_EPSILON
  use_running_average: bool = True
  depthwise_init: Any = backbone_kernel_init
  pointwise_init: Any = backbone_kernel_init
  dtype: Any = jnp.float32
  momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    common = dict(relu=self.relu, epsilon=self.epsilon,
                  use_running_average=self.use_running_average, dtype=self.dtype,
                  momentum=self.momentum)
    x = ConvBN(x.shape[-1], 3, self.stride, self.rate, depthwise=True,
               kernel_init=self.depthwise_init, name='depthwise', **common)(x)
    return ConvBN(self.features, 1, kernel_init=self.pointwise_init, name='pointwise',
                  **common)(x)


class XceptionUnit(nn.Module):
  """One xception_module: three separable convs (stride on the third) and a skip.

  skip: 'conv' (1x1 conv with the unit's stride + BN on the unit's input), 'sum' or 'none'.
  relu_inside: ReLU after each BN of the separable convs (exit_flow block2) instead of one ReLU
  before each separable conv. fuse: AsymFusion between the separable convs (docs/method.md
  section 13). Returns the output and the pointwise BN output of separable conv 2 (after fusion,
  when on), which entry_flow block2 hands to the decoder.
  """
  depths: Sequence[int]
  skip: str
  stride: int = 1
  rate: int = 1
  relu_inside: bool = False
  fuse: bool = False
  use_running_average: bool = True
  dtype: Any = jnp.float32
  momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    def sep(i, h):
      if not self.relu_inside:
        h = jax.nn.relu(h)
      return SeparableConv(self.depths[i - 1], self.stride if i == 3 else 1, self.rate,
                           relu=self.relu_inside, use_running_average=self.use_running_average,
                           momentum=self.momentum,
                           dtype=self.dtype, name=f'separable_conv{i}')(h)

    h = sep(1, x)
    if self.fuse:
      shifted = fusion.pixel_shift(h)
      h = fusion.channel_shuffle(h)
    h = sep(2, h)
    if self.fuse:
      # Modality m receives the shifted features of its partner (m + 1) mod M.
      h = h + jnp.roll(shifted, -1, axis=0)
      h = fusion.channel_shuffle(h)
    low_level = h
    h = sep(3, h)
    if self.skip == 'conv':
      h = h + ConvBN(self.depths[-1], 1, self.stride,
                     use_running_average=self.use_running_average, dtype=self.dtype,
                     momentum=self.momentum,
                     name='shortcut')(x)
    elif self.skip == 'sum':
      h = h + x
    elif self.skip != 'none':
      raise ValueError(f'unknown skip {self.skip!r}; expected conv, sum or none')
    return h, low_level


def xception65_blocks(width_divisor: int = 1, middle_flow_units: int = MIDDLE_FLOW_UNITS):
  """[(flow, block, depths, skip, stride, units, relu_inside, fused)] of Xception-65.

  width_divisor divides every width (tests use small ones with the same structure);
  middle_flow_units is 16 in Xception-65. Fusion sits in the last unit of entry_flow blocks 1-3
  and of the middle flow.
  """
  d = lambda *depths: tuple(c // width_divisor for c in depths)
  return [
      ('entry_flow', 'block1', d(128, 128, 128), 'conv', 2, 1, False, True),
      ('entry_flow', 'block2', d(256, 256, 256), 'conv', 2, 1, False, True),
      ('entry_flow', 'block3', d(728, 728, 728), 'conv', 2, 1, False, True),
      ('middle_flow', 'block1', d(728, 728, 728), 'sum', 1, middle_flow_units, False, True),
      ('exit_flow', 'block1', d(728, 1024, 1024), 'conv', 2, 1, False, False),
      ('exit_flow', 'block2', d(1536, 1536, 2048), 'none', 1, 1, True, False),
  ]


class Xception65(nn.Module):
  """Multimodal Xception-65 returning (features at output_stride, low-level features at stride 4).

  Attributes:
    output_stride: 16 or 8. Once the running stride reaches it, later units run at stride 1 and
      their atrous rate grows by the stride they skip (TF-DeepLab's stack_blocks_dense).
    fusion: AsymFusion at four points (needs M >= 2; M = 1 runs without it).
    width_divisor, middle_flow_units: see xception65_blocks (1 and 16 for Xception-65).
    remat: recompute every unit in the backward pass instead of keeping its activations.
    bn_momentum: of every BatchNorm's running statistics (TF-DeepLab's decay 0.9997).
    scan_blocks: run the middle-flow units (but a last one that fuses) as one nn.scan
      (models.scan_layout, which also gives the variables' layout): the same outputs from a
      smaller program (on XLA:CPU it barely compiles faster and steps slower).
  """
  output_stride: int = 16
  fusion: bool = True
  width_divisor: int = 1
  middle_flow_units: int = MIDDLE_FLOW_UNITS
  dtype: Any = jnp.float32
  remat: bool = False
  bn_momentum: float = BN_MOMENTUM
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool = True):
    if x.ndim != 5:
      raise ValueError(f'Xception65 expects (M, B, H, W, C) input, got shape {x.shape}')
    if self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride}')
    fuse = self.fusion and x.shape[0] >= 2
    common = dict(use_running_average=use_running_average, dtype=self.dtype,
                  momentum=self.bn_momentum)
    x = x.astype(self.dtype)
    x = ConvBN(32 // self.width_divisor, 3, 2, relu=True, name='entry_flow_conv1_1', **common)(x)
    x = ConvBN(64 // self.width_divisor, 3, 1, relu=True, name='entry_flow_conv1_2', **common)(x)
    unit_cls = nn.remat(XceptionUnit) if self.remat else XceptionUnit
    stride, rate, low_level = 2, 1, None
    for flow, block, depths, skip, unit_stride, units, relu_inside, fused in xception65_blocks(
        self.width_divisor, self.middle_flow_units):
      # The middle flow's units are alike, but for the last one where it fuses.
      last_fuses = fuse and fused
      for run in scan_layout.runs(units, 0, units - 1 - last_fuses,
                                  self.scan_blocks and flow == 'middle_flow'):
        strides_rates = set()
        for _ in run:
          if stride == self.output_stride:
            strides_rates.add((1, rate))
            rate *= unit_stride
          else:
            strides_rates.add((unit_stride, 1))
            stride *= unit_stride
        if len(strides_rates) != 1:
          raise ValueError(f'{flow} {block}: units {run} differ in stride or rate, so they '
                           'cannot be scanned')
        (this_stride, this_rate), = strides_rates
        unit = unit_cls(depths, skip, this_stride, this_rate, relu_inside,
                        last_fuses and run.stop == units,
                        name=scan_layout.name(f'{flow}_{block}_unit_', run, base=1), **common)
        if (flow, block) == ('entry_flow', 'block2'):
          x, low_level = unit(x)
        else:
          x = scan_layout.apply(unit, x, run, carry=lambda y: y[0])
    return x, low_level
