"""RefineNet decoder as released with AsymFusion (docs/method.md section 5), and the full
segmentation model.

Module names follow the reference's PyTorch attribute names, so that weight conversion is a
renaming (see asymfusion_jax.convert).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax import fusion as fusion_ops
from asymfusion_jax import resize
from asymfusion_jax.models import kernels as kernels_lib
from asymfusion_jax.models.layers import max_pool, shared_conv, torch_default_kernel_init
from asymfusion_jax.models.resnet import ResNet

# Values of RefineNet.remat.
REMAT = ('none', 'backbone', 'all')
# Values of config.compute_dtype.
COMPUTE_DTYPES = ('float32', 'bfloat16', 'auto')


def _conv3x3(features, name, dtype, use_bias=False):
  # A 3x3 convolution is the stock op under every models.kernels value.
  return shared_conv(features, 3, use_bias=use_bias, dtype=dtype,
                     kernel_init=torch_default_kernel_init, name=name)


def upsample(x: jax.Array, like: jax.Array) -> jax.Array:
  """Bilinear align_corners=True resizing of x to the spatial size of `like`."""
  return resize.resize(x, like.shape[-3:-1], 'bilinear_align_corners')


class RCU(nn.Module):
  """Residual conv unit chain. Per block: r = relu(x); x = conv_b(relu(conv_a(r))) + r.

  The residual is relu(x), not x: the reference's in-place ReLU rewrites the saved residual.
  """
  features: int
  num_blocks: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(1, self.num_blocks + 1):
      r = jax.nn.relu(x)
      h = _conv3x3(self.features, f'{i}_conv', self.dtype, use_bias=True)(r)
      h = _conv3x3(self.features, f'{i}_conv_relu_varout_dimred', self.dtype)(jax.nn.relu(h))
      x = h + r
    return x


class CRP(nn.Module):
  """Chained residual pooling: top = conv(maxpool5x5(top)); x = x + top, four times."""
  features: int
  num_stages: int = 4
  dtype: Any = jnp.float32
  kernels: str = 'auto'  # models.kernels: the max-pooling's.

  @nn.compact
  def __call__(self, x):
    top = x
    for i in range(1, self.num_stages + 1):
      top = _conv3x3(self.features, f'{i}_outvar_dimred', self.dtype)(
          max_pool(top, 5, 1, self.kernels))
      x = x + top
    return x


class RefineNet(nn.Module):
  """AsymFusion RefineNet: multimodal ResNet encoder, shared RefineNet decoder, learned ensemble.

  apply(variables, x, train=...) with x of shape (M, B, H, W, 3) returns float32 logits of shape
  (M + 1, B, h, w, K) at stride 4: the M branch predictions, then their alpha-weighted ensemble
  (with fusion 'late': their plain mean, without alpha, through which the gradient flows).
  Training needs rngs={'dropout': key}; with frozen_bn=False it also needs mutable=['batch_stats'].

  Attributes:
    depth: ResNet depth (26 tiny, 50, 101, 152).
    num_classes: K.
    num_modalities: M; the input's first axis must equal it.
    fusion: a value of config.model.fusion (asymfusion_jax.fusion.method): 'asym',
      AsymFusion in the encoder; 'concat', 'average', 'attention', that aggregation at the
      same four fusion points; 'none', no fusion; 'late' (MMF), no fusion in the
      encoder and the mean of the branch logits as the ensemble (docs/method.md section 12).
      Fusion in the encoder needs M >= 2 to have an effect.
    dtype: compute dtype; parameters, BatchNorm statistics and the returned logits are float32.
    frozen_bn: use running BatchNorm statistics in training too, and never update them.
    width: encoder base width (64 in the paper). decoder_width: decoder width (256 in the paper;
      the deepest path uses twice that).
    remat: rematerialisation (activation recomputation in the backward pass), one of REMAT:
      'none'; 'backbone' recomputes every encoder bottleneck from its input; 'all' also every
      RCU and CRP unit of the decoder, whose stride-4 activations at 256 channels are the
      largest of the model. Trades compute for memory; outputs are unchanged and gradients
      agree to float32 rounding.
    kernels: models.kernels.KERNELS (config.model.kernels): the CPU rewrites ('cpu'), the stock
      ops ('xla'), or the rewrites only where the program is lowered for a CPU ('auto').
    scan_blocks: config.model.scan_blocks: the encoder's runs of identical blocks as nn.scan
      (ResNet.scan_blocks; the variables' layout is models.scan_layout's).
  """
  depth: int = 101
  num_classes: int = 40
  num_modalities: int = 2
  fusion: str = 'asym'
  dtype: Any = jnp.float32
  frozen_bn: bool = False
  width: int = 64
  decoder_width: int = 256
  dropout_rate: float = 0.5
  remat: str = 'none'
  kernels: str = 'auto'
  scan_blocks: bool = False

  @property
  def logits_stride(self) -> int:
    """The input size over the logits' size: 4 (ceil(H / 4) x ceil(W / 4) logits)."""
    return 4

  # How to run it on an image of any size (asymfusion_jax.predict): padded to a multiple of the
  # backbone's stride, so that every feature map and the stride-4 logits cover the padded image
  # exactly, with the logits brought to the input size as evaluation does (OpenCV's bicubic).
  input_multiple = 32
  output_resize = 'cubic_opencv'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim != 5 or x.shape[0] != self.num_modalities:
      raise ValueError(f'RefineNet(num_modalities={self.num_modalities}) expects input of shape '
                       f'(M={self.num_modalities}, B, H, W, C), got {x.shape}')
    if self.remat not in REMAT:
      raise ValueError(f'unknown remat {self.remat!r}; choose one of {REMAT}')
    dt, w = self.dtype, self.decoder_width
    rcu, crp = (nn.remat(RCU), nn.remat(CRP)) if self.remat == 'all' else (RCU, CRP)
    method = fusion_ops.method(self.fusion)
    kernels_lib.check(self.kernels)
    feats = ResNet(self.depth, 'none' if method == 'late' else method, self.width, dt, remat=self.remat != 'none',
                   kernels=self.kernels, scan_blocks=self.scan_blocks,
                   name='backbone')(x, use_running_average=self.frozen_bn or not train)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    l1, l2 = feats['l1'], feats['l2']
    l3, l4 = drop(feats['l3']), drop(feats['l4'])

    x4 = _conv3x3(2 * w, 'p_ims1d2_outl1_dimred', dt)(l4)
    x4 = rcu(2 * w, 2, dt, name='adapt_stage1_b')(x4)
    x4 = crp(2 * w, dtype=dt, kernels=self.kernels, name='mflow_conv_g1_pool')(jax.nn.relu(x4))
    x4 = rcu(2 * w, 3, dt, name='mflow_conv_g1_b')(x4)
    x4 = _conv3x3(w, 'mflow_conv_g1_b3_joint_varout_dimred', dt)(x4)
    top = upsample(x4, l3)

    for g, lateral in ((2, l3), (3, l2), (4, l1)):
      y = _conv3x3(w, f'p_ims1d2_outl{g}_dimred', dt)(lateral)
      y = rcu(w, 2, dt, name=f'adapt_stage{g}_b')(y)
      y = _conv3x3(w, f'adapt_stage{g}_b2_joint_varout_dimred', dt)(y)
      y = jax.nn.relu(y + top)
      y = crp(w, dtype=dt, kernels=self.kernels, name=f'mflow_conv_g{g}_pool')(y)
      y = rcu(w, 3, dt, name=f'mflow_conv_g{g}_b')(y)
      if g < 4:
        y = _conv3x3(w, f'mflow_conv_g{g}_b3_joint_varout_dimred', dt)(y)
        top = upsample(y, (l2, l1)[g - 2])
      else:
        top = y

    x1 = drop(top)
    logits = _conv3x3(self.num_classes, 'clf_conv', dt, use_bias=True)(x1).astype(jnp.float32)
    if method == 'late':
      ensemble = jnp.mean(logits, axis=0)
    else:
      alpha = self.param('alpha', nn.initializers.ones, (self.num_modalities,), jnp.float32)
      weights = jax.nn.softmax(alpha)
      ensemble = jnp.einsum('m,m...->...', weights, jax.lax.stop_gradient(logits))
    return jnp.concatenate([logits, ensemble[None]], axis=0)


def resolve_compute_dtype(name: str, backend: str | None = None) -> jnp.dtype:
  """The dtype that config.compute_dtype names; 'auto' picks one for the backend.

  'auto' is bfloat16 on GPUs and TPUs, whose matrix units run bf16 convolutions at several
  times the float32 rate and where bf16 halves activation memory, and float32 on CPUs, where
  XLA runs bf16 convolutions in float32 anyway (the casts only add work) and where tests
  compare against float32 references. Parameters, BatchNorm statistics, logits and the loss
  are float32 in every case.
  """
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'unknown compute_dtype {name!r}; choose one of {COMPUTE_DTYPES}')
  if name == 'auto':
    backend = backend or jax.default_backend()
    name = 'float32' if backend == 'cpu' else 'bfloat16'
  return jnp.dtype(name)


def build_model(config) -> RefineNet:
  """The RefineNet that a config describes (its `model` section, modalities and compute dtype)."""
  return RefineNet(
      depth=config.model.depth,
      num_classes=config.model.num_classes,
      num_modalities=len(config.modalities),
      fusion=config.model.fusion,
      dtype=resolve_compute_dtype(config.compute_dtype),
      frozen_bn=config.frozen_bn,
      width=config.model.width,
      decoder_width=config.model.decoder_width,
      dropout_rate=config.model.dropout_rate,
      remat=config.model.remat,
      kernels=config.model.kernels,
      scan_blocks=config.model.get('scan_blocks', False))
