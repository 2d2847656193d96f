"""Reads PyTorch .pth state_dicts into NumPy without importing torch.

torch.save writes a zip archive: `<name>/data.pkl` pickles the object graph, and every tensor
storage lies raw in `<name>/data/<key>`. This reader resolves the few torch globals a state_dict
pickle refers to (storage classes, tensor/parameter rebuild functions, OrderedDict) and refuses
everything else, so a checkpoint cannot run code on load.
"""

import collections
import os
import pickle
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
