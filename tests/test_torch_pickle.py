"""asymfusion_jax.torch_pickle reads what torch.save writes, in both formats, and nothing else.

torch is the reference: every tensor read back must equal the tensor saved (dtype, shape,
values), whatever its strides, offset or storage sharing. Files that could run code or that
describe tensors outside their storage are refused with an error that names the file.
"""

import pickle

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

from asymfusion_jax import convert, torch_pickle
from tests import torch_reference

FORMATS = {'zip': True, 'legacy': False}  # torch.save's _use_new_zipfile_serialization.


def save(obj, path, fmt):
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
  return str(path)


def tensors():
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  return {
      'float': torch.randn(3, 5, generator=torch.Generator().manual_seed(0)),
      'double': torch.randn(2, 2, dtype=torch.float64),
      'half': torch.randn(4, dtype=torch.float16),
      'bfloat16': torch.tensor([1.5, -2.25, 3e-3], dtype=torch.bfloat16),
      'long': torch.tensor([2**40, -7]),
      'int': torch.tensor([1, 2], dtype=torch.int32),
      'byte': torch.tensor([0, 255], dtype=torch.uint8),
      'bool': torch.tensor([True, False]),
      'scalar': torch.tensor(7),
      'empty': torch.zeros(0, 3),
      'transposed': base.t(),  # Non-contiguous strides.
      'slice': base[1:, 2:],  # An offset into a storage shared with 'transposed'.
      'parameter': torch.nn.Parameter(torch.ones(2, 3)),
  }


def as_numpy(tensor):
  tensor = tensor.detach()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


@pytest.mark.parametrize('fmt', FORMATS)
def test_reads_every_dtype_stride_and_offset_exactly(tmp_path, fmt):
  saved = tensors()
  loaded = torch_pickle.load_state_dict(save(saved, tmp_path / 'm.pth', fmt))
  assert list(loaded) == list(saved)
  for key, tensor in saved.items():
    expected = as_numpy(tensor)
    assert loaded[key].dtype == expected.dtype and loaded[key].shape == expected.shape, key
    np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
    assert loaded[key].flags.writeable, key  # A copy, not a view of the file's bytes.


@pytest.mark.parametrize('fmt', FORMATS)
def test_unwraps_the_reference_training_checkpoint(tmp_path, fmt):
  """The reference saves {'segmenter': ..., 'epoch_start': ..., 'best_val': numpy.float64}."""
  state_dict = {'module.' + k: v for k, v in torch_reference.tiny_refinenet(2).state_dict().items()}
  checkpoint = {'segmenter': state_dict, 'epoch_start': 42, 'best_val': np.float64(50.8)}
  loaded = torch_pickle.load_state_dict(save(checkpoint, tmp_path / 'model-best.pth.tar', fmt))
  assert list(loaded) == list(state_dict)
  for key, tensor in state_dict.items():
    np.testing.assert_array_equal(loaded[key], tensor.numpy(), err_msg=key)
  # And so it converts like the bare state_dict does.
  expected = convert.refinenet_from_torch(state_dict)
  assert_trees_equal(convert.refinenet_from_torch(loaded), expected)


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_other_wrappers_and_ambiguity(tmp_path):
  weights = {'w': torch.ones(2)}
  for wrapper in ('state_dict', 'model', 'anything'):
    path = save({wrapper: weights, 'epoch': 3, 'optimizer': {'state': {}, 'param_groups': []}},
                tmp_path / f'{wrapper}.pth', 'zip')
    np.testing.assert_array_equal(torch_pickle.load_state_dict(path)['w'], np.ones(2, np.float32))
  path = save({'a': weights, 'b': weights}, tmp_path / 'two.pth', 'zip')
  with pytest.raises(ValueError, match=r"two\.pth holds several state_dicts, under \['a', 'b'\]"):
    torch_pickle.load_state_dict(path)
  path = save({'epoch': 3}, tmp_path / 'none.pth', 'legacy')
  with pytest.raises(ValueError, match=r"none\.pth holds no state_dict .*\['epoch'\]"):
    torch_pickle.load_state_dict(path)


class _RunsCode:

  def __reduce__(self):
    return (print, ('this must not run',))


@pytest.mark.parametrize('fmt', FORMATS)
def test_refuses_globals_that_could_run_code(tmp_path, fmt, capsys):
  path = save({'w': torch.ones(2), 'evil': _RunsCode()}, tmp_path / 'evil.pth', fmt)
  with pytest.raises(ValueError, match=r'evil\.pth: .*(__builtin__|builtins)\.print is not allowed'):
    torch_pickle.load_state_dict(path)
  assert 'this must not run' not in capsys.readouterr().out


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
  assert data.count(old) == 1, data.count(old)
  return data.replace(old, new)


def test_refuses_a_tensor_larger_than_its_storage(tmp_path):
  """A legacy file whose pickle claims a (4, 1000) tensor over a storage of 4 floats."""
  path = save({'w': torch.ones(4, 10)}, tmp_path / 'w.pth', 'legacy')
  data = open(path, 'rb').read()
  # The size tuple (4, 10) and the stride tuple (10, 1), as pickle protocol 2 writes them.
  size = pickle.BININT1 + bytes([4]) + pickle.BININT1 + bytes([10]) + pickle.TUPLE2
  bigger = pickle.BININT1 + bytes([4]) + pickle.BININT2 + (1000).to_bytes(2, 'little') + pickle.TUPLE2
  with open(path, 'wb') as f:
    f.write(_patched(data, size, bigger))
  with pytest.raises(ValueError, match=r'w\.pth: a tensor of size \(4, 1000\) .* overruns'):
    torch_pickle.load_state_dict(path)


@pytest.mark.parametrize('fmt', FORMATS)
def test_truncated_and_foreign_files_name_the_file(tmp_path, fmt):
  path = save({'w': torch.ones(100)}, tmp_path / 'cut.pth', fmt)
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) - 300])
  with pytest.raises(ValueError, match=r'cut\.pth'):
    torch_pickle.load_state_dict(path)
  (tmp_path / 'text.pth').write_text('not a checkpoint')
  with pytest.raises(ValueError, match=r'text\.pth: not a readable torch checkpoint'):
    torch_pickle.load_state_dict(str(tmp_path / 'text.pth'))


def test_bfloat16_torch_tensors_convert():
  """convert takes torch tensors directly; NumPy has no bfloat16, so they go through float32."""
  state_dict = torch_reference.tiny_refinenet(2).state_dict()
  as_bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in state_dict.items()}
  expected = convert.refinenet_from_torch(
      {k: v.float() if v.is_floating_point() else v for k, v in as_bf16.items()})
  assert_trees_equal(convert.refinenet_from_torch(as_bf16), expected)
