"""Data parallelism over a ('data',) mesh of every device of every process.

Batches are sharded along their batch axis (axis 1 of the (M, B, H, W, C) multimodal inputs,
axis 0 of everything else: labels, targets, masks); parameters and optimiser state are
replicated. Each process holds the rows of the global batch that its own devices own, and reads
per-example outputs from its own shards (process_rows). Host-side values of every process meet
through process_allgather and process_sum, bit for bit whatever the dtype.
"""

import collections
import math
from typing import Iterable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int) -> NamedSharding:
  """Split along `axis` (the batch axis of an array) over the mesh, replicated along the rest."""
  return NamedSharding(mesh, P(*([None] * axis), 'data'))


# Batch entries laid out (M, B, ...): the segmentation images and the translation inputs.
MODAL_KEYS = ('image', 'inputs')


def batch_axis(key: str) -> int:
  """The batch axis of a batch entry: 1 for the multimodal MODAL_KEYS, else 0."""
  return 1 if key in MODAL_KEYS else 0


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
  """A NamedSharding per batch entry, splitting its batch_axis over the mesh."""
  return {k: NamedSharding(mesh, P(None, 'data') if batch_axis(k) else P('data')) for k in batch}


def _counts(devices: int | None, processes: int | None) -> tuple[int, int]:
  return (jax.device_count() if devices is None else devices,
          jax.process_count() if processes is None else processes)


def check_batch_size(global_batch: int, what: str = 'config.batch_size',
                     devices: int | None = None, processes: int | None = None) -> None:
  """Raises ValueError, naming the nearest valid sizes, if the batch cannot be split evenly.

  Every device must get as many rows (and every process as many devices' worth); devices and
  processes default to this run's jax.device_count() and jax.process_count().
  """
  devices, processes = _counts(devices, processes)
  unit = math.lcm(devices, processes)
  if global_batch % unit == 0:
    return
  below, above = global_batch // unit * unit, (global_batch // unit + 1) * unit
  nearest = f'sizes are {below} and {above}' if below else f'size is {above}'
  over = (f'the {devices} devices of the mesh' if unit == devices
          else f'the {devices} devices and the {processes} processes')
  raise ValueError(f'{what}={global_batch} must be divisible by {over}; the nearest valid '
                   f'{nearest}')


def padded_batch_size(global_batch: int, devices: int | None = None,
                      processes: int | None = None) -> int:
  """`global_batch` rounded up to the next size that every device and process can share.

  Evaluation fills its batches up to this size with masked rows, so that any eval_batch_size
  runs on any number of devices; masked rows add nothing to the metrics.
  """
  unit = math.lcm(*_counts(devices, processes))
  return -(-global_batch // unit) * unit


def pad_rows(local_batch: dict, rows: int, ignore_label: int) -> dict:
  """This process's batch filled up to `rows` rows: zero images, labels all `ignore_label`.

  Such rows add nothing to the loss (it averages over labelled pixels) nor to its gradient, and
  with frozen BatchNorm nothing to any other row's activations, so a padded step is the unpadded
  step computed on more devices, except that dropout draws its masks for the padded shape (other
  masks, from the same distribution).
  """
  out = {}
  for key, value in local_batch.items():
    axis = batch_axis(key)
    extra = rows - value.shape[axis]
    if extra < 0:
      raise ValueError(f'cannot pad {value.shape[axis]} rows of {key!r} down to {rows}')
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, extra)
    out[key] = np.pad(value, widths, constant_values=ignore_label if key == 'label' else 0)
  return out


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Assembles each process's rows into global jax.Arrays sharded over the mesh."""
  shardings = batch_shardings(mesh, local_batch)
  out = {}
  for k, v in local_batch.items():
    axis = batch_axis(k)
    shape = list(v.shape)
    shape[axis] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(shardings[k], v, tuple(shape))
  return out


def process_rows(array: jax.Array, axis: int) -> np.ndarray:
  """This process's rows of a batch-sharded array, in global order, as NumPy.

  Only the process's own shards are read: no collective, nothing replicated. With the rows
  global_batch laid out, they are the rows of this process's local batch, in its order.
  """
  size = array.shape[axis]
  pieces = {}
  for shard in array.addressable_shards:
    start = shard.index[axis].indices(size)[0]
    if start not in pieces:  # Replicas of the same rows (other mesh axes) are read once.
      pieces[start] = np.asarray(shard.data)
  return np.concatenate([pieces[s] for s in sorted(pieces)], axis=axis)


def _contiguous(x) -> np.ndarray:
  """x as a C-contiguous array of its own shape (np.ascontiguousarray makes scalars 1-d)."""
  x = np.asarray(x)
  return x if x.flags.c_contiguous else x.copy(order='C')


def process_allgather(x) -> np.ndarray:
  """(process_count,) + x.shape: `x` of every process in process order, bit for bit.

  `x` must have the same shape and dtype on every process. It travels as bytes, so 64-bit values
  arrive whole whether or not jax_enable_x64 is set (a device would round float64 to float32).
  """
  x = _contiguous(x)
  if jax.process_count() == 1:
    return x[None].copy()
  if x.size == 0:
    return np.zeros((jax.process_count(),) + x.shape, x.dtype)
  raw = multihost_utils.process_allgather(x.reshape(-1).view(np.uint8))
  return np.asarray(raw).view(x.dtype).reshape((-1,) + x.shape)


def process_sum(x, chunk_bytes: int = 1 << 24) -> np.ndarray:
  """The sum of `x` (same shape and dtype on every process) over the processes, in their order.

  Every process gets the same bits. The values are gathered chunk by chunk, so no process holds
  more than process_count x chunk_bytes of other processes' values at once (a 2048 x 2048
  float64 matrix is 32 MB).
  """
  x = _contiguous(x)
  if jax.process_count() == 1:
    return x.copy()
  flat = x.reshape(-1)
  step = max(1, chunk_bytes // max(1, x.itemsize))
  out = np.empty_like(flat)
  for start in range(0, flat.size, step):
    parts = process_allgather(flat[start:start + step])
    total = parts[0].copy()
    for part in parts[1:]:
      total += part
    out[start:start + step] = total
  return out.reshape(x.shape)


def gather_rows(rows, keys) -> np.ndarray:
  """Every process's `rows` (N_p, ...) in one array ordered by `keys` (N_p,), which are unique
  over the processes (e.g. the dataset index of each row); the row shape and dtype must agree."""
  rows, keys = np.asarray(rows), np.asarray(keys, np.int64)
  if len(rows) != len(keys):
    raise ValueError(f'{len(rows)} rows but {len(keys)} keys')
  counts = process_allgather(np.int64(len(rows)))
  most = int(counts.max())
  pad = lambda a: np.concatenate([a, np.zeros((most - len(a),) + a.shape[1:], a.dtype)])
  all_rows, all_keys = process_allgather(pad(rows)), process_allgather(pad(keys))
  rows = np.concatenate([r[:n] for r, n in zip(all_rows, counts)])
  keys = np.concatenate([k[:n] for k, n in zip(all_keys, counts)])
  if len(np.unique(keys)) != len(keys):
    raise ValueError('the keys of the gathered rows are not unique')
  return rows[np.argsort(keys, kind='stable')]
def prefetch_to_device(local_batches: Iterable[dict], mesh: Mesh, size: int = 2
                       ) -> Iterator[dict]:
  """The global batches (global_batch) of `local_batches`, with `size` more already on the mesh.

  flax.jax_utils.prefetch_to_device's idea, for global arrays sharded over a mesh: assembling a
  batch (jax.make_array_from_process_local_data) starts its host-to-device transfers and returns,
  so while the caller's step t runs on the devices, batches t + 1 .. t + size are already being
  transferred; each call tops the queue up before it hands out the next batch, i.e. after the
  caller has dispatched the previous step. The batches and their order are those of
  `local_batches`, so batch t stays a function of (seed, t) and a resumed run sees the same
  ones. An error of `local_batches` is raised when the batch it stopped at is due, after the
  batches before it; closing this iterator (or its end) closes `local_batches` (its workers).
  size 0 assembles each batch only when it is asked for.
  """
  source = iter(local_batches)
  queue = collections.deque()
  ended, failure = False, None
  try:
    while True:
      while not ended and len(queue) <= max(size, 0):
        try:
          queue.append(global_batch(mesh, next(source)))
        except StopIteration:
          ended = True
        except Exception as e:  # pylint: disable=broad-except  # Raised when its batch is due.
          ended, failure = True, e
      if not queue:
        if failure is not None:
          raise failure
        return
      yield queue.popleft()
  finally:
    close = getattr(source, 'close', None)
    if close is not None:
      close()
