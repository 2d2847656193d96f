"""An independent PyTorch image-translation generator and discriminator, written from
docs/method.md section 11, for tests.

They are built the way CEN's PyTorch models are laid out: domains travel as a Python list of
NCHW tensors, every convolution is one nn.Conv2d / nn.ConvTranspose2d wrapped in `Parallel`
(attribute `module`, applied to every list element), the generator's InstanceNorms are one
nn.InstanceNorm2d per domain (`insnorm_{m}`), the discriminator's one shared InstanceNorm in
`Parallel`. As in CEN, every block creates its norm, also the blocks that never apply it
(generator conv1, conv{n}, deconv{n}; discriminator conv1, conv5), and the norms track running
statistics, so the state_dict has exactly CEN's keys. The forward pass normalises with each
image's own statistics in both modes (docs/method.md section 11), which is what CEN computes in
training mode.
"""

import torch
from torch import nn
import torch.nn.functional as F


class Parallel(nn.Module):
  """One module applied to every element of a list (CEN's ModuleParallel)."""

  def __init__(self, module):
    super().__init__()
    self.module = module

  def forward(self, xs):
    return [self.module(x) for x in xs]


def instance_norm(norm: nn.InstanceNorm2d, x):
  """`norm`'s affine InstanceNorm with the instance's own statistics (running ones unused)."""
  return F.instance_norm(x, weight=norm.weight, bias=norm.bias, use_input_stats=True,
                         eps=norm.eps)


class ModalInstanceNorm(nn.Module):
  def __init__(self, channels, num_parallel):
    super().__init__()
    self.num_parallel = num_parallel
    for m in range(num_parallel):
      setattr(self, f'insnorm_{m}',
              nn.InstanceNorm2d(channels, affine=True, track_running_stats=True))

  def forward(self, xs):
    return [instance_norm(getattr(self, f'insnorm_{m}'), x) for m, x in enumerate(xs)]


class EncoderBlock(nn.Module):
  def __init__(self, cin, cout, num_parallel, activation=True, norm=True):
    super().__init__()
    self.conv = Parallel(nn.Conv2d(cin, cout, 4, 2, 1))
    self.insnorm_conv = ModalInstanceNorm(cout, num_parallel)
    self.activation, self.norm = activation, norm

  def forward(self, xs):
    if self.activation:
      xs = [F.leaky_relu(x, 0.2) for x in xs]
    out = self.conv(xs)
    return self.insnorm_conv(out) if self.norm else out


class DecoderBlock(nn.Module):
  def __init__(self, cin, cout, num_parallel, norm=True, dropout=False):
    super().__init__()
    self.deconv = Parallel(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
    self.insnorm_deconv = ModalInstanceNorm(cout, num_parallel)
    self.drop = Parallel(nn.Dropout(0.5))
    self.norm, self.dropout = norm, dropout

  def forward(self, xs):
    out = self.deconv([F.relu(x) for x in xs])
    if self.norm:
      out = self.insnorm_deconv(out)
    return self.drop(out) if self.dropout else out


def channels(ngf, block):
  return ngf * min(2 ** (block - 1), 8)


class Generator(nn.Module):
  """pix2pix U-Net over a list of M domains; forward returns the M branches and the ensemble.

  `fuse`, if given, is called on the list of per-domain features right after the InstanceNorm
  of the encoder blocks `fusion_blocks` and returns the list to continue with.
  """

  def __init__(self, num_parallel, ngf=64, num_downs=8, fusion_blocks=(), fuse=None):
    super().__init__()
    n = self.num_downs = num_downs
    self.fusion_blocks, self.fuse = set(fusion_blocks), fuse
    for k in range(1, n + 1):
      cin = 3 if k == 1 else channels(ngf, k - 1)
      setattr(self, f'conv{k}', EncoderBlock(cin, channels(ngf, k), num_parallel,
                                             activation=k > 1, norm=1 < k < n))
    for k in range(1, n + 1):
      cin = channels(ngf, n) if k == 1 else 2 * channels(ngf, n - k + 1)
      cout = channels(ngf, n - k) if k < n else 3
      setattr(self, f'deconv{k}', DecoderBlock(cin, cout, num_parallel, norm=k < n,
                                               dropout=k <= n - 5))
    self.alpha = nn.Parameter(torch.ones(num_parallel))

  def forward(self, xs):
    n = self.num_downs
    skips = []
    for k in range(1, n + 1):
      xs = getattr(self, f'conv{k}')(xs)
      if k in self.fusion_blocks:
        xs = self.fuse(xs)
      skips.append(xs)
    for k in range(1, n + 1):
      xs = getattr(self, f'deconv{k}')(xs)
      if k < n:
        xs = [torch.cat([d, e], 1) for d, e in zip(xs, skips[n - k - 1])]
    out = [torch.tanh(x) for x in xs]
    weights = F.softmax(self.alpha, dim=0)
    ensemble = sum(w * o.detach() for w, o in zip(weights, out))
    return out + [ensemble]


class DiscriminatorBlock(nn.Module):
  def __init__(self, cin, cout, stride, activation=True, norm=True):
    super().__init__()
    self.conv = Parallel(nn.Conv2d(cin, cout, 4, stride, 1))
    self.insnorm = Parallel(nn.InstanceNorm2d(cout, affine=True, track_running_stats=True))
    self.activation, self.norm = activation, norm

  def forward(self, xs):
    if self.activation:
      xs = [F.leaky_relu(x, 0.2) for x in xs]
    out = self.conv(xs)
    if self.norm:
      out = [instance_norm(self.insnorm.module, x) for x in out]
    return out


class Discriminator(nn.Module):
  """PatchGAN over a list of (N, 6, H, W) inputs; forward returns the logits (no sigmoid)."""

  def __init__(self, ndf=64):
    super().__init__()
    self.conv1 = DiscriminatorBlock(6, ndf, 2, activation=False, norm=False)
    self.conv2 = DiscriminatorBlock(ndf, 2 * ndf, 2)
    self.conv3 = DiscriminatorBlock(2 * ndf, 4 * ndf, 2)
    self.conv4 = DiscriminatorBlock(4 * ndf, 8 * ndf, 1)
    self.conv5 = DiscriminatorBlock(8 * ndf, 1, 1, norm=False)

  def forward(self, xs):
    for k in range(1, 6):
      xs = getattr(self, f'conv{k}')(xs)
    return xs


def randomise(net: nn.Module, seed: int) -> nn.Module:
  """Gives every InstanceNorm a non-trivial affine map and running statistics (the import must
  take the former and ignore the latter), and the ensemble unequal weights."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.InstanceNorm2d):
        c = module.num_features
        module.weight.copy_(0.5 + torch.rand(c, generator=generator))
        module.bias.copy_(0.2 * torch.randn(c, generator=generator))
        module.running_mean.copy_(torch.randn(c, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
        module.num_batches_tracked.fill_(7)
    if isinstance(getattr(net, 'alpha', None), nn.Parameter):
      net.alpha.copy_(torch.randn(net.alpha.shape, generator=generator))
  return net
