"""An independent PyTorch AsymFusion RefineNet, written from docs/method.md sections 2-5 and 9,
for tests.

It is built the way the released implementation is: modalities travel as a Python list of NCHW
tensors, convolutions are one nn.Conv2d wrapped in ModuleParallel (applied to every list
element), BatchNorms are one nn.BatchNorm2d per modality (`bn_{m}`), the fusion operations are
written on NCHW tensors, and the decoder uses in-place ReLUs, so that the RCU residual is the
rectified input because the ReLU rewrote it (docs/method.md section 5), not because we wrote
`relu(x)`. Its state_dict keys are exactly docs/method.md section 9's. It is parametrised by the
blocks per stage and the widths, so that the tests can run it at a tiny scale.
"""

import torch
from torch import nn
import torch.nn.functional as F

# (dh, dw) of channel groups 0..3: out[i, j] = x[i + dh, j + dw] (docs/method.md section 3).
SHIFT_OFFSETS = ((-1, 0), (0, -1), (0, 1), (1, 0))


def channel_shuffle(xs):
  """Modality m takes channels [s, C) from modality (m + 1) mod M; s = 4 * (C // 5)."""
  s = 4 * (xs[0].shape[1] // 5)
  num = len(xs)
  return [torch.cat([xs[m][:, :s], xs[(m + 1) % num][:, s:]], dim=1) for m in range(num)]


def pixel_shift(x, reverse=False):
  """Moves channel group k of one NCHW tensor by one pixel; channels [s, C) become zero."""
  _, channels, height, width = x.shape
  g = channels // 5
  padded = F.pad(x, (1, 1, 1, 1))
  out = torch.zeros_like(x)
  offsets = SHIFT_OFFSETS[::-1] if reverse else SHIFT_OFFSETS
  for k, (dh, dw) in enumerate(offsets):
    group = slice(k * g, (k + 1) * g)
    out[:, group] = padded[:, group, 1 + dh:1 + dh + height, 1 + dw:1 + dw + width]
  return out


class ModuleParallel(nn.Module):
  """One module (shared weights) applied to every modality's tensor."""

  def __init__(self, module):
    super().__init__()
    self.module = module

  def forward(self, xs):
    return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
  """One BatchNorm2d per modality, named bn_0, bn_1, ..."""

  def __init__(self, features, num_parallel):
    super().__init__()
    self.num_parallel = num_parallel
    for m in range(num_parallel):
      setattr(self, f'bn_{m}', nn.BatchNorm2d(features))

  def forward(self, xs):
    return [getattr(self, f'bn_{m}')(x) for m, x in enumerate(xs)]


def conv(cin, cout, kernel, stride=1, bias=False):
  return ModuleParallel(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias))


def relu_(xs):
  """In-place ReLU on every modality's tensor (nn.ReLU(inplace=True) under ModuleParallel)."""
  return [F.relu(x, inplace=True) for x in xs]


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, num_parallel, stride=1, downsample=False, fuse=False):
    super().__init__()
    self.conv1 = conv(cin, planes, 1)
    self.bn1 = BatchNorm2dParallel(planes, num_parallel)
    self.conv2 = conv(planes, planes, 3, stride)
    self.bn2 = BatchNorm2dParallel(planes, num_parallel)
    self.conv3 = conv(planes, planes * 4, 1)
    self.bn3 = BatchNorm2dParallel(planes * 4, num_parallel)
    self.downsample = None
    if downsample:
      self.downsample = nn.Sequential(conv(cin, planes * 4, 1, stride),
                                      BatchNorm2dParallel(planes * 4, num_parallel))
    self.fuse = fuse

  def forward(self, xs):
    out = relu_(self.bn1(self.conv1(xs)))
    if self.fuse:
      shifted = [pixel_shift(o) for o in out]
      out = channel_shuffle(out)
    out = relu_(self.bn2(self.conv2(out)))
    if self.fuse:
      num = len(out)
      out = [out[m] + shifted[(m + 1) % num] for m in range(num)]
      out = channel_shuffle(out)
    out = self.bn3(self.conv3(out))
    residual = self.downsample(xs) if self.downsample is not None else xs
    return relu_([o + r for o, r in zip(out, residual)])


class RCUBlock(nn.Module):
  """RefineNet's residual conv unit chain (convs `{i}_conv`, `{i}_conv_relu_varout_dimred`)."""

  def __init__(self, features, num_blocks):
    super().__init__()
    self.num_blocks = num_blocks
    for i in range(1, num_blocks + 1):
      setattr(self, f'{i}_conv', conv(features, features, 3, bias=True))
      setattr(self, f'{i}_conv_relu_varout_dimred', conv(features, features, 3))

  def forward(self, xs):
    for i in range(1, self.num_blocks + 1):
      residual = xs
      xs = relu_(xs)  # Also rewrites `residual`: the same tensors.
      xs = getattr(self, f'{i}_conv')(xs)
      xs = relu_(xs)
      xs = getattr(self, f'{i}_conv_relu_varout_dimred')(xs)
      xs = [x + r for x, r in zip(xs, residual)]
    return xs


class CRPBlock(nn.Module):
  """Chained residual pooling, four stages (convs `{i}_outvar_dimred`)."""

  def __init__(self, features, num_stages=4):
    super().__init__()
    self.num_stages = num_stages
    self.pool = nn.MaxPool2d(5, stride=1, padding=2)
    for i in range(1, num_stages + 1):
      setattr(self, f'{i}_outvar_dimred', conv(features, features, 3))

  def forward(self, xs):
    top = xs
    for i in range(1, self.num_stages + 1):
      top = getattr(self, f'{i}_outvar_dimred')([self.pool(t) for t in top])
      xs = [x + t for x, t in zip(xs, top)]
    return xs


def upsample(xs, like):
  return [F.interpolate(x, size=l.shape[-2:], mode='bilinear', align_corners=True)
          for x, l in zip(xs, like)]


class RefineNet(nn.Module):
  """AsymFusion RefineNet. forward(list of M NCHW images) -> M branch logits + their ensemble."""

  def __init__(self, blocks=(3, 4, 23, 3), num_classes=40, num_parallel=2, fusion=True,
               width=64, decoder_width=256):
    super().__init__()
    self.num_parallel = num_parallel
    self.conv1 = conv(3, width, 7, stride=2)
    self.bn1 = BatchNorm2dParallel(width, num_parallel)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = width
    for s, num_blocks in enumerate(blocks):
      planes = width * 2**s
      layers = []
      for i in range(num_blocks):
        layers.append(Bottleneck(
            cin, planes, num_parallel, stride=2 if (s > 0 and i == 0) else 1, downsample=i == 0,
            fuse=fusion and num_parallel >= 2 and num_blocks >= 2 and i == num_blocks - 1))
        cin = planes * 4
      setattr(self, f'layer{s + 1}', nn.Sequential(*layers))

    w = decoder_width
    self.dropout = nn.Dropout(p=0.5)
    self.p_ims1d2_outl1_dimred = conv(width * 32, 2 * w, 3)
    self.adapt_stage1_b = nn.Sequential(RCUBlock(2 * w, 2))
    self.mflow_conv_g1_pool = nn.Sequential(CRPBlock(2 * w))
    self.mflow_conv_g1_b = nn.Sequential(RCUBlock(2 * w, 3))
    self.mflow_conv_g1_b3_joint_varout_dimred = conv(2 * w, w, 3)
    for g, cin in ((2, width * 16), (3, width * 8), (4, width * 4)):
      setattr(self, f'p_ims1d2_outl{g}_dimred', conv(cin, w, 3))
      setattr(self, f'adapt_stage{g}_b', nn.Sequential(RCUBlock(w, 2)))
      setattr(self, f'adapt_stage{g}_b2_joint_varout_dimred', conv(w, w, 3))
      setattr(self, f'mflow_conv_g{g}_pool', nn.Sequential(CRPBlock(w)))
      setattr(self, f'mflow_conv_g{g}_b', nn.Sequential(RCUBlock(w, 3)))
      if g < 4:
        setattr(self, f'mflow_conv_g{g}_b3_joint_varout_dimred', conv(w, w, 3))
    self.clf_conv = conv(w, num_classes, 3, bias=True)
    self.alpha = nn.Parameter(torch.ones(num_parallel))

  def encoder(self, xs):
    """Stage features l1..l4 of the multimodal ResNet."""
    xs = relu_(self.bn1(self.conv1(xs)))
    xs = [self.maxpool(x) for x in xs]
    feats = []
    for s in range(1, 5):
      xs = getattr(self, f'layer{s}')(xs)
      feats.append(xs)
    return feats

  def forward(self, xs):
    l1, l2, l3, l4 = self.encoder(xs)
    l4 = [self.dropout(x) for x in l4]
    l3 = [self.dropout(x) for x in l3]

    x4 = self.p_ims1d2_outl1_dimred(l4)
    x4 = self.adapt_stage1_b(x4)
    x4 = relu_(x4)
    x4 = self.mflow_conv_g1_pool(x4)
    x4 = self.mflow_conv_g1_b(x4)
    x4 = self.mflow_conv_g1_b3_joint_varout_dimred(x4)
    top = upsample(x4, l3)

    for g, lateral, nxt in ((2, l3, l2), (3, l2, l1), (4, l1, None)):
      y = getattr(self, f'p_ims1d2_outl{g}_dimred')(lateral)
      y = getattr(self, f'adapt_stage{g}_b')(y)
      y = getattr(self, f'adapt_stage{g}_b2_joint_varout_dimred')(y)
      y = relu_([a + b for a, b in zip(y, top)])
      y = getattr(self, f'mflow_conv_g{g}_pool')(y)
      y = getattr(self, f'mflow_conv_g{g}_b')(y)
      if nxt is not None:
        y = getattr(self, f'mflow_conv_g{g}_b3_joint_varout_dimred')(y)
        y = upsample(y, nxt)
      top = y

    x1 = [self.dropout(x) for x in top]
    out = self.clf_conv(x1)
    weights = F.softmax(self.alpha, dim=0)
    ens = sum(weights[m] * out[m].detach() for m in range(self.num_parallel))
    return out + [ens]


def randomize_(model, generator, nonzero_counters=True):
  """Random weights and BatchNorm statistics that keep activations O(1) through the network.

  Convolutions get He-normal weights (biases small), BatchNorms non-trivial affine parameters and
  running statistics, alpha a non-uniform softmax, and num_batches_tracked random counts (so that
  a round trip must carry them).
  """
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('alpha'):
        p.copy_(torch.randn(p.shape, generator=generator))
      elif p.ndim == 4:
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
        p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in)**0.5)
    for module in model.modules():
      if isinstance(module, nn.Conv2d) and module.bias is not None:
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
      if isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(0.5 + torch.rand(c, generator=generator))
        module.bias.copy_(0.2 * torch.randn(c, generator=generator))
        module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
        if nonzero_counters:
          module.num_batches_tracked.fill_(int(torch.randint(0, 10**6, (), generator=generator)))
  return model


# A tiny AsymFusion RefineNet: two blocks per stage (asymfusion_jax's depth 26, so every stage
# still has a fusion block), encoder width 8, decoder width 16, five classes.
TINY_DEPTH = 26
TINY = dict(blocks=(2, 2, 2, 2), width=8, decoder_width=16, num_classes=5)


def tiny_refinenet(num_parallel, fusion=True, seed=0):
  """A randomised tiny reference RefineNet in eval mode."""
  generator = torch.Generator().manual_seed(seed)
  model = RefineNet(num_parallel=num_parallel, fusion=fusion, **TINY)
  return randomize_(model, generator).eval()
