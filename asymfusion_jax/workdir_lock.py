"""One run per workdir: training and --mode=eval hold an exclusive lock file, WORKDIR/.lock.

Two runs on one workdir would both save the same checkpoint steps (orbax fails on the other's
half-written folders) and both append to metrics.jsonl. The lock is a file that names its holder
(host, pid, start time) for the error a second run gets; it is written whole to a temporary file
first and then linked to its name, which fails if the name exists (the atomic create of O_EXCL,
and it also works on shared file systems where flock does not), so a lock is never seen empty or
half written. The holder refreshes its modification time every HEARTBEAT_SECONDS.

A lock whose holder is gone is taken over with a warning: on the same host, when its pid is no
longer running (or now belongs to another process); from another host, where the pid cannot be
checked, when its heartbeat is older than STALE_SECONDS. A lock that cannot be parsed (empty or
garbled: left by a version that wrote it after creating it, by a run that died in between) names
no holder that could be running, and is taken over once it is UNPARSEABLE_GRACE_SECONDS old. In
a multi-process run only process 0 holds the lock; the others learn from it whether to go on.
"""

import datetime
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import jax
import numpy as np

LOCK_FILE = '.lock'
HEARTBEAT_SECONDS = 30
STALE_SECONDS = 300
# A lock file that cannot be parsed is taken over when it is older than this: on a file system
# without hard links the lock is created, then written (a moment when another run reads it empty).
UNPARSEABLE_GRACE_SECONDS = 2.0

_held = set()  # Lock paths held by this process, which must not take them over from itself.


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


def _process_start(pid: int) -> str | None:
  """The start time of `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _running(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process: it exists.
    pass
  return start is None or _process_start(pid) in (None, start)


def _describe(holder: dict, path: str, age: float) -> str:
  return (f'{holder.get("purpose", "a run")} on host {holder.get("host", "?")}, pid '
          f'{holder.get("pid", "?")}, started {holder.get("started", "?")}; lock file {path}, '
          f'refreshed {age:.0f} s ago')


def _parse(text: str) -> dict:
  """The holder record of a lock file's text; {} if it cannot be parsed."""
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _gone(holder: dict, path: str, age: float) -> str | None:
  """Why the holder of a lock is gone, or None if it may still be running."""
  if path in _held:
    return None
  if not holder:
    if age < UNPARSEABLE_GRACE_SECONDS:  # Perhaps being written right now (no hard links).
      return None
    return ('the lock file cannot be parsed (empty or garbled: a run that died between creating '
            'and writing it), so it names no holder')
  pid = holder.get('pid')
  if holder.get('host') == socket.gethostname() and isinstance(pid, int):
    if pid == os.getpid():
      return f'pid {pid} is this process, which did not take the lock: a run before a restart'
    if not _running(pid, holder.get('process_start')):
      return f'pid {pid} is no longer running'
    return None
  if age > STALE_SECONDS:
    return f'its heartbeat stopped {age:.0f} s ago'
  return None


class WorkdirLock:
  """Context manager holding WORKDIR/.lock (process 0), released on exit and on exceptions.

  Raises (on entering):
    WorkdirLockedError: another live run holds the lock; the message names it.
  """

  def __init__(self, workdir: str, purpose: str):
    """purpose: what the run does ('training', 'evaluation'), for the holder's description."""
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.purpose = purpose
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._heartbeat = None

  def __enter__(self):
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirLockedError as e:
        error = e
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      locked = multihost_utils.broadcast_one_to_all(np.asarray(error is None))
      if not bool(locked) and error is None:
        error = WorkdirLockedError(f'process 0 could not lock {self.path}; see its log')
    if error is not None:
      raise error
    return self

  def __exit__(self, *exc):
    if self._heartbeat is None:
      return
    self._stop.set()
    self._heartbeat.join()
    _held.discard(self.path)
    holder, _ = self._read()
    if holder is not None and holder.get('token') == self._token:
      os.unlink(self.path)
    else:
      logging.warning('The lock %s was taken over by another run (%s) while this one held it.',
                      self.path, holder)

  def _read(self) -> tuple[dict | None, float]:
    """The holder's record ({} if unreadable) and the age of its heartbeat; (None, 0) if none."""
    try:
      with open(self.path) as f:
        text = f.read()
      age = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return None, 0.0
    return _parse(text), age

  def _acquire(self) -> None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    record = {'host': socket.gethostname(), 'pid': os.getpid(),
              'process_start': _process_start(os.getpid()), 'purpose': self.purpose,
              'started': datetime.datetime.now(datetime.timezone.utc).strftime(
                  '%Y-%m-%d %H:%M:%S UTC'),
              'token': self._token}
    for attempt in range(4):
      try:
        self._create(record)
      except FileExistsError:
        holder, age = self._read()
        if holder is None:  # Released meanwhile.
          continue
        gone = _gone(holder, self.path, age)
        if gone is None and not holder and attempt < 3 and self.path not in _held:
          time.sleep(UNPARSEABLE_GRACE_SECONDS - age)  # Being written, or left unwritten?
          continue
        if gone is None:
          raise WorkdirLockedError(
              f'{os.path.dirname(self.path)} is in use by another run '
              f'({_describe(holder, self.path, age)}). Wait for it to end or stop it; if it is '
              f'gone (a crashed run on another host), delete {self.path}.') from None
        logging.warning('Taking over the lock %s of a run that is gone (%s; %s).', self.path,
                        _describe(holder, self.path, age), gone)
        self._remove_stale(holder)
        continue
      _held.add(self.path)
      self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                         name=f'heartbeat of {self.path}')
      self._heartbeat.start()
      return
    raise WorkdirLockedError(f'could not take the lock {self.path}: other runs keep taking it')

  def _create(self, record: dict) -> None:
    """Creates the lock file holding `record`, whole, or raises FileExistsError.

    The record goes to a temporary file beside the lock, which is then hard-linked to the lock's
    name: the link fails if the name exists, and never shows a partial file. Where the file
    system has no hard links, the lock is created with O_EXCL and then written.
    """
    temp = f'{self.path}.{self._token}.tmp'
    try:
      with open(temp, 'w') as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
      try:
        os.link(temp, self.path)
        return
      except FileExistsError:
        raise
      except OSError:  # No hard links here (some FUSE and SMB mounts).
        pass
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      with os.fdopen(fd, 'w') as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    finally:
      try:
        os.unlink(temp)
      except FileNotFoundError:
        pass

  def _remove_stale(self, holder: dict) -> None:
    """Removes the lock if it still is `holder`'s, and not one a racing run just took over."""
    private = f'{self.path}.stale.{self._token}'
    try:
      os.rename(self.path, private)
    except FileNotFoundError:
      return
    with open(private) as f:
      same = _parse(f.read()) == holder
    if not same:  # Another run took it over between our read and the rename: give it back.
      try:
        os.link(private, self.path)
      except FileExistsError:
        pass
    os.unlink(private)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        os.utime(self.path)
      except OSError as e:
        logging.warning('Cannot refresh the lock %s: %s', self.path, e)
