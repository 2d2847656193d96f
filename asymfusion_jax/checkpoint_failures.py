"""A failed checkpoint save or restore in one line: why it failed, which file could not be
written, and none of the tracebacks that orbax's threads and TensorStore's callbacks print.

When a write of an asynchronous orbax save fails (a full disk), every thread of the save logs the
failure at ERROR level with a traceback, the save's other writes end as asyncio tasks whose
exceptions nobody retrieves (asyncio logs each with a traceback when it is collected, often at
exit), and the exception that finally reaches the training thread may be a bare OSError without
a file name. While a save is in flight (`SAVE_LOG.saving`), and after one failed, those records
go to debug level and the files they name are kept, so that the one error the caller raises can
name the file (checkpointing.Checkpoints does).
"""

import errno
import logging as logging_std
import os
import re
import shutil
import sys
import threading
import time
import traceback

from absl import logging

from asymfusion_jax import checksums

_FAILED_WRITE = re.compile(r'Failed writing: "([^"]+)"')
# What asyncio logs about a task or future that ended with an exception nobody retrieved (the
# writes of a save that failed, collected later), or that was still pending when collected.
_ABANDONED = ('exception was never retrieved', 'Task was destroyed but it is pending')


def reason(error: BaseException, limit: int = 240) -> str:
  """Why a restore or save failed, in one line of at most about `limit` characters.

  TensorStore errors are chains ("Error opening ...: Error reading ...: what went wrong") followed
  by their specs in brackets: the specs go, and a long chain keeps its start and its end.
  """
  text = ' '.join(str(error).split())
  text = text.split(' [tensorstore_spec', 1)[0].split(' See full TensorStore details', 1)[0]
  if not isinstance(error, checksums.ChecksumError):
    text = f'{type(error).__name__}: {text}'
  if len(text) > limit:
    text = f'{text[:limit // 3]} ... {text[-(limit - limit // 3 - 5):]}'
  return text


def _causes(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_full(error: BaseException) -> tuple[bool, str | None]:
  """(whether `error` or one of its causes is a full disk, the file it names if any).

  Python's own writes raise OSError(ENOSPC), with the file name where Python knows it;
  TensorStore's (orbax's data and metadata files) raise a ValueError whose text says 'No space
  left on device' and names the file as 'Failed writing: "PATH"'.
  """
  full, path = False, None
  for e in _causes(error):
    text = str(e)
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or 'No space left on device' in text:
      full = True
      if path is None and isinstance(e, OSError) and e.filename:
        path = os.fspath(e.filename)
      if path is None and _FAILED_WRITE.search(text):
        path = _FAILED_WRITE.findall(text)[-1]
  return full, path


class _SaveLog(logging_std.Filter):
  """The filter of absl's logger described in the module docstring."""

  def __init__(self):
    super().__init__()
    self.saving = 0  # Saves in flight (Checkpoints increments and decrements it).
    # Whether one failed: its threads and abandoned tasks may log after its error was raised.
    self.failed = False
    self.unwritten = []  # Files the failures logged during them could not write, in order.
    self._installed = False

  def install(self) -> None:
    if not self._installed:
      logging.get_absl_logger().addFilter(self)
      logging_std.getLogger('asyncio').addFilter(self)
      self._installed = True

  def filter(self, record):
    if record.levelno < logging_std.ERROR:
      return True
    if not (self.saving or self.failed):
      return True
    orbax = '/orbax/' in record.pathname
    abandoned = record.name == 'asyncio' and any(
        m in str(record.msg).split('\n', 1)[0] for m in _ABANDONED)
    if not (orbax or abandoned):
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += ' ' + ' '.join(traceback.format_exception_only(record.exc_info[1]))
    self.unwritten += _FAILED_WRITE.findall(text)
    record.levelno, record.levelname = logging_std.DEBUG, 'DEBUG'
    return logging.get_absl_logger().isEnabledFor(logging_std.DEBUG)


SAVE_LOG = _SaveLog()
# Whether an orbax restore failed in this process: the reads it abandoned may end later.
RESTORE_FAILED = threading.Event()


def remove_partial_save(paths: list[str], timeout: float = 60.0) -> None:
  """Removes the folders of a failed save once the writes it abandoned have stopped.

  The first write that fails ends orbax's save while its other writer threads go on; they stop
  on cancellation (or their own failures), and only then can the folders go without a late
  write making them again. Each is removed until it stays gone.
  """
  deadline = time.monotonic() + timeout
  writers = [t for t in threading.enumerate()
             if t is not threading.current_thread() and t.is_alive()
             and type(t).__module__.startswith('orbax.') and hasattr(t, 'cancel')]
  for thread in writers:
    thread.cancel()
  for thread in writers:  # Thread's own join: orbax's raises the thread's error.
    threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
  for _ in range(50):
    for path in paths:
      shutil.rmtree(path, ignore_errors=True)
    time.sleep(0.05)
    if not any(os.path.exists(path) for path in paths):
      return


def quiet_abandoned_reads() -> None:
  """Keeps the reads and writes a failed restore or save abandons from printing a traceback each.

  When one read of a restore (or write of a save) fails, orbax closes its event loop while
  TensorStore still finishes the others, and each of their completion callbacks fails with "Event
  loop is closed"; Python prints those (sys.unraisablehook), hundreds of tracebacks after the
  restore's own error. They go to debug level, as do the unfinished reads and writes of a failed
  restore or save that Python collects later, with their errors unretrieved (when depends on
  the machine's load); other unraisable errors go to the previous hook.
  Installed once per process.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'asymfusion_quiet', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      logging.debug('A read or write abandoned by a failed restore or save finished after its '
                    'event loop closed.')
      return
    code = getattr(unraisable.object, 'cr_code', None)  # A coroutine collected unfinished.
    if ((SAVE_LOG.failed or RESTORE_FAILED.is_set())
        and '/orbax/' in getattr(code, 'co_filename', '')):
      # A write of the failed save or a read of the failed restore, collected (often at exit,
      # or when a loaded machine runs the collector late) with its error unretrieved.
      logging.debug('An orbax read or write abandoned by a failed restore or save ended '
                    'with: %s', error)
      return
    previous(unraisable)

  hook.asymfusion_quiet = True
  sys.unraisablehook = hook
