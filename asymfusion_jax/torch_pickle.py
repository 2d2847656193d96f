"""Reads and writes PyTorch .pth state_dicts as NumPy without importing torch.

Two file formats are read:
- zip (torch.save since PyTorch 1.6): `<name>/data.pkl` pickles the object graph, and every
  tensor storage lies raw in `<name>/data/<key>`, in the byte order of its `byteorder` record.
- legacy (PyTorch < 1.6, e.g. the PyTorch 1.0 of the AsymFusion reference implementation): a
  magic-number pickle, a protocol-version pickle, a sys-info pickle, the object graph's pickle,
  a pickle of the storage keys, then each storage as an int64 element count and its
  little-endian bytes.

The reader resolves the few globals a checkpoint's pickle refers to (storage classes,
tensor/parameter rebuild functions, OrderedDict, and the NumPy scalars that training scripts
store beside the weights, such as a best validation score) and refuses everything else, so a
checkpoint cannot run code on load; every tensor is checked to lie inside its storage.
"""

import codecs
import collections
import dataclasses
import math
import operator
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
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
# Wrapper keys under which training scripts store the model's state_dict, the reference's
# {'segmenter': ..., 'epoch_start': ..., 'best_val': ...} among them.
_WRAPPERS = ('state_dict', 'model', 'segmenter')


# The objects below are frozen and slotted: a pickle's BUILD opcode, which can be applied to any
# object on the unpickling stack, cannot change them (say, a storage's dtype).


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  name: str  # A key of _STORAGE_DTYPES.


@dataclasses.dataclass(frozen=True, slots=True)
class _Storage:
  """A storage named in the pickle; its data is read after the pickle (legacy) or on demand."""
  key: str
  dtype: np.dtype
  view: tuple[int, int] | None = None  # (offset, numel) of a legacy storage view.


@dataclasses.dataclass(frozen=True, slots=True)
class _LazyTensor:
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f'a tensor over {type(storage).__name__}, not a storage')
  return _LazyTensor(storage, operator.index(offset), tuple(map(operator.index, size)),
                     tuple(map(operator.index, stride)))


def _rebuild_parameter(data, *unused_args):
  return data


def _is_plain(dtype) -> bool:
  """A NumPy built-in numeric dtype: one of NumPy's own instances, which BUILD cannot change.

  np.dtype(..., copy=True), a byte-swapped or a structured dtype is a new object whose
  __setstate__ a pickle's BUILD could use to forge an object-pointer dtype.
  """
  return isinstance(dtype, np.dtype) and dtype.isbuiltin == 1 and dtype.kind in 'biufc'


def _numpy_dtype(spec, unused_align=False, unused_copy=False):
  """numpy.dtype for plain numeric types only (see _is_plain)."""
  dtype = np.dtype(spec) if isinstance(spec, str) else None
  if not _is_plain(dtype):
    raise pickle.UnpicklingError(f'numpy.dtype({spec!r}) is not allowed in a state_dict file')
  return dtype


def _numpy_scalar(dtype, data=None):
  """numpy.core.multiarray.scalar as pickled for a NumPy scalar (plain bytes only)."""
  if not _is_plain(dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
    raise pickle.UnpicklingError(f'only plain NumPy scalars are allowed, not {dtype!r}')
  return np.frombuffer(data, dtype)[0]


def _codecs_encode(text, encoding='utf-8'):
  """How pickle protocol 2 writes bytes: _codecs.encode(str, 'latin1')."""
  if not isinstance(text, str) or encoding != 'latin1':
    raise pickle.UnpicklingError('_codecs.encode is only allowed for latin1 text')
  return codecs.encode(text, encoding)


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy', 'dtype'): _numpy_dtype,
    ('_codecs', 'encode'): _codecs_encode,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only _ALLOWED globals and torch storage ids."""

  def __init__(self, file, byteorder='<'):
    super().__init__(file)
    self.byteorder = byteorder
    self.storages = {}

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a state_dict file')

  def persistent_load(self, pid):
    # zip: ('storage', type, key, location, numel); legacy: the same plus view metadata.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
    key, dtype = str(pid[2]), np.dtype(_STORAGE_DTYPES[pid[1].name])
    root = self.storages.setdefault(key, _Storage(key, dtype.newbyteorder(self.byteorder)))
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return root
    _, offset, numel = view
    return _Storage(key, root.dtype, (operator.index(offset), operator.index(numel)))


def _tensor_from(lazy: _LazyTensor, data: Mapping[str, np.ndarray], what: str) -> np.ndarray:
  """The tensor's array, after checking that it lies inside its storage."""
  storage = data[lazy.storage.key]
  if lazy.storage.view is not None:
    offset, numel = lazy.storage.view
    if offset < 0 or offset + numel > storage.size:
      raise ValueError(f'{what}: a storage view overruns storage {lazy.storage.key}')
    storage = storage[offset:offset + numel]
  size, stride = lazy.size, lazy.stride
  if len(size) != len(stride) or min(size + stride + (lazy.offset,), default=0) < 0:
    raise ValueError(f'{what}: bad tensor geometry size={size} stride={stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = lazy.offset + sum((n - 1) * s for n, s in zip(size, stride))
  numel = math.prod(size)
  if numel > storage.size:  # Only expanded (stride 0) or overlapping views are larger.
    raise ValueError(f'{what}: a tensor of size {size} has more elements than its storage '
                     f'{lazy.storage.key} ({storage.size}); save a contiguous copy')
  if last >= storage.size:
    raise ValueError(f'{what}: a tensor of size {size} at offset {lazy.offset} overruns its '
                     f'storage {lazy.storage.key} of {storage.size} elements')
  view = np.lib.stride_tricks.as_strided(
      storage[lazy.offset:], shape=size,
      strides=tuple(s * storage.dtype.itemsize for s in stride))
  return np.array(view, dtype=storage.dtype.newbyteorder('='))  # Own the memory, native order.


def _materialise(obj, data, what):
  if isinstance(obj, _LazyTensor):
    return _tensor_from(obj, data, what)
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v, data, what)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, data, what) for v in obj)
  return obj


def _storage_data(raw: bytes, storage: _Storage, what: str) -> np.ndarray:
  if len(raw) % storage.dtype.itemsize:
    raise ValueError(f'{what}: storage {storage.key} has {len(raw)} bytes, not a multiple of '
                     f'{storage.dtype.itemsize} ({storage.dtype})')
  return np.frombuffer(raw, storage.dtype)


def _load_zip(path: str):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise ValueError(f'expected one data.pkl in the archive, found {pickles}')
    prefix = pickles[0][:-len('/data.pkl')]
    byteorder = '<'
    if f'{prefix}/byteorder' in names:
      byteorder = {b'little': '<', b'big': '>'}[archive.read(f'{prefix}/byteorder').strip()]
    with archive.open(pickles[0]) as f:
      unpickler = _Unpickler(f, byteorder)
      obj = unpickler.load()
    data = {key: _storage_data(archive.read(f'{prefix}/data/{key}'), storage, path)
            for key, storage in unpickler.storages.items()}
  return _materialise(obj, data, path)


def _load_legacy(path: str):
  with open(path, 'rb') as f:
    try:
      magic = _Unpickler(f).load()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError('neither a zip archive nor a legacy torch.save file') from e
    if magic != _LEGACY_MAGIC:
      raise ValueError('neither a zip archive nor a legacy torch.save file (bad magic number)')
    version = _Unpickler(f).load()
    if version != 1001:
      raise ValueError(f'unsupported legacy torch.save protocol version {version!r}')
    _Unpickler(f).load()  # sys_info; storages are little-endian whatever the saving machine.
    unpickler = _Unpickler(f)
    obj = unpickler.load()
    keys = _Unpickler(f).load()
    data = {}
    for key in keys:
      key = str(key)
      if key not in unpickler.storages:
        raise ValueError(f'storage {key} is listed but not used by the pickle')
      storage = unpickler.storages[key]
      header = f.read(8)
      if len(header) != 8:
        raise ValueError(f'the file ends before storage {key}')
      nbytes = struct.unpack('<q', header)[0] * storage.dtype.itemsize
      if not 0 <= nbytes <= os.fstat(f.fileno()).st_size - f.tell():
        raise ValueError(f'the file ends inside storage {key} ({nbytes} bytes expected)')
      raw = f.read(nbytes)
      data[key] = _storage_data(raw, storage, path)
    missing = set(unpickler.storages) - set(data)
    if missing:
      raise ValueError(f'storages {sorted(missing)} are used but not stored')
  return _materialise(obj, data, path)


def _is_state_dict(obj) -> bool:
  return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
          and all(isinstance(v, np.ndarray) for v in obj.values()))


def _find_state_dict(obj, path: str) -> dict[str, np.ndarray]:
  """The state_dict itself, or the one a checkpoint dict wraps (see _WRAPPERS)."""
  if _is_state_dict(obj):
    return dict(obj)
  if isinstance(obj, dict):
    for wrapper in _WRAPPERS:
      if _is_state_dict(obj.get(wrapper)):
        return dict(obj[wrapper])
    found = [k for k, v in obj.items() if _is_state_dict(v)]
    if len(found) == 1:
      return dict(obj[found[0]])
    if found:
      raise ValueError(f'{path} holds several state_dicts, under {found}; save the one to load '
                       'on its own')
    raise ValueError(f'{path} holds no state_dict (a dict of tensors): its top-level keys are '
                     f'{sorted(map(str, obj))[:20]}')
  raise ValueError(f'{path} does not hold a state_dict (found {type(obj).__name__})')


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a state_dict saved with torch.save (zip or legacy format) as {key: np.ndarray}.

  A checkpoint dict that wraps the state_dict beside other entries (epoch, score, ...) is
  unwrapped: the entry 'state_dict', 'model' or 'segmenter' (the reference implementation's),
  or else its only entry that is a dict of tensors.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such .pth file: {path}')
  try:
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError,
          AttributeError, RecursionError, MemoryError, OverflowError, struct.error,
          zipfile.BadZipFile) as e:
    message = str(e)
    if not message.startswith(path):
      message = f'{path}: not a readable torch checkpoint: {type(e).__name__}: {message}'
    raise ValueError(message) from e
  return _find_state_dict(obj, path)


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
