"""Weight conversion (asymfusion_jax.convert), the variables checkpoint (variables_io) and the CLI.

The state_dicts come from the tiny PyTorch reference in tests/torch_reference.py, with random
weights, BatchNorm statistics and num_batches_tracked counters.
"""

import os
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import pytest
import torch

from asymfusion_jax import convert
from asymfusion_jax import variables_io
from asymfusion_jax.models import RefineNet, ResNet
from configs import nyudv2_refinenet101
from tests import torch_reference

torch.set_num_threads(2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = torch_reference.TINY
TINY_OVERRIDES = {'model.depth': torch_reference.TINY_DEPTH, 'model.width': TINY['width'],
                  'model.decoder_width': TINY['decoder_width'],
                  'model.num_classes': TINY['num_classes']}


def reference_state_dict(num_modalities=2, prefix=''):
  state_dict = torch_reference.tiny_refinenet(num_modalities).state_dict()
  return {prefix + k: v for k, v in state_dict.items()}


def torchvision_layout(state_dict):
  """The encoder of a one-modality reference state_dict under torchvision's names, plus an fc."""
  out = {k.replace('.module.', '.').replace('.bn_0.', '.'): v for k, v in state_dict.items()
         if k.split('.')[0] in ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4')}
  out['fc.weight'] = torch.randn(1000, 32 * TINY['width'])
  out['fc.bias'] = torch.randn(1000)
  return out


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def tiny_config(**overrides):
  config = nyudv2_refinenet101.get_config()
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


# torch -> Flax -> torch.


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_round_trip_gives_back_every_key_and_value(prefix):
  state_dict = reference_state_dict(prefix=prefix)
  variables = convert.refinenet_from_torch(state_dict)
  back = convert.refinenet_to_torch(variables, num_batches_tracked=state_dict, prefix=prefix)
  assert set(back) == set(state_dict)
  for key, tensor in state_dict.items():
    expected = tensor.numpy()
    assert back[key].dtype == expected.dtype and back[key].shape == expected.shape, key
    np.testing.assert_array_equal(back[key], expected, err_msg=key)
  counters = [k for k in state_dict if k.endswith('.num_batches_tracked')]
  assert counters and any(int(state_dict[k]) != 0 for k in counters)


def test_flax_torch_flax_round_trip():
  variables = convert.refinenet_from_torch(reference_state_dict(3))
  assert_trees_equal(convert.refinenet_from_torch(convert.refinenet_to_torch(variables)),
                     variables)


def test_export_loads_into_torch_and_computes_the_same():
  """Default counters are int64 zeros, and the export is a working reference model."""
  original = torch_reference.tiny_refinenet(2)
  exported = convert.refinenet_to_torch(convert.refinenet_from_torch(original.state_dict()))
  counters = {k: v for k, v in exported.items() if k.endswith('.num_batches_tracked')}
  assert counters and all(v.dtype == np.int64 and v.shape == () and v == 0
                          for v in counters.values())
  loaded = torch_reference.RefineNet(num_parallel=2, **TINY).eval()
  loaded.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  images = list(torch.randn(2, 1, 3, 33, 41, generator=torch.Generator().manual_seed(3)))
  with torch.no_grad():
    for want, got in zip(original(images), loaded(images)):
      torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_num_batches_tracked_is_optional():
  state_dict = reference_state_dict()
  without = {k: v for k, v in state_dict.items() if not k.endswith('.num_batches_tracked')}
  assert_trees_equal(convert.refinenet_from_torch(without),
                     convert.refinenet_from_torch(state_dict))


def test_missing_counter_in_export_mapping_is_named():
  state_dict = reference_state_dict()
  variables = convert.refinenet_from_torch(state_dict)
  del state_dict['layer2.1.bn3.bn_1.num_batches_tracked']
  with pytest.raises(ValueError, match=r'layer2\.1\.bn3\.bn_1\.num_batches_tracked'):
    convert.refinenet_to_torch(variables, num_batches_tracked=state_dict)


# Errors name the offending keys.


def _drop(key):
  def edit(sd):
    del sd[key]
  return edit


def _set(key, value):
  def edit(sd):
    sd[key] = value
  return edit


@pytest.mark.parametrize('edit,pattern', [
    (_drop('layer2.1.conv2.module.weight'),
     r'missing keys \(1\):\s+layer2\.1\.conv2\.module\.weight'),
    (_drop('mflow_conv_g3_pool.0.2_outvar_dimred.module.weight'),
     r'missing keys \(1\):\s+mflow_conv_g3_pool\.0\.2_outvar_dimred\.module\.weight'),
    (_drop('layer4.0.downsample.1.bn_1.running_var'),
     r'missing keys \(1\):\s+layer4\.0\.downsample\.1\.bn_1\.running_var'),
    (_set('decoder.extra.weight', torch.zeros(3)),
     r'unexpected keys \(1\):\s+decoder\.extra\.weight'),
    (_set('layer1.0.bn2.bn_2.weight', torch.zeros(8)),
     r'unexpected keys \(1\):\s+layer1\.0\.bn2\.bn_2\.weight'),
    (_set('clf_conv.module.bias', torch.zeros(7)),
     r'clf_conv\.module\.bias: got \(7,\), expected \(5,\)'),
    (_set('layer3.1.conv2.module.weight', torch.zeros(32, 32, 1, 3)),
     r'layer3\.1\.conv2\.module\.weight: got \(32, 32, 1, 3\), expected \(32, 32, 3, 3\)'),
    (_set('bn1.bn_0.num_batches_tracked', torch.zeros(2, dtype=torch.int64)),
     r'bn1\.bn_0\.num_batches_tracked: got \(2,\), expected \(\)'),
])
def test_refinenet_state_dict_errors_name_the_key(edit, pattern):
  state_dict = reference_state_dict()
  edit(state_dict)
  with pytest.raises(ValueError, match=pattern):
    convert.refinenet_from_torch(state_dict)


def test_refinenet_errors_against_a_given_model():
  state_dict = reference_state_dict()
  with pytest.raises(ValueError, match=r'num_modalities=3'):
    convert.refinenet_from_torch(state_dict, num_modalities=3)
  deeper = RefineNet(depth=50, num_classes=5, num_modalities=2, width=8, decoder_width=16)
  with pytest.raises(ValueError, match=r'missing keys \(\d+\):\n\s+layer1\.2\.'):
    convert.refinenet_from_torch(state_dict, model=deeper)
  more_classes = RefineNet(depth=26, num_classes=40, num_modalities=2, width=8, decoder_width=16)
  with pytest.raises(ValueError, match=r'clf_conv\.module\.weight: got \(5, 16, 3, 3\), '
                                       r'expected \(40, 16, 3, 3\)'):
    convert.refinenet_from_torch(state_dict, model=more_classes)


def test_refinenet_rejects_other_layouts():
  state_dict = reference_state_dict(1)
  with pytest.raises(ValueError, match=r'bn1\.bn_0\.weight.*torchvision.*resnet_from_torch'):
    convert.refinenet_from_torch(torchvision_layout(state_dict))
  for i in range(2):
    for key in [k for k in state_dict if k.startswith(f'layer3.{i}.')]:
      state_dict[key.replace('layer3.', 'layer3.x')] = state_dict.pop(key)
  with pytest.raises(ValueError, match=r'\(2, 2, 0, 2\) blocks per stage'):
    convert.refinenet_from_torch(state_dict)


# torchvision ResNet -> backbone.


def test_resnet_from_torch_layout_and_modality_copies():
  reference = reference_state_dict(1)
  torchvision_sd = torchvision_layout(reference)
  expected = convert.refinenet_from_torch(reference)
  one = convert.resnet_from_torch(torchvision_sd, 1)
  assert_trees_equal(one, {name: expected[name]['backbone'] for name in ('params', 'batch_stats')})

  # Tensors or NumPy arrays, with or without DataParallel's prefix, give the same variables.
  as_numpy = {'module.' + k: v.numpy() for k, v in torchvision_sd.items()}
  three = convert.resnet_from_torch(as_numpy, 3)
  assert jax.tree.structure(three) == jax.tree.structure(one)

  def check(path, a, b):
    if path[-1].key in ('scale', 'bias', 'mean', 'var'):  # (M, C): every row is the ImageNet BN.
      assert a.shape == (3,) + b.shape[1:]
      np.testing.assert_array_equal(a, np.repeat(b, 3, axis=0))
    else:
      np.testing.assert_array_equal(a, b)

  jax.tree_util.tree_map_with_path(check, three, one)


@pytest.mark.parametrize('edit,pattern', [
    (_drop('layer3.1.bn1.running_mean'), r'missing keys \(1\):\s+layer3\.1\.bn1\.running_mean'),
    (_set('conv1.weight', torch.zeros(8, 3, 3, 3)),
     r'conv1\.weight: got \(8, 3, 3, 3\), expected \(8, 3, 7, 7\)'),
    (_set('layer1.0.bn1.bn_0.weight', torch.zeros(8)),
     r'unexpected keys \(1\):\s+layer1\.0\.bn1\.bn_0\.weight'),
])
def test_resnet_state_dict_errors_name_the_key(edit, pattern):
  state_dict = torchvision_layout(reference_state_dict(1))
  edit(state_dict)
  with pytest.raises(ValueError, match=pattern):
    convert.resnet_from_torch(state_dict, 2)


def test_resnet_from_torch_checks_a_given_model():
  state_dict = torchvision_layout(reference_state_dict(1))
  with pytest.raises(ValueError,
                     match=r'conv1\.weight: got \(8, 3, 7, 7\), expected \(16, 3, 7, 7\)'):
    convert.resnet_from_torch(state_dict, 2, model=ResNet(depth=26, width=16))


# variables_io.


def test_variables_round_trip(tmp_path):
  variables = convert.refinenet_from_torch(reference_state_dict())
  path = variables_io.save_variables(tmp_path / 'ckpt', variables)
  assert path == str(tmp_path / 'ckpt')
  assert_trees_equal(variables_io.load_variables(path), variables)

  model = RefineNet(depth=26, num_classes=5, num_modalities=2, width=8, decoder_width=16)
  target = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((2, 1, 32, 32, 3), np.float32)))
  assert_trees_equal(variables_io.load_variables(path, target), variables)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  placed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
  restored = variables_io.load_variables(path, placed)
  assert all(isinstance(x, jax.Array) and x.sharding == device for x in jax.tree.leaves(restored))
  assert_trees_equal(jax.tree.map(np.asarray, restored), variables)


def test_variables_relative_path_and_overwrite(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  first = {'params': {'w': np.ones((2, 3), np.float32)}, 'batch_stats': {'m': np.zeros(3)}}
  second = {'params': {'w': np.full((2, 3), 2.0, np.float32)}, 'batch_stats': {'m': np.ones(3)}}
  assert variables_io.save_variables('rel', first) == str(tmp_path / 'rel')
  with pytest.raises(ValueError, match='already exists'):
    variables_io.save_variables('rel', second)
  variables_io.save_variables('rel', second, overwrite=True)
  assert_trees_equal(variables_io.load_variables('rel'), second)


def test_variables_errors_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'absent')):
    variables_io.load_variables(tmp_path / 'absent')
  (tmp_path / 'plain').mkdir()
  with pytest.raises(ValueError, match=f'{tmp_path / "plain"} is not an orbax'):
    variables_io.load_variables(tmp_path / 'plain')
  with pytest.raises(ValueError, match='exactly the collections'):
    variables_io.save_variables(tmp_path / 'x', {'params': {}, 'opt_state': {}})

  variables = {'params': {'w': np.ones((2, 3), np.float32)}, 'batch_stats': {'m': np.zeros(3)}}
  path = variables_io.save_variables(tmp_path / 'ckpt', variables)
  wrong_shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct((4,) + x.shape, x.dtype), variables)
  with pytest.raises(ValueError,
                     match=r"\['params'\]\['w'\]: checkpoint \(2, 3\), target \(4, 2, 3\)"):
    variables_io.load_variables(path, wrong_shape)
  wrong_tree = {'params': {'v': jax.ShapeDtypeStruct((2, 3), np.float32)},
                'batch_stats': {'m': jax.ShapeDtypeStruct((3,), np.float64)}}
  with pytest.raises(ValueError, match=f'checkpoint {path} does not match'):
    variables_io.load_variables(path, wrong_tree)


# The command line.


def test_importing_convert_defines_no_flags():
  assert 'torch' not in flags.FLAGS and 'overwrite' not in flags.FLAGS


_LAZY_IMPORTS = """
import sys
import asymfusion_jax.convert as convert
loaded = lambda: sorted(m for m in sys.modules if m.startswith('asymfusion_jax.convert.'))
assert loaded() == [], loaded()  # The package alone loads no converter.
import asymfusion_jax.fid
assert loaded() == ['asymfusion_jax.convert.inception', 'asymfusion_jax.convert.keys'], loaded()
for name in convert.__all__:
  assert getattr(convert, name) is getattr(
      sys.modules['asymfusion_jax.convert.' + convert._EXPORTS[name]], name), name
assert 'tensorflow' not in sys.modules
try:
  convert.no_such_name
except AttributeError as e:
  assert 'no_such_name' in str(e)
else:
  raise AssertionError('no AttributeError')
"""


def test_importing_convert_loads_converters_on_first_use():
  """`import asymfusion_jax.convert` loads no converter; fid loads only the Inception one; every
  public name resolves from the package to its module's object; TensorFlow stays unloaded."""
  result = subprocess.run([sys.executable, '-c', _LAZY_IMPORTS], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  documented = {'resnet_from_torch', 'refinenet_from_torch', 'refinenet_to_torch',
                'deeplab_from_tf', 'inception_from_torch', 'inception_to_torch',
                'load_inception_file', 'unet_from_torch', 'patchgan_from_torch',
                'translation_from_torch', 'convert_file', 'convert_inception_file',
                'convert_tf_file', 'read_tf_checkpoint'}
  assert documented <= set(convert.__all__)


@pytest.mark.parametrize('layout', ['state_dict', 'reference_checkpoint'])
def test_cli_converts_a_reference_pth_without_torch(tmp_path, layout):
  """`python -m asymfusion_jax.convert` on a torch.save'd DataParallel state_dict, with torch
  made unimportable in the converting process.

  'reference_checkpoint' is the file the reference's training writes (model-best.pth.tar):
  {'segmenter': state_dict, 'epoch_start': int, 'best_val': numpy.float64}, in the legacy
  (pre-zip) format of the PyTorch 1.0 it ran on.
  """
  state_dict = reference_state_dict(prefix='module.')
  if layout == 'state_dict':
    torch.save(state_dict, tmp_path / 'refinenet.pth')
  else:
    checkpoint = {'segmenter': state_dict, 'epoch_start': 42, 'best_val': np.float64(50.8)}
    torch.save(checkpoint, tmp_path / 'refinenet.pth', _use_new_zipfile_serialization=False)
  out = tmp_path / 'converted'
  no_torch = ("import runpy, sys; sys.modules['torch'] = None; "
              "runpy.run_module('asymfusion_jax.convert', run_name='__main__', alter_sys=True)")
  args = [f'--torch={tmp_path / "refinenet.pth"}', f'--out={out}',
          '--config=configs/nyudv2_refinenet101.py']
  args += [f'--config.{k}={v}' for k, v in TINY_OVERRIDES.items()]
  result = subprocess.run([sys.executable, '-c', no_torch] + args, cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_trees_equal(variables_io.load_variables(out), convert.refinenet_from_torch(state_dict))


def test_convert_file_torchvision_writes_the_backbone_only(tmp_path):
  state_dict = torchvision_layout(reference_state_dict(1))
  torch.save({'state_dict': state_dict}, tmp_path / 'resnet.pth')
  convert.convert_file(str(tmp_path / 'resnet.pth'), tiny_config(), str(tmp_path / 'out'))
  backbone = convert.resnet_from_torch(state_dict, 2)
  assert_trees_equal(variables_io.load_variables(tmp_path / 'out'),
                     {name: {'backbone': backbone[name]} for name in ('params', 'batch_stats')})


def test_convert_file_checks_the_config(tmp_path):
  torch.save(reference_state_dict(), tmp_path / 'refinenet.pth')
  with pytest.raises(ValueError, match=r'clf_conv\.module\.weight: got \(5, 16, 3, 3\), '
                                       r'expected \(40, 16, 3, 3\)'):
    convert.convert_file(str(tmp_path / 'refinenet.pth'), tiny_config(**{'model.num_classes': 40}),
                         str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()
