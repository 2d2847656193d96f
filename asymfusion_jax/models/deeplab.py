"""DeepLabv3+ (TF-DeepLab's model.py) on the multimodal Xception-65, with the learned ensemble.

docs/method.md section 13. Module names follow TF-DeepLab's variable scopes (aspp0,
aspp1_depthwise -> aspp1/depthwise, image_pooling, concat_projection,
decoder/feature_projection0 -> decoder_feature_projection0, decoder_conv0, logits/semantic ->
logits_semantic), so that asymfusion_jax.convert.deeplab_from_tf loads its checkpoints by name.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax import resize
from asymfusion_jax.models.xception import (BN_MOMENTUM, HEAD_EPSILON, MIDDLE_FLOW_UNITS, ConvBN,
                                            SeparableConv, Xception65)

# Values of DeepLab.remat.
REMAT = ('none', 'backbone', 'all')
# ASPP atrous rates per output stride (TF-DeepLab's 6/12/18 at 16, doubled at 8).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
DECODER_STRIDE = 4
# TF-DeepLab's initializers of the head: depthwise and pointwise kernels of the split separable
# convs, and the logits; its other 1x1 convs use slim's default (Glorot uniform).
_DEPTHWISE_INIT = nn.initializers.truncated_normal(0.33)
_POINTWISE_INIT = nn.initializers.truncated_normal(0.06)
_LOGITS_INIT = nn.initializers.truncated_normal(0.01)
_CONV_INIT = nn.initializers.glorot_uniform()


def decoder_size(height: int, width: int) -> tuple[int, int]:
  """TF-DeepLab's scale_dimension at stride 4: ((H - 1) // 4 + 1, (W - 1) // 4 + 1)."""
  return (height - 1) // DECODER_STRIDE + 1, (width - 1) // DECODER_STRIDE + 1


class DeepLab(nn.Module):
  """AsymFusion DeepLabv3+ / Xception-65: shared convs, per-modality BN, learned ensemble.

  apply(variables, x, train=...) with x of shape (M, B, H, W, 3) returns float32 logits of shape
  (M + 1, B, H, W, K): the M branch predictions, then their alpha-weighted ensemble (as
  RefineNet). With upsample_logits=False they stay at the decoder's stride-4 size
  ((H - 1) // 4 + 1, (W - 1) // 4 + 1), for a loss that resizes them to the labels itself.
  Training needs rngs={'dropout': key}; with frozen_bn=False it also needs
  mutable=['batch_stats'].

  Attributes:
    num_classes: K (19 for Cityscapes).
    num_modalities: M; the input's first axis must equal it.
    fusion: AsymFusion in the backbone (needs M >= 2 to have an effect).
    output_stride: 16 or 8 (backbone stride; the ASPP rates follow it).
    dtype: compute dtype; parameters, BatchNorm statistics and the returned logits are float32.
    frozen_bn: use running BatchNorm statistics in training too, and never update them.
    width_divisor: divides every width, backbone and head (1 is the real model; tests use
      small widths with the same structure). middle_flow_units: 16 in Xception-65.
    dropout_rate: after the ASPP projection in training (TF-DeepLab's keep_prob 0.9).
    remat: one of REMAT: 'backbone' recomputes every Xception unit in the backward pass,
      'all' also the ASPP and the decoder's separable convs.
    upsample_logits: resize the logits to the input size (bilinear, align_corners=True).
    bn_momentum: of every BatchNorm's running statistics; TF-DeepLab's 0.9997 suits long
      fine-tuning, a short run from scratch needs a smaller one for its statistics to converge.
    scan_blocks: config.model.scan_blocks: the backbone's middle-flow units as nn.scan
      (Xception65.scan_blocks; the variables' layout is models.scan_layout's).
  """
  num_classes: int = 19
  num_modalities: int = 2
  fusion: bool = True
  output_stride: int = 16
  dtype: Any = jnp.float32
  frozen_bn: bool = False
  width_divisor: int = 1
  middle_flow_units: int = MIDDLE_FLOW_UNITS
  dropout_rate: float = 0.1
  remat: str = 'none'
  upsample_logits: bool = True
  bn_momentum: float = BN_MOMENTUM
  scan_blocks: bool = False

  @property
  def logits_stride(self) -> int:
    """The input size over the logits' size: 1 with upsample_logits, else the decoder's 4."""
    return 1 if self.upsample_logits else 4

  # How to run it on an image of any size (asymfusion_jax.predict): as it is (TF-DeepLab's fixed
  # padding and scale_dimension serve every size, and Cityscapes evaluation runs the full images
  # unpadded), stride-4 logits brought to the input size as the model itself does.
  input_multiple = 1
  output_resize = 'bilinear_align_corners'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim != 5 or x.shape[0] != self.num_modalities:
      raise ValueError(f'DeepLab(num_modalities={self.num_modalities}) expects input of shape '
                       f'(M={self.num_modalities}, B, H, W, C), got {x.shape}')
    if self.remat not in REMAT:
      raise ValueError(f'unknown remat {self.remat!r}; choose one of {REMAT}')
    if self.output_stride not in ASPP_RATES:
      raise ValueError(f'output_stride must be one of {sorted(ASPP_RATES)}, '
                       f'got {self.output_stride}')
    height, width = x.shape[2:4]
    dt = self.dtype
    use_running_average = self.frozen_bn or not train
    features, low_level = Xception65(
        self.output_stride, self.fusion, self.width_divisor, self.middle_flow_units, dt,
        remat=self.remat != 'none', bn_momentum=self.bn_momentum, scan_blocks=self.scan_blocks,
        name='backbone')(x, use_running_average)

    depth = 256 // self.width_divisor
    sep_cls = nn.remat(SeparableConv) if self.remat == 'all' else SeparableConv
    common = dict(relu=True, epsilon=HEAD_EPSILON, use_running_average=use_running_average,
                  dtype=dt, momentum=self.bn_momentum)
    sep_common = dict(common, depthwise_init=_DEPTHWISE_INIT, pointwise_init=_POINTWISE_INIT)

    # ASPP: [image_pooling, aspp0, aspp1, aspp2, aspp3].
    pooled = jnp.mean(features.astype(jnp.float32), axis=(2, 3), keepdims=True).astype(dt)
    pooled = ConvBN(depth, 1, kernel_init=_CONV_INIT, name='image_pooling', **common)(pooled)
    branches = [jnp.broadcast_to(pooled, features.shape[:-1] + (depth,)),
                ConvBN(depth, 1, kernel_init=_CONV_INIT, name='aspp0', **common)(features)]
    for i, rate in enumerate(ASPP_RATES[self.output_stride], 1):
      branches.append(sep_cls(depth, rate=rate, name=f'aspp{i}', **sep_common)(features))
    y = ConvBN(depth, 1, kernel_init=_CONV_INIT, name='concat_projection',
               **common)(jnp.concatenate(branches, axis=-1))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)

    # Decoder at stride 4: [ASPP, 48-channel projection of the low-level features].
    size = decoder_size(height, width)
    low = ConvBN(48 // self.width_divisor, 1, kernel_init=_CONV_INIT,
                 name='decoder_feature_projection0', **common)(low_level)
    y = jnp.concatenate([resize.resize(y, size, 'bilinear_align_corners'),
                         resize.resize(low, size, 'bilinear_align_corners')], axis=-1)
    y = sep_cls(depth, name='decoder_conv0', **sep_common)(y)
    y = sep_cls(depth, name='decoder_conv1', **sep_common)(y)

    logits = nn.Conv(self.num_classes, (1, 1), dtype=dt, param_dtype=jnp.float32,
                     kernel_init=_LOGITS_INIT, name='logits_semantic')(y).astype(jnp.float32)
    if self.upsample_logits:
      logits = resize.resize(logits, (height, width), 'bilinear_align_corners')
    alpha = self.param('alpha', nn.initializers.ones, (self.num_modalities,), jnp.float32)
    weights = jax.nn.softmax(alpha)
    ensemble = jnp.einsum('m,m...->...', weights, jax.lax.stop_gradient(logits))
    return jnp.concatenate([logits, ensemble[None]], axis=0)
