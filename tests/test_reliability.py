"""Checkpoint integrity (checksums), one run per workdir (the lock), and short fallback warnings."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from asymfusion_jax import checkpoint_failures, checkpointing, checksums, export, train, variables_io, workdir_lock
from tests import tiny


def copy_run(full_run, tmp_path) -> str:
  workdir = str(tmp_path / 'copy')
  shutil.copytree(full_run[0], workdir)
  return workdir


def reference(workdir, step):
  """The train state of a periodic checkpoint as a dict, restored by orbax alone (unchecked)."""
  ckpts = checkpointing.Checkpoints(workdir)
  restored = ckpts.periodic.restore(step)
  ckpts.close()
  return {**restored[checkpointing.VARIABLES], **restored[checkpointing.TRAIN]}


def largest_file(directory) -> str:
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


def corrupt_readably(directory, restore) -> None:
  """Overwrites 4 KiB of the largest file under directory so that orbax still restores it.

  Where the overwritten bytes decode (a raw zstd block) orbax returns wrong values without an
  error: the silent corruption checksums must catch. Offsets that orbax does reject are tried
  no further. `restore()` is a plain orbax restore of the directory, returning its arrays.
  """
  path = largest_file(directory)
  original = open(path, 'rb').read()
  expected = jax.tree.leaves(restore())
  noise = np.random.RandomState(0).bytes(4096)
  for fraction in (0.5, 0.7, 0.6, 0.4, 0.8, 0.3, 0.9, 0.2, 0.1):
    offset = int(len(original) * fraction)
    with open(path, 'wb') as f:
      f.write(original[:offset] + noise + original[offset + len(noise):])
    try:
      restored = jax.tree.leaves(restore())
    except Exception:  # pylint: disable=broad-except  # Detected by orbax itself: try elsewhere.
      continue
    if any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(restored, expected)):
      return
  raise AssertionError(f'no 4 KiB overwrite of {path} restores silently')


def warnings_about(caplog, text):
  return [r.getMessage() for r in caplog.records
          if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_silently_corrupted_latest_checkpoint_is_moved_aside(full_run, tmp_path, caplog):
  workdir = copy_run(full_run, tmp_path)
  latest = os.path.join(workdir, 'checkpoints', '12')
  corrupt_readably(latest, lambda: reference(workdir, 12))
  expected = reference(full_run[0], 8)
  ckpts = checkpointing.Checkpoints(workdir)
  caplog.clear()
  state, record = ckpts.restore_latest(checkpointing.abstract(expected))
  assert record['step'] == 8
  jax.tree.map(np.testing.assert_array_equal, state, expected)
  assert ckpts.periodic.all_steps() == [8]
  assert ckpts.kept_note() == (f'The last verified checkpoint, step 8 in '
                               f'{ckpts.periodic.directory}, is kept.')
  ckpts.close()
  moved = os.path.join(workdir, checkpointing.UNREADABLE_DIR, '12')
  assert os.path.isdir(moved)
  [warning] = warnings_about(caplog, 'step 12')
  assert '\n' not in warning and 'changed since it was written' in warning, warning
  assert warning.endswith(f'moved to {moved}.'), warning


def test_unreadable_checkpoint_warns_in_one_line(full_run, tmp_path, caplog, monkeypatch):
  """An orbax failure (here on garbled files whose checksums were recorded after they were
  garbled, so that orbax's own read is what fails) gets one short line.

  A garbled OCDBT node fails many reads at once; the ones still running when orbax gives up
  must not print an "Event loop is closed" traceback each.
  """
  workdir = copy_run(full_run, tmp_path)
  step_dir = os.path.join(workdir, 'checkpoints', '12')
  nodes = os.path.join(step_dir, checkpointing.VARIABLES, 'd')
  for name in os.listdir(nodes):
    with open(os.path.join(nodes, name), 'wb') as f:
      f.write(b'garbage')
  checksums.write(step_dir)
  abstract = checkpointing.abstract(reference(full_run[0], 8))
  unraisable = []  # What Python would print as "Exception ignored" tracebacks.
  monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
  ckpts = checkpointing.Checkpoints(workdir)
  caplog.clear()
  _, record = ckpts.restore_latest(abstract)
  ckpts.close()
  assert record['step'] == 8
  time.sleep(1)  # Reads that outlive the restore finish now.
  [warning] = warnings_about(caplog, 'step 12')
  prefix = f'Checkpoint at step 12 in {workdir}/checkpoints cannot be restored ('
  assert warning.startswith(prefix) and '\n' not in warning, warning
  why, moved_to = warning[len(prefix):].rsplit('); moved to ', 1)
  # The chain of TensorStore errors keeps its start and its innermost error, without the specs.
  assert len(why) < 250 and why.endswith('is not valid for value of size 7'), why
  assert moved_to == os.path.join(workdir, checkpointing.UNREADABLE_DIR, '12.')
  assert [str(u.exc_value) for u in unraisable] == []


def test_reads_abandoned_by_a_failed_restore_print_nothing(monkeypatch):
  """Their "Event loop is closed" errors (timing-dependent, so also checked directly here)."""
  passed_on = []
  monkeypatch.setattr(sys, 'unraisablehook', passed_on.append)
  checkpointing.quiet_abandoned_reads()
  closed, other = RuntimeError('Event loop is closed'), RuntimeError('something else')
  for error in (closed, other):
    sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=error,
                                             exc_traceback=None, err_msg=None, object=None))
  assert [u.exc_value for u in passed_on] == [other]
  # A read of a failed restore collected unfinished, its error unretrieved (a loaded machine
  # collects it late): passed on before any restore failed, dropped after one did.
  read = types.SimpleNamespace(co_filename='/site-packages/orbax/checkpoint/serialization.py')
  unread = types.SimpleNamespace(exc_type=ValueError, exc_value=ValueError('read error'),
                                 exc_traceback=None, err_msg=None,
                                 object=types.SimpleNamespace(cr_code=read))
  monkeypatch.setattr(checkpoint_failures, 'RESTORE_FAILED', threading.Event())
  monkeypatch.setattr(checkpoint_failures.SAVE_LOG, 'failed', False)
  sys.unraisablehook(unread)
  checkpoint_failures.RESTORE_FAILED.set()
  sys.unraisablehook(unread)
  assert [u.exc_value for u in passed_on] == [other, unread.exc_value]


def test_checkpoint_without_its_checksum_record_is_not_trusted(full_run, tiny_data, tmp_path,
                                                                caplog):
  """Issue 26: the record of the latest checkpoint deleted and 4 KiB of its largest file
  overwritten (what a run killed before the record was written, plus a bad disk, leaves).
  Evaluating or exporting that step is an error; resuming moves it aside in one warning line
  and falls back to step 8. The best checkpoint likewise."""
  workdir = copy_run(full_run, tmp_path)
  latest = os.path.join(workdir, 'checkpoints', '12')
  os.remove(os.path.join(latest, checksums.CHECKSUMS_FILE))
  corrupt_readably(latest, lambda: reference(workdir, 12))
  pattern = (rf'checkpoint of step 12 in {workdir}/checkpoints cannot be restored '
             rf'\({checksums.CHECKSUMS_FILE} is missing, so its files cannot be trusted')
  with pytest.raises(checkpointing.UnreadableCheckpointError, match=pattern):
    export.from_workdir(workdir, step=12)
  with pytest.raises(checkpointing.UnreadableCheckpointError, match=pattern):
    train.evaluate_checkpoint(tiny.config(tiny_data), workdir, step=12)
  [best] = os.listdir(os.path.join(workdir, 'best'))
  os.remove(os.path.join(workdir, 'best', best, checksums.CHECKSUMS_FILE))
  with pytest.raises(checkpointing.UnreadableCheckpointError, match=f'{checksums.CHECKSUMS_FILE} '
                     'is missing'):
    export.from_workdir(workdir)

  expected = reference(full_run[0], 8)
  ckpts = checkpointing.Checkpoints(workdir)
  caplog.clear()
  state, record = ckpts.restore_latest(checkpointing.abstract(expected))  # What resuming does.
  assert record['step'] == 8 and ckpts.kept_note().startswith('The last verified checkpoint, '
                                                              'step 8 ')
  ckpts.close()
  jax.tree.map(np.testing.assert_array_equal, state, expected)
  [warning] = warnings_about(caplog, 'step 12')
  moved = os.path.join(workdir, checkpointing.UNREADABLE_DIR, '12')
  assert warning == (f'Checkpoint at step 12 in {workdir}/checkpoints cannot be restored '
                     f'({checksums.CHECKSUMS_FILE} is missing, so its files cannot be trusted: it '
                     'was not completely written, its record was deleted, or it predates '
                     f'checksums); moved to {moved}.')
  assert os.path.isdir(moved)


def test_nan_message_names_the_verified_checkpoint():
  watch = train._LossWatch(lambda: 'The last verified checkpoint, step 8 in DIR, is kept.')
  watch.add(9, jnp.float32(np.nan))
  with pytest.raises(FloatingPointError, match=r'at step 9.*last verified checkpoint, step 8'):
    watch.check()


def test_corrupted_best_checkpoint_is_an_error_for_eval_and_export(full_run, tiny_data, tmp_path):
  workdir = copy_run(full_run, tmp_path)
  best = checkpointing.Checkpoints(workdir)
  step = best.best.latest_step()
  directory = str(best.best.directory)
  best.close()

  def restore_best():
    ckpts = checkpointing.Checkpoints(workdir)
    variables = ckpts.best.restore(step)[checkpointing.VARIABLES]
    ckpts.close()
    return variables

  corrupt_readably(os.path.join(directory, str(step)), restore_best)
  pattern = rf'checkpoint of step {step} in {directory} cannot be restored .*changed since'
  with pytest.raises(checkpointing.UnreadableCheckpointError, match=pattern):
    export.from_workdir(workdir)
  with pytest.raises(checkpointing.UnreadableCheckpointError, match=pattern):
    train.evaluate_checkpoint(tiny.config(tiny_data), workdir)
  # An explicitly requested checkpoint has no fallback, and is left where it is.
  assert os.path.isdir(os.path.join(directory, str(step)))
  assert not os.path.exists(os.path.join(workdir, checkpointing.UNREADABLE_DIR))


def test_corrupted_variables_checkpoint_is_refused(tmp_path):
  """The checkpoints `convert` writes, for config.init.checkpoint and export --checkpoint."""
  rng = np.random.RandomState(0)
  variables = {'params': {'w': rng.randn(256, 1024).astype(np.float32)},
               'batch_stats': {'mean': rng.randn(64).astype(np.float32)}}
  path = variables_io.save_variables(tmp_path / 'vars', variables)
  checksums.verify(path)
  record = os.path.join(path, checksums.CHECKSUMS_FILE)
  shutil.copy(record, tmp_path / 'record')
  os.remove(record)  # What a convert killed before it wrote the record leaves.
  with pytest.raises(checksums.ChecksumError,
                     match=rf'checkpoint {path} cannot be used: {checksums.CHECKSUMS_FILE} is '
                           'missing'):
    variables_io.load_variables(path)
  shutil.copy(tmp_path / 'record', record)

  def restore():
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path)

  corrupt_readably(path, restore)
  with pytest.raises(checksums.ChecksumError, match=rf'checkpoint {path} cannot be used: .*changed'):
    variables_io.load_variables(path)


# The workdir lock.


def lock_path(workdir):
  return os.path.join(workdir, workdir_lock.LOCK_FILE)


def write_lock(workdir, **holder):
  record = {'host': socket.gethostname(), 'purpose': 'training',
            'started': '2026-01-02 03:04:05 UTC', 'token': 'other', **holder}
  with open(lock_path(workdir), 'w') as f:
    json.dump(record, f)


@pytest.fixture
def sleeper():
  proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  yield proc
  proc.kill()
  proc.wait()


def test_second_run_fails_at_once_naming_the_holder(full_run, tiny_data, tmp_path, sleeper):
  workdir = copy_run(full_run, tmp_path)
  assert not os.path.exists(lock_path(full_run[0]))  # Released by the finished run.
  write_lock(workdir, pid=sleeper.pid, process_start=workdir_lock._process_start(sleeper.pid))
  metrics = os.path.join(workdir, 'metrics.jsonl')
  before = sorted(os.listdir(workdir)), open(metrics).read()
  pattern = (rf'{workdir} is in use by another run \(training on host {socket.gethostname()}, '
             rf'pid {sleeper.pid}, started 2026-01-02 03:04:05 UTC; lock file')
  with pytest.raises(workdir_lock.WorkdirLockedError, match=pattern):
    train.train_and_evaluate(tiny.config(tiny_data), workdir)
  with pytest.raises(workdir_lock.WorkdirLockedError, match=pattern):
    train.evaluate_checkpoint(tiny.config(tiny_data), workdir)
  assert (sorted(os.listdir(workdir)), open(metrics).read()) == before


def test_lock_is_exclusive_within_a_process_and_released_on_errors(tmp_path):
  with pytest.raises(ZeroDivisionError):
    with workdir_lock.WorkdirLock(str(tmp_path), 'training'):
      assert os.path.exists(lock_path(str(tmp_path)))
      with pytest.raises(workdir_lock.WorkdirLockedError, match=f'pid {os.getpid()}'):
        with workdir_lock.WorkdirLock(str(tmp_path), 'evaluation'):
          pass
      1 / 0  # pylint: disable=pointless-statement
  assert os.listdir(tmp_path) == []


def test_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  write_lock(str(tmp_path), pid=dead.pid)
  with workdir_lock.WorkdirLock(str(tmp_path), 'training'):
    pass
  [warning] = warnings_about(caplog, 'Taking over the lock')
  assert f'pid {dead.pid} is no longer running' in warning
  assert os.listdir(tmp_path) == []


def test_lock_from_another_host_is_kept_until_its_heartbeat_stops(tmp_path, caplog):
  write_lock(str(tmp_path), host='elsewhere', pid=1)
  with pytest.raises(workdir_lock.WorkdirLockedError, match=r'host elsewhere.*delete'):
    with workdir_lock.WorkdirLock(str(tmp_path), 'training'):
      pass
  old = time.time() - workdir_lock.STALE_SECONDS - 60
  os.utime(lock_path(str(tmp_path)), (old, old))
  with workdir_lock.WorkdirLock(str(tmp_path), 'training'):
    pass
  [warning] = warnings_about(caplog, 'Taking over the lock')
  assert 'heartbeat stopped' in warning


@pytest.mark.parametrize('text', ['', '{"host": "a', '[1, 2]'])
def test_an_unparseable_lock_is_taken_over(tmp_path, caplog, monkeypatch, text):
  """An empty or garbled lock names no holder: taken over, once it is not being written."""
  monkeypatch.setattr(workdir_lock, 'UNPARSEABLE_GRACE_SECONDS', 0.3)
  with open(lock_path(str(tmp_path)), 'w') as f:
    f.write(text)  # Fresh: the run waits out the grace period, then takes it over.
  start = time.monotonic()
  with workdir_lock.WorkdirLock(str(tmp_path), 'training'):
    with open(lock_path(str(tmp_path))) as f:
      assert json.load(f)['pid'] == os.getpid()
  assert time.monotonic() - start >= 0.2
  [warning] = warnings_about(caplog, 'Taking over the lock')
  assert 'cannot be parsed' in warning
  assert os.listdir(tmp_path) == []


def test_a_lock_is_never_left_half_written(tmp_path, monkeypatch):
  """A run that dies while writing its lock leaves no lock (it was written beside, then linked)."""
  def dump(record, f):
    f.write('{"host": ')
    raise OSError('killed while writing')

  monkeypatch.setattr(workdir_lock.json, 'dump', dump)
  with pytest.raises(OSError, match='killed while writing'):
    with workdir_lock.WorkdirLock(str(tmp_path), 'training'):
      pass
  assert os.listdir(tmp_path) == []
