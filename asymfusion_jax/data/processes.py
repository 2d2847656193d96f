"""Worker processes for the batch loops: config.data.worker_kind='process' (`workers.run_ahead`).

Worker threads share one interpreter, so whatever part of the per-example work holds the GIL
(Python code between the OpenCV and NumPy calls) runs one thread at a time. Worker processes
each have their own interpreter. They are started with the 'spawn' method (fork after JAX has
started its threads is unsafe) when a loop yields its first batch, and stopped when the loop is
closed, exhausted or fails.

What crosses the process boundary is small and picklable:
- Once per worker, a recipe: the registry entry (module path) of config.data.name, the batch
  function ('train_batches' or 'eval_batches'), the config and that call's arguments. The worker
  imports the dataset, opens its data itself and calls that function; `batching` hands the
  function that fills one row (`hand_over`) to the worker instead of starting a loop. So the
  worker's rows are made by the very code the thread workers run.
- Per row, the row's arguments (row, example index, augmentation seed): batch t stays a pure
  function of (seed, t), whichever worker kind fills it.
- The batch itself is not pickled: the consumer lays it out in one file in shared memory
  (/dev/shm where it exists), the workers map that file and fill their rows in place, and the
  consumer's batch is its arrays viewing the same memory. List values (eval's 'name') are
  returned per row. The file is unlinked once the batch is complete; its memory goes when the
  batch's arrays are dropped.

A worker's exception is raised by the consumer when its batch is due, with the worker's type and
message (its traceback is attached as the cause). Workers ignore SIGINT and SIGTERM (the
consumer decides when to stop, and stops them) and exit by themselves, removing the loop's
shared files, when the consumer's process dies.
"""

import concurrent.futures
import importlib
import mmap
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading

import ml_collections
import numpy as np

_ALIGN = 64  # Byte alignment of each array in a shared batch.

# In a worker process: the fill function that its recipe's batch function handed over, or the
# exception raised while getting it (raised again by every task, so that the consumer sees it).
_in_worker = False
_handed_over = []
_fill = None
_start_error = None


def in_worker() -> bool:
  """Whether this is a worker process, where batch functions hand over their fill function."""
  return _in_worker


def hand_over(fill) -> None:
  """Called by `workers.run_ahead` in a worker process instead of starting a loop."""
  _handed_over.append(fill)


def recipe(config: ml_collections.ConfigDict, call: tuple[str, tuple]) -> tuple:
  """What a worker needs to rebuild a loop: call = (batch function name, its arguments after
  the config), as the dataset of config.data.name was called."""
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  entry = data.DATASETS.get(config.data.name)
  if not isinstance(entry, str):
    raise ValueError(f"config.data.worker_kind='process' needs config.data.name="
                     f'{config.data.name!r} registered in asymfusion_jax.data.DATASETS by its '
                     'module path (worker processes import it); use worker_kind=\'thread\'.')
  method, args = call
  return entry, method, config.copy_and_resolve_references(), tuple(args)


def _shared_dir() -> str:
  return '/dev/shm' if os.path.isdir('/dev/shm') else tempfile.gettempdir()


class SharedBatch:
  """A batch whose arrays live in one shared file: `batch`, `spec` (what a worker maps)."""

  def __init__(self, template: dict, path: str, copy: bool):
    """The batch's arrays start as template's where `copy`, and undefined otherwise."""
    layout, offset = [], 0
    for key, value in template.items():
      if isinstance(value, np.ndarray):
        layout.append((key, offset, value.shape, value.dtype.str))
        offset += -(-value.nbytes // _ALIGN) * _ALIGN
      elif not isinstance(value, list):
        raise TypeError(f"config.data.worker_kind='process' shares arrays and per-row lists; "
                        f'batch key {key!r} is a {type(value).__name__}.')
    size = max(offset, 1)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
      try:
        os.ftruncate(fd, size)
        if hasattr(os, 'posix_fallocate'):  # Linux: fails now, rather than a worker's write.
          os.posix_fallocate(fd, 0, size)
      except OSError as e:
        os.unlink(path)
        raise OSError(f"config.data.worker_kind='process' needs {size / 2**20:.0f} MiB of "
                      f'shared memory per batch in {os.path.dirname(path)}: {e.strerror}. '
                      "Give it more (docker's --shm-size) or use worker_kind='thread'.") from None
      memory = mmap.mmap(fd, size)
    finally:
      os.close(fd)
    self.path = path
    self.batch = _views(memory, layout)
    for key, value in template.items():
      if not isinstance(value, np.ndarray):
        self.batch[key] = list(value)
      elif copy:
        np.copyto(self.batch[key], value)
    self.spec = (path, size, layout, {k: v for k, v in self.batch.items() if isinstance(v, list)})

  def put(self, row: int, values: dict) -> None:
    """Sets the list values a worker returned for `row`."""
    for key, value in values.items():
      self.batch[key][row] = value

  def release(self) -> None:
    """Unlinks the file; the memory stays while the batch's arrays do."""
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass


def _views(memory, layout) -> dict:
  return {key: np.frombuffer(memory, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)
          for key, offset, shape, dtype in layout}


class Pool:
  """Worker processes filling the rows of shared batches for one loop."""

  def __init__(self, num_workers: int, worker_recipe: tuple, whole_rows: bool):
    """whole_rows: every row of a batch is filled, all of it (the batch's contents before are
    not copied into shared memory)."""
    self._whole_rows = whole_rows
    self._dir = tempfile.mkdtemp(prefix='asymfusion_data_', dir=_shared_dir())
    self._count = 0
    self._executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'), initializer=_start,
        initargs=(worker_recipe, self._dir))

  def start(self, batch: dict, rows: list[tuple]):
    """Starts filling `batch` (rows: each row's arguments, the row first); finish() gives it."""
    self._count += 1
    shared = SharedBatch(batch, os.path.join(self._dir, str(self._count)),
                         copy=not self._whole_rows)
    return shared, [self._executor.submit(_fill_row, shared.spec, args) for args in rows]

  @staticmethod
  def finish(started) -> dict:
    shared, futures = started
    try:
      for future in futures:
        try:
          row, values = future.result()  # Raises a worker's exception here, in the consumer.
        except concurrent.futures.BrokenExecutor:
          raise RuntimeError('A data worker process died (killed, e.g. by the out-of-memory '
                             "killer, or crashed); config.data.worker_kind='process' cannot "
                             'go on.') from None
        shared.put(row, values)
    finally:
      shared.release()
    return shared.batch

  def shutdown(self) -> None:
    # At interpreter exit the executor's own exit hook stops the workers instead.
    if not sys.is_finalizing():
      self._executor.shutdown(wait=True, cancel_futures=True)
      shutil.rmtree(self._dir, ignore_errors=True)


def _start(worker_recipe: tuple, directory: str) -> None:
  """A worker's initializer: signals, the watch on the consumer, then the loop's fill."""
  global _in_worker, _fill, _start_error
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  threading.Thread(target=_exit_with_parent, args=(directory,), daemon=True).start()
  _in_worker = True
  os.environ['CUDA_VISIBLE_DEVICES'] = ''  # A library imported here must not take the GPUs.
  entry, method, config, args = worker_recipe
  try:
    getattr(importlib.import_module(entry), method)(config, *args)
    if not _handed_over:
      raise RuntimeError(f'{entry}.{method} did not hand its fill function to a worker '
                         'process: its batches must come from asymfusion_jax.data.batching.')
    _fill = _handed_over.pop()
  except Exception as e:  # pylint: disable=broad-except
    _start_error = e


def _exit_with_parent(directory: str) -> None:
  multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
  shutil.rmtree(directory, ignore_errors=True)
  os._exit(0)  # pylint: disable=protected-access


def _fill_row(spec: tuple, args: tuple) -> tuple[int, dict]:
  """Fills row args[0] of the shared batch `spec` in place; returns (row, its list values)."""
  if _start_error is not None:
    raise _start_error
  path, size, layout, lists = spec
  with open(path, 'r+b') as f:
    memory = mmap.mmap(f.fileno(), size)
  batch = {**_views(memory, layout), **{k: list(v) for k, v in lists.items()}}
  _fill(batch, *args)
  row = args[0]
  return row, {key: batch[key][row] for key in lists}
