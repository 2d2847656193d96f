"""asymfusion_jax.torch_pickle reads what torch.save writes, in both formats, and nothing else.

torch is the reference: every tensor read back must equal the tensor saved (dtype, shape,
values), whatever its strides, offset or storage sharing. Files that could run code or that
describe tensors outside their storage are refused with an error that names the file.
"""

import pickle
import struct
import subprocess
import sys
import zipfile

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


def test_refuses_a_tensor_that_overruns_its_storage(tmp_path):
  """A legacy file whose (4, 10) tensor of 40 floats claims strides (100, 1)."""
  path = save({'w': torch.ones(4, 10)}, tmp_path / 'w.pth', 'legacy')
  data = open(path, 'rb').read()
  # The stride tuple (10, 1) as pickle protocol 2 writes it, and (100, 1).
  stride = pickle.BININT1 + bytes([10]) + pickle.BININT1 + bytes([1]) + pickle.TUPLE2
  wider = pickle.BININT1 + bytes([100]) + pickle.BININT1 + bytes([1]) + pickle.TUPLE2
  with open(path, 'wb') as f:
    f.write(_patched(data, stride, wider))
  with pytest.raises(ValueError, match=r'w\.pth: a tensor of size \(4, 10\) at offset 0 overruns'):
    torch_pickle.load_state_dict(path)


@pytest.mark.parametrize('fmt', FORMATS)
def test_refuses_a_tensor_with_more_elements_than_its_storage(tmp_path, fmt):
  """An expanded tensor would copy its few stored values into an array of any size."""
  path = save({'w': torch.ones(3).expand(1000, 3)}, tmp_path / 'expanded.pth', fmt)
  with pytest.raises(ValueError, match=r'expanded\.pth: a tensor of size \(1000, 3\) has more '
                                       r'elements than its storage'):
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


# Pickles written opcode by opcode: only allowed globals, but BUILD (which sets the state of any
# object on the unpickling stack) used to forge an object-pointer dtype. Each is loaded in a
# process of its own, since a forged pointer would crash the interpreter, not raise.


def _text(s):
  raw = s.encode()
  return pickle.BINUNICODE + struct.pack('<I', len(raw)) + raw


def _int(i):
  return pickle.BININT + struct.pack('<i', i)


_DTYPE = pickle.GLOBAL + b'numpy\ndtype\n'


def _dtype(spec, copy):
  return (_DTYPE + pickle.MARK + _text(spec) + pickle.NEWFALSE
          + (pickle.NEWTRUE if copy else pickle.NEWFALSE) + pickle.TUPLE + pickle.REDUCE)


def _object_pointer_state():
  """np.dtype.__setstate__'s state of an 8-byte struct whose field 'a' is a PyObject pointer,
  with the flags that would tell NumPy it holds objects cleared."""
  obj = _DTYPE + pickle.MARK + _text('O') + pickle.TUPLE + pickle.REDUCE
  fields = (pickle.EMPTY_DICT + _text('a') + pickle.MARK + obj + _int(0) + pickle.TUPLE
            + pickle.SETITEM)
  return (pickle.MARK + _int(3) + _text('|') + pickle.NONE + pickle.MARK + _text('a')
          + pickle.TUPLE + fields + _int(8) + _int(1) + _int(0) + pickle.TUPLE)


def _forged_scalar(spec, copy):
  scalar = pickle.GLOBAL + b'numpy.core.multiarray\nscalar\n'
  dtype = _dtype(spec, copy) + _object_pointer_state() + pickle.BUILD
  pointer = pickle.BINBYTES + struct.pack('<I', 8) + struct.pack('<Q', 0x4141414141414141)
  # As a dict key: unpickling hashes it, which dereferences the pointer.
  return (pickle.EMPTY_DICT + scalar + pickle.MARK + dtype + pointer + pickle.TUPLE
          + pickle.REDUCE + _int(1) + pickle.SETITEM)


def _forged_storage_type():
  storage_type = (pickle.GLOBAL + b'torch\nFloatStorage\n' + pickle.EMPTY_DICT + _text('dtype')
                  + _dtype('V8', True) + _object_pointer_state() + pickle.BUILD + pickle.SETITEM
                  + pickle.BUILD)
  pid = (pickle.MARK + _text('storage') + storage_type + _text('0') + _text('cpu') + _int(1)
         + pickle.TUPLE + pickle.BINPERSID)
  tensor = (pickle.GLOBAL + b'torch._utils\n_rebuild_tensor_v2\n' + pickle.MARK + pid + _int(0)
            + pickle.MARK + _int(1) + pickle.TUPLE + pickle.MARK + _int(1) + pickle.TUPLE
            + pickle.NEWFALSE + pickle.EMPTY_DICT + pickle.TUPLE + pickle.REDUCE)
  return pickle.EMPTY_DICT + _text('w') + tensor + pickle.SETITEM


@pytest.mark.parametrize('body', [
    _forged_scalar('V8', copy=False), _forged_scalar('f8', copy=True),
    _forged_scalar('f8', copy=False), _forged_storage_type()],
    ids=['structured', 'copied', 'builtin', 'storage_type'])
def test_forged_dtypes_are_refused_not_dereferenced(tmp_path, body):
  path = tmp_path / 'forged.pth'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.PROTO + bytes([2]) + body + pickle.STOP)
    archive.writestr('archive/data/0', struct.pack('<Q', 0x4141414141414141))
  code = ('import sys\nfrom asymfusion_jax import torch_pickle\n'
          'try:\n  torch_pickle.load_state_dict(sys.argv[1])\n'
          'except ValueError as e:\n  print("refused:", e)\n')
  result = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
  assert result.stdout.startswith('refused:') and 'forged.pth' in result.stdout, result.stdout
