"""Numerical equivalence with PyTorch: torchvision's ResNet-50 and an independent AsymFusion
RefineNet (tests/torch_reference.py).

Weights come from PyTorch through asymfusion_jax.convert, so these tests check the Flax models and
the conversion together. Everything runs in float32 on the CPU, in eval mode, at odd input sizes
(where padding or resizing conventions would show).
"""

import jax
import numpy as np
import pytest
import torch
import torchvision

from asymfusion_jax import convert
from asymfusion_jax import fusion
from asymfusion_jax import torch_pickle
from asymfusion_jax.models import RefineNet, ResNet
from tests import torch_reference

torch.set_num_threads(2)
TOLERANCE = 1e-5


def relative_error(actual, expected):
  """max |a - b| / max |b|: insensitive to the overall scale of deep random features."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def torchvision_resnet50(tmp_path_factory):
  """A ResNet-50 with random weights and BatchNorm saved with torch.save, and its stage features
  (after layer1..layer4) for a 65x47 image."""
  torch.manual_seed(0)
  net = torchvision.models.resnet50(weights=None)
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(0.5 + torch.rand(c, generator=generator))
        module.bias.copy_(0.2 * torch.randn(c, generator=generator))
        module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
  path = tmp_path_factory.mktemp('torchvision') / 'resnet50.pth'
  torch.save(net.state_dict(), path)

  net.eval()
  image = torch.randn(1, 3, 65, 47, generator=generator)
  with torch.no_grad():
    h = net.maxpool(net.relu(net.bn1(net.conv1(image))))
    features = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
      h = layer(h)
      features.append(nhwc(h))
  return path, nhwc(image), features


@pytest.mark.parametrize('num_modalities,reader', [
    (1, lambda path: torch.load(path, map_location='cpu', weights_only=True)),  # Tensors.
    (2, torch_pickle.load_state_dict),  # NumPy arrays, as training reads them.
], ids=['M1-torch.load', 'M2-torch_pickle'])
def test_resnet50_matches_torchvision(torchvision_resnet50, num_modalities, reader):
  path, image, expected = torchvision_resnet50
  state_dict = reader(path)
  variables = convert.resnet_from_torch(state_dict, num_modalities)
  model = ResNet(depth=50, fusion='none')
  images = np.repeat(image[None], num_modalities, axis=0)  # The same image in every modality.
  features = jax.jit(model.apply)(variables, images)
  for stage, want in zip(('l1', 'l2', 'l3', 'l4'), expected):
    assert features[stage].shape == (num_modalities,) + want.shape
    for m in range(num_modalities):
      assert relative_error(features[stage][m], want) < TOLERANCE, (stage, m)


def run_reference(model, images):
  """The torch model's M + 1 outputs for (M, B, H, W, 3) images, stacked: (M + 1, B, h, w, K)."""
  with torch.no_grad():
    outputs = model([torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in images])
  return np.stack([nhwc(o) for o in outputs])


@pytest.mark.parametrize('num_modalities,fuse', [(2, True), (3, True), (2, False), (1, True)])
def test_refinenet_matches_torch_reference(num_modalities, fuse):
  """All M branch outputs and the ensemble; M = 3 checks the cyclic partner rule (m + 1) mod M."""
  reference = torch_reference.tiny_refinenet(num_modalities, fusion=fuse)
  images = np.random.default_rng(0).normal(size=(num_modalities, 2, 37, 45, 3)).astype(np.float32)
  expected = run_reference(reference, images)

  variables = convert.refinenet_from_torch(reference.state_dict())
  tiny = torch_reference.TINY
  model = RefineNet(depth=torch_reference.TINY_DEPTH, num_classes=tiny['num_classes'],
                    num_modalities=num_modalities, fusion='asym' if fuse else 'none', width=tiny['width'],
                    decoder_width=tiny['decoder_width'])
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert logits.shape == expected.shape == (num_modalities + 1, 2, 10, 12, tiny['num_classes'])
  for k in range(num_modalities + 1):
    assert relative_error(logits[k], expected[k]) < TOLERANCE, k


@pytest.mark.parametrize('num_modalities', [1, 2, 3])
@pytest.mark.parametrize('channels', [5, 13, 24])
def test_fusion_operations_match_torch(num_modalities, channels):
  x = np.random.default_rng(channels).normal(size=(num_modalities, 2, 7, 6, channels))
  x = x.astype(np.float32)
  tensors = [torch.from_numpy(xm.transpose(0, 3, 1, 2).copy()) for xm in x]
  shuffled = np.stack([nhwc(t) for t in torch_reference.channel_shuffle(tensors)])
  np.testing.assert_array_equal(fusion.channel_shuffle(x), shuffled)
  for reverse in (False, True):
    shifted = np.stack([nhwc(torch_reference.pixel_shift(t, reverse)) for t in tensors])
    np.testing.assert_array_equal(fusion.pixel_shift(x, reverse=reverse), shifted)


@pytest.mark.parametrize('blocks,num_modalities,expected', [
    ((3, 4, 23, 3), 2, 118_201_578),
    ((3, 4, 23, 3), 1, 118_096_233),
    ((3, 4, 23, 3), 3, 118_306_923),
    ((3, 8, 36, 3), 2, 133_891_306),
    ((3, 4, 6, 3), 2, 99_157_226),
])
def test_reference_parameter_counts(blocks, num_modalities, expected):
  """The torch reference at full size has docs/method.md section 7's counts (test_models checks
  ours)."""
  with torch.device('meta'):
    reference = torch_reference.RefineNet(blocks=blocks, num_parallel=num_modalities)
  assert sum(p.numel() for p in reference.parameters()) == expected


def test_full_size_reference_state_dict_converts():
  """RefineNet-101's real key names (layer3.22, ...) and shapes convert to the model's layout."""
  with torch.device('meta'):
    reference = torch_reference.RefineNet(blocks=(3, 4, 23, 3), num_parallel=2)
  # Zero-stride NumPy arrays of the right shapes: the keys and shapes are what is checked here.
  state_dict = {k: np.broadcast_to(np.zeros((), np.float32 if v.is_floating_point() else np.int64),
                                   tuple(v.shape))
                for k, v in reference.state_dict().items()}
  variables = convert.refinenet_from_torch(state_dict, num_modalities=2)
  model = RefineNet(depth=101, num_modalities=2)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((2, 1, 64, 64, 3), np.float32)))
  assert jax.tree.structure(variables) == jax.tree.structure(abstract)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda x: x.shape, abstract)
