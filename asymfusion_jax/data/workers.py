"""Runs the per-example work of upcoming batches on a thread pool while the caller trains.

Threads rather than processes: the heavy work (PNG decoding, OpenCV resizing, NumPy copies)
releases the GIL, a dataset's readers (or Taskonomy's in-memory split) are shared without
copying, and there is no worker start-up cost. Each batch
is a set of buffers plus tasks that fill disjoint parts of them, so results need no gathering and
their order, hence the batch, does not depend on thread scheduling.
"""

import collections
import concurrent.futures
import sys
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar('T')
Plan = tuple[T, list[Callable[[], None]]]


def run_ahead(plans: Iterable[Plan], num_workers: int, prefetch: int) -> Iterator[T]:
  """Yields each plan's result once its tasks are done, with `prefetch` later plans in flight.

  Args:
    plans: (result, tasks) pairs, consumed lazily; the tasks fill the result in place.
    num_workers: threads; 0 runs every task in the calling thread when its result is due.
    prefetch: how many plans beyond the one being consumed are started ahead.
  """
  plans = iter(plans)
  if num_workers <= 0:
    for result, tasks in plans:
      for task in tasks:
        task()
      yield result
    return

  pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix='asymfusion_data')
  pending = collections.deque()

  def start_next() -> None:
    plan = next(plans, None)
    if plan is not None:
      result, tasks = plan
      pending.append((result, [pool.submit(task) for task in tasks]))

  try:
    for _ in range(max(prefetch, 0) + 1):
      start_next()
    while pending:
      result, futures = pending.popleft()
      for future in futures:
        future.result()  # Re-raises a worker's exception here, in the consumer.
      start_next()
      yield result
  finally:
    # An iterator dropped unfinished is closed here; at interpreter exit the executor module may
    # already be torn down, and its own exit hook joins the threads instead.
    if not sys.is_finalizing():
      pool.shutdown(wait=True, cancel_futures=True)
