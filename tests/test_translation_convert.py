"""Importing CEN-layout PyTorch translation models, checked against the independent PyTorch
generator and discriminator of tests/torch_unet.py.

Same weights must give the same outputs (float32, eval mode: no dropout, instance statistics)
to 1e-5 relative. The fusion placement is checked by running the PyTorch reference with the
JAX fusion operations inserted, through NumPy, where docs/method.md section 11 puts them.
"""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from asymfusion_jax import convert
from asymfusion_jax import fusion
from asymfusion_jax import torch_pickle
from asymfusion_jax import variables_io
from asymfusion_jax.models import PatchDiscriminator, UNetGenerator
from tests import torch_unet

torch.set_num_threads(2)
TOLERANCE = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(ngf=8, num_downs=6)


def relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def jax_fuse(xs):
  """The JAX fusion of a list of NCHW torch tensors (one per modality), through NumPy."""
  stacked = jnp.asarray(np.stack([x.numpy() for x in xs]).transpose(0, 1, 3, 4, 2))
  fused = fusion.channel_shuffle(stacked) + jnp.roll(fusion.pixel_shift(stacked), -1, axis=0)
  return list(torch.from_numpy(np.asarray(fused).transpose(0, 1, 4, 2, 3).copy()))


def torch_generator(num_modalities, seed=0, **kwargs):
  torch.manual_seed(seed)
  net = torch_unet.Generator(num_modalities, **kwargs)
  return torch_unet.randomise(net, seed + 1).eval()


def run_both(net, params, model, images):
  """(JAX outputs, PyTorch outputs), both (M + 1, B, H, W, 3), for NCHW images (M, B, 3, H, W)."""
  with torch.no_grad():
    want = torch.stack(net(list(images))).numpy().transpose(0, 1, 3, 4, 2)
  got = jax.jit(model.apply)({'params': params}, images.numpy().transpose(0, 1, 3, 4, 2))
  return np.asarray(got), want


def images(num_modalities, size, seed=2, batch=2):
  return torch.rand(num_modalities, batch, 3, size, size,
                    generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize('num_modalities,reader', [
    (1, lambda path: torch.load(path, map_location='cpu', weights_only=True)),  # Tensors.
    (2, torch_pickle.load_state_dict),  # NumPy arrays, as the CLI reads them.
], ids=['M1-torch.load', 'M2-torch_pickle'])
def test_generator_matches_pytorch(tmp_path, num_modalities, reader):
  net = torch_generator(num_modalities, **SMALL)
  torch.save(net.state_dict(), tmp_path / 'generator.pth')
  params = convert.unet_from_torch(reader(tmp_path / 'generator.pth'), num_modalities)
  model = UNetGenerator(num_modalities, **SMALL, fusion='none')
  got, want = run_both(net, params, model, images(num_modalities, 64))
  assert got.shape == want.shape == (num_modalities + 1, 2, 64, 64, 3)
  for branch in range(num_modalities + 1):
    assert relative_error(got[branch], want[branch]) < TOLERANCE, branch


def test_fused_generator_matches_pytorch_with_jax_fusion_inserted():
  """Three modalities, fusion after the IN of encoder blocks 2, 4 and 5."""
  blocks = (2, 4, 5)
  net = torch_generator(3, seed=3, fusion_blocks=blocks, fuse=jax_fuse, **SMALL)
  params = convert.unet_from_torch(net.state_dict())
  got, want = run_both(net, params, UNetGenerator(3, **SMALL, fusion_blocks=blocks),
                       images(3, 64, batch=1))
  assert relative_error(got, want) < TOLERANCE
  unfused, _ = run_both(net, params, UNetGenerator(3, **SMALL, fusion='none'),
                        images(3, 64, batch=1))
  assert relative_error(unfused, want) > 1e-2  # The fusion matters here.


def test_full_depth_generator_matches_pytorch_at_256():
  """The paper's 8 levels and fusion blocks 2..7 at 256x256, at a tiny width (5: every block
  has channel groups for the pixel shift)."""
  net = torch_generator(2, seed=5, ngf=5, num_downs=8, fusion_blocks=(2, 3, 4, 5, 6, 7),
                        fuse=jax_fuse)
  params = convert.unet_from_torch(net.state_dict())
  got, want = run_both(net, params, UNetGenerator(2, ngf=5), images(2, 256, batch=1))
  assert relative_error(got, want) < TOLERANCE


def test_discriminator_matches_pytorch():
  torch.manual_seed(6)
  net = torch_unet.randomise(torch_unet.Discriminator(ndf=8), 7).eval()
  params = convert.patchgan_from_torch(net.state_dict())
  x = torch.randn(3, 6, 64, 96, generator=torch.Generator().manual_seed(8))
  with torch.no_grad():
    want = net([x])[0].numpy().transpose(0, 2, 3, 1)
  got = PatchDiscriminator(ndf=8).apply({'params': params}, x.numpy().transpose(0, 2, 3, 1))
  assert got.shape == want.shape == (3, 6, 10, 1)
  assert relative_error(got, want) < TOLERANCE


def test_pytorch_reference_has_cens_layout_and_the_spec_parameter_count():
  """Full size: CEN's keys, and its parameters less the never-applied norms (encoder blocks 1
  and 8, decoder block 8; discriminator blocks 1 and 5) are the JAX models' counts."""
  net = torch_unet.Generator(2)
  state_dict = net.state_dict()
  for key in ('alpha', 'conv1.conv.module.weight', 'conv8.conv.module.bias',
              'conv1.insnorm_conv.insnorm_1.running_var',
              'conv4.insnorm_conv.insnorm_0.num_batches_tracked',
              'deconv8.deconv.module.weight', 'deconv8.insnorm_deconv.insnorm_1.weight'):
    assert key in state_dict, key
  assert state_dict['deconv8.deconv.module.weight'].shape == (128, 3, 4, 4)
  unused = ('conv1.insnorm', 'conv8.insnorm', 'deconv8.insnorm')
  used = sum(p.numel() for name, p in net.named_parameters() if not name.startswith(unused))
  assert used == 54_429_317
  discriminator = torch_unet.Discriminator()
  assert sum(p.numel() for name, p in discriminator.named_parameters()
             if not name.startswith(('conv1.insnorm', 'conv5.insnorm'))) == 2_769_601


def test_import_ignores_running_statistics_and_unused_norms():
  """They may be absent, their values do not matter; the affine parameters do."""
  state_dict = {k: v.numpy() for k, v in torch_generator(2, **SMALL).state_dict().items()}
  params = convert.unet_from_torch(state_dict)
  unused = ('conv1.insnorm', 'conv6.insnorm', 'deconv6.insnorm')
  lean = {k: v for k, v in state_dict.items()
          if not k.startswith(unused) and 'running' not in k and 'num_batches' not in k}
  assert len(lean) < len(state_dict) - 40
  jax.tree.map(np.testing.assert_array_equal, convert.unet_from_torch(lean), params)
  np.testing.assert_array_equal(params['conv3']['insnorm_conv']['scale'][1],
                                state_dict['conv3.insnorm_conv.insnorm_1.weight'])
  np.testing.assert_array_equal(params['deconv2']['deconv']['kernel'],
                                state_dict['deconv2.deconv.module.weight'].transpose(2, 3, 1, 0))


def test_import_names_every_bad_key():
  state_dict = {'module.' + k: v for k, v in torch_generator(2, **SMALL).state_dict().items()}
  del state_dict['module.deconv3.insnorm_deconv.insnorm_1.bias']
  state_dict['module.conv9.conv.module.weight'] = torch.zeros(3)
  state_dict['module.conv6.insnorm_conv.insnorm_0.running_mean'] = torch.zeros(5)
  with pytest.raises(ValueError) as error:
    convert.unet_from_torch(state_dict, model=UNetGenerator(2, **SMALL, fusion='none'))
  message = str(error.value)
  assert 'missing keys (1):\n    deconv3.insnorm_deconv.insnorm_1.bias' in message
  assert 'unexpected keys (1):\n    conv9.conv.module.weight' in message
  assert 'conv6.insnorm_conv.insnorm_0.running_mean: got (5,), expected (64,)' in message
  with pytest.raises(ValueError, match=r'num_modalities=3 disagrees'):
    convert.unet_from_torch(torch_generator(2, **SMALL).state_dict(), num_modalities=3)
  with pytest.raises(ValueError, match="looks like CEN's discriminator"):
    convert.unet_from_torch(torch_unet.Discriminator(8).state_dict())


# The command line.

CONFIG_FILE = '''
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.task = 'translation'
  c.modalities = ('reshading', 'depth_euclidean')
  c.target = 'rgb'
  c.compute_dtype = 'float32'
  c.model = ml_collections.ConfigDict(dict(
      name='unet', ngf=8, ndf=8, num_downs=6, fusion='asym', fusion_blocks=(2, 3, 4, 5),
      dropout_rate=0.5, kernels='auto'))
  return c
'''


def test_cli_converts_generator_and_discriminator_without_torch(tmp_path):
  generator = {'module.' + k: v for k, v in torch_generator(2, **SMALL).state_dict().items()}
  discriminator = torch_unet.randomise(torch_unet.Discriminator(ndf=8), 9).state_dict()
  torch.save(generator, tmp_path / 'G.pth')
  torch.save(discriminator, tmp_path / 'D.pth')
  (tmp_path / 'translation_config.py').write_text(CONFIG_FILE)
  out = tmp_path / 'converted'
  no_torch = ("import runpy, sys; sys.modules['torch'] = None; "
              "runpy.run_module('asymfusion_jax.convert', run_name='__main__', alter_sys=True)")
  args = ['--torch', str(tmp_path / 'G.pth'), '--torch_discriminator', str(tmp_path / 'D.pth'),
          '--config', str(tmp_path / 'translation_config.py'), '--out', str(out)]
  result = subprocess.run([sys.executable, '-c', no_torch] + args, cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = variables_io.load_variables(out)
  expected = convert.translation_from_torch(generator, discriminator)
  assert loaded['batch_stats'] == {} and sorted(loaded['params']) == ['discriminator', 'generator']
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  count = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(loaded))
  assert f'wrote {count} parameters' in result.stderr


def test_convert_file_names_the_file_at_fault(tmp_path):
  torch.save(torch_generator(2, **SMALL).state_dict(), tmp_path / 'G.pth')
  torch.save(torch_unet.Discriminator(16).state_dict(), tmp_path / 'D.pth')
  config_path = tmp_path / 'translation_config.py'
  config_path.write_text(CONFIG_FILE)
  from asymfusion_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(str(config_path))
  with pytest.raises(ValueError, match=r'D\.pth: the state_dict does not match CEN\'s '
                                       r'discriminator for PatchDiscriminator\(ndf=8\)'):
    convert.convert_file(str(tmp_path / 'G.pth'), config, str(tmp_path / 'out'),
                         discriminator_path=str(tmp_path / 'D.pth'))
  torch.save({'conv1.weight': torch.zeros(8, 3, 7, 7)}, tmp_path / 'resnet.pth')
  with pytest.raises(ValueError, match=r"D\.pth: a discriminator goes with CEN's translation "
                                       r'generator, but .*resnet\.pth is not one'):
    convert.convert_file(str(tmp_path / 'resnet.pth'), config, str(tmp_path / 'out'),
                         discriminator_path=str(tmp_path / 'D.pth'))
  config.model.ngf = 16
  with pytest.raises(ValueError, match=r'(?s)G\.pth: .*conv1\.conv\.module\.weight: got '
                                       r'\(8, 3, 4, 4\), expected \(16, 3, 4, 4\)'):
    convert.convert_file(str(tmp_path / 'G.pth'), config, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()
