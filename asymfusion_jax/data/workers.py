"""Runs the per-example work of upcoming batches on workers while the caller trains.

Each batch is a set of buffers plus rows that fill disjoint parts of them, so results need no
gathering and their order, hence the batch, does not depend on scheduling. The workers are
config.data.num_workers of the kind config.data.worker_kind (KINDS):
- 'thread' (the default): a thread pool. The heavy work (PNG decoding, OpenCV resizing, NumPy
  copies) releases the GIL, a dataset's readers (or Taskonomy's in-memory split) are shared
  without copying, and there is no start-up cost.
- 'process': worker processes (`processes`): no GIL between them, at the cost of a start-up per
  loop (spawn, imports, opening the data) and shared memory for the batches in flight.
"""

import collections
import concurrent.futures
import sys
from typing import Callable, Iterable, Iterator

import ml_collections

from asymfusion_jax.data import processes

KINDS = ('thread', 'process')

# (batch, rows): the buffers, and each row's arguments after the batch, the row first.
Plan = tuple[dict, list[tuple]]


def worker_kind(config: ml_collections.ConfigDict) -> str:
  """config.data.worker_kind ('thread' where a config predates the key)."""
  kind = config.data.get('worker_kind', 'thread')
  if kind not in KINDS:
    raise ValueError(f'config.data.worker_kind={kind!r} must be one of {KINDS}.')
  return kind


def run_ahead(plans: Iterable[Plan], fill: Callable[..., None],
              config: ml_collections.ConfigDict, prefetch: int,
              call: tuple[str, tuple], whole_rows: bool = False) -> Iterator[dict]:
  """Yields each plan's batch once fill(batch, *args) has run for each of its rows, with
  `prefetch` later plans in flight.

  Args:
    plans: (batch, rows) pairs, consumed lazily.
    fill: fills one row of a batch in place.
    config: its data.num_workers (0 runs every row in the calling thread when its batch is
      due) and data.worker_kind.
    prefetch: how many plans beyond the one being consumed are started ahead.
    call: how the dataset of config.data.name was called for this loop: (its batch function,
      the arguments after the config). Worker processes repeat that call to get `fill`.
    whole_rows: whether fill writes all of its row and every row of each batch is filled, so
      that worker processes need not see what the batch held before.
  """
  if processes.in_worker():
    processes.hand_over(fill)
    return iter(())
  num_workers, kind = int(config.data.num_workers), worker_kind(config)
  if num_workers <= 0:
    return (_fill_inline(batch, rows, fill) for batch, rows in plans)
  if kind == 'process':
    recipe = processes.recipe(config, call)
    return _run(plans, lambda: processes.Pool(num_workers, recipe, whole_rows), prefetch)
  return _run(plans, lambda: _Threads(num_workers, fill), prefetch)


def _fill_inline(batch: dict, rows: list[tuple], fill) -> dict:
  for args in rows:
    fill(batch, *args)
  return batch


class _Threads:
  """Worker threads, with processes.Pool's start / finish / shutdown."""

  def __init__(self, num_workers: int, fill):
    self._fill = fill
    self._executor = concurrent.futures.ThreadPoolExecutor(
        num_workers, thread_name_prefix='asymfusion_data')

  def start(self, batch: dict, rows: list[tuple]):
    return batch, [self._executor.submit(self._fill, batch, *args) for args in rows]

  @staticmethod
  def finish(started) -> dict:
    batch, futures = started
    for future in futures:
      future.result()  # Re-raises a worker's exception here, in the consumer.
    return batch

  def shutdown(self) -> None:
    # At interpreter exit the executor module may already be torn down, and its own exit hook
    # joins the threads instead.
    if not sys.is_finalizing():
      self._executor.shutdown(wait=True, cancel_futures=True)


def _run(plans: Iterable[Plan], make_pool, prefetch: int) -> Iterator[dict]:
  plans = iter(plans)
  pool = make_pool()
  pending = collections.deque()

  def start_next() -> None:
    plan = next(plans, None)
    if plan is not None:
      pending.append(pool.start(*plan))

  try:
    for _ in range(max(prefetch, 0) + 1):
      start_next()
    while pending:
      batch = pool.finish(pending.popleft())
      start_next()
      yield batch
  finally:
    # An iterator dropped unfinished is closed here: the workers stop.
    pool.shutdown()
