"""Reads and writes PyTorch .pth state_dicts as NumPy without importing torch.

torch.save writes a zip archive: `<name>/data.pkl` pickles the object graph, and every tensor
storage lies raw in `<name>/data/<key>`. This reader resolves the few torch globals a state_dict
pickle refers to (storage classes, tensor/parameter rebuild functions, OrderedDict) and refuses
everything else, so a checkpoint cannot run code on load.
"""

import collections
import dataclasses
import os
import pickle
import struct
from typing import Iterator, Mapping
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class _StorageType:

  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  if not size:
    return np.array(storage[offset])
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # Own the memory, in C order.


def _rebuild_parameter(data, *unused_args):
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive, prefix):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._storages = {}

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a state_dict file')

  def persistent_load(self, pid):
    kind, storage_type, key, unused_location, unused_numel = pid
    if kind != 'storage':
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}/data/{key}')
      self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder('<'))
    return self._storages[key]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a state_dict saved with torch.save (zip format) as {key: np.ndarray}.

  A checkpoint that wraps the state_dict as {'state_dict': ...} or {'model': ...} is unwrapped.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such .pth file: {path}')
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} is not a zip-format torch checkpoint (saved with torch >= 1.6); '
                     're-save it with torch.save(state_dict, path)')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise ValueError(f'{path}: expected one data.pkl in the archive, found {pickles}')
    prefix = pickles[0][:-len('/data.pkl')]
    with archive.open(pickles[0]) as f:
      obj = _Unpickler(f, archive, prefix).load()
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise ValueError(f'{path} does not hold a state_dict (found {type(obj).__name__})')
  return dict(obj)


# Writing: torch.save's zip format without torch, the inverse of load_state_dict.


@dataclasses.dataclass(frozen=True)
class _Global:
  module: str
  name: str


@dataclasses.dataclass(frozen=True)
class _Reduce:
  func: _Global
  args: tuple


@dataclasses.dataclass(frozen=True)
class _PersistentId:
  pid: tuple


_ORDERED_DICT = _Global('collections', 'OrderedDict')
_REBUILD_TENSOR = _Global('torch._utils', '_rebuild_tensor_v2')
# The storage class of each dtype: the reader's table inverted, so that the two always agree.
_STORAGE_NAMES = {
    np.dtype(v): k
    for k, v in _STORAGE_DTYPES.items()
}
_ZIP_ALIGNMENT = 64  # torch.save aligns every storage record to 64 bytes (for mmap).


def _opcodes(obj) -> Iterator[bytes]:
  """Pickle protocol 2 opcodes of obj: the few types that a state_dict pickle holds.

  Written out by hand because the pickle module would import `torch` to pickle a reference to
  `torch._utils._rebuild_tensor_v2`. A dict becomes an OrderedDict, as torch writes it.
  """
  if isinstance(obj, bool):
    yield pickle.NEWTRUE if obj else pickle.NEWFALSE
  elif isinstance(obj, int):
    if -2**31 <= obj < 2**31:
      yield pickle.BININT + struct.pack('<i', obj)
    else:
      raw = obj.to_bytes((obj.bit_length() + 8) // 8, 'little', signed=True)
      yield pickle.LONG1 + bytes([len(raw)]) + raw
  elif isinstance(obj, str):
    raw = obj.encode('utf-8')
    yield pickle.BINUNICODE + struct.pack('<I', len(raw)) + raw
  elif isinstance(obj, tuple):
    yield pickle.MARK
    for item in obj:
      yield from _opcodes(item)
    yield pickle.TUPLE
  elif isinstance(obj, _Global):
    yield pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode('ascii')
  elif isinstance(obj, _Reduce):
    yield from _opcodes(obj.func)
    yield from _opcodes(obj.args)
    yield pickle.REDUCE
  elif isinstance(obj, _PersistentId):
    yield from _opcodes(obj.pid)
    yield pickle.BINPERSID
  elif isinstance(obj, dict):
    yield from _opcodes(_Reduce(_ORDERED_DICT, ()))
    yield pickle.MARK
    for key, value in obj.items():
      yield from _opcodes(key)
      yield from _opcodes(value)
    yield pickle.SETITEMS
  else:
    raise TypeError(f'cannot write {type(obj).__name__} into a state_dict pickle')


def _tensor(key: str, array: np.ndarray) -> _Reduce:
  """torch's pickle of a contiguous CPU tensor whose storage is the record data/<key>."""
  if array.dtype not in _STORAGE_NAMES:
    raise TypeError(f'no torch storage type for dtype {array.dtype}')
  storage = _PersistentId(
      ('storage', _Global('torch', _STORAGE_NAMES[array.dtype]), key, 'cpu', int(array.size)))
  strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
  shape = tuple(int(n) for n in array.shape)
  return _Reduce(_REBUILD_TENSOR, (storage, 0, shape, strides, False, {}))


def _write_aligned(archive: zipfile.ZipFile, file, name: str, data: bytes) -> None:
  """Stores one record so that its data starts at a multiple of _ZIP_ALIGNMENT in the file."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  header = 30 + len(name.encode('utf-8'))  # The fixed local header, then the name.
  pad = -(file.tell() + header) % _ZIP_ALIGNMENT
  if pad and pad < 4:  # An extra field needs 4 bytes of its own.
    pad += _ZIP_ALIGNMENT
  if pad:
    info.extra = b'FB' + struct.pack('<H', pad - 4) + b'Z' * (pad - 4)
  archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def save_state_dict(path: str, state_dict: Mapping[str, np.ndarray],
                    archive_name: str = 'archive') -> None:
  """Writes {key: array} as torch.save(OrderedDict of tensors, path) would.

  The zip holds <archive_name>/data.pkl (the OrderedDict, with a persistent id per storage),
  data/<i> (each array's raw little-endian bytes, 64-byte aligned) and the version, byteorder and
  format records. torch.load (weights_only=True too) and torch_pickle.load_state_dict read it.
  """
  arrays = [(str(k), np.asarray(v, order='C')) for k, v in state_dict.items()]
  tree = {k: _tensor(str(i), a) for i, (k, a) in enumerate(arrays)}
  data_pkl = pickle.PROTO + bytes([2]) + b''.join(_opcodes(tree)) + pickle.STOP
  with open(path, 'wb') as file, zipfile.ZipFile(file, 'w', zipfile.ZIP_STORED) as archive:
    def record(name, data):
      _write_aligned(archive, file, f'{archive_name}/{name}', data)
    record('data.pkl', data_pkl)
    record('.format_version', b'1')
    record('.storage_alignment', str(_ZIP_ALIGNMENT).encode())
    record('byteorder', b'little')
    for i, (_, a) in enumerate(arrays):
      record(f'data/{i}', a.astype(a.dtype.newbyteorder('<'), copy=False).tobytes())
    record('version', b'3\n')
