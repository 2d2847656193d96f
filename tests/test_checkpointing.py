"""Asynchronous checkpoints: the best checkpoint as links, failed saves (a full disk) in one line,
kill -9 during a save, and workdirs of the layout before `variables` and `train`."""

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from asymfusion_jax import checkpointing, checksums, export
from tests import tiny


def small_state(step: int) -> dict:
  """A train state as checkpointing sees it, with values that tell the steps apart."""
  rng = np.random.RandomState(step)
  return {'step': np.int32(step), 'params': {'w': rng.randn(64, 256).astype(np.float32)},
          'batch_stats': {'mean': rng.randn(16).astype(np.float32)},
          'opt_state': {'momentum': rng.randn(64, 256).astype(np.float32)},
          'rng': np.arange(2, dtype=np.uint32)}


def record(step: int) -> dict:
  return {'step': step, 'data_position': step, 'best_metric': None, 'best_value': None}


def files(directory: str) -> dict[str, str]:
  return {os.path.relpath(os.path.join(root, name), directory): os.path.join(root, name)
          for root, _, names in os.walk(directory) for name in names}


def test_best_is_links_to_its_periodic_save_and_outlives_it(tmp_path):
  workdir = str(tmp_path)
  ckpts = checkpointing.Checkpoints(workdir, keep=2)
  ckpts.save(small_state(1), record(1), also_best=True)
  ckpts.save(small_state(2), record(2))  # Waits for step 1 first.
  ckpts.wait()
  assert ckpts.verified_step == 2
  best, periodic = os.path.join(workdir, 'best', '1'), os.path.join(workdir, 'checkpoints', '1')
  assert sorted(os.listdir(best)) == ['_CHECKPOINT_METADATA', checksums.CHECKSUMS_FILE,
                                      checkpointing.RECORD, checkpointing.VARIABLES]
  linked = files(best)
  for relative, path in files(periodic).items():
    if relative.startswith(checkpointing.VARIABLES + os.sep):  # The same files, not copies.
      assert os.stat(path).st_ino == os.stat(linked[relative]).st_ino, relative
  checksums.verify(best)

  ckpts.save(small_state(3), record(3))
  ckpts.save(small_state(4), record(4), also_best=True)
  ckpts.save(small_state(5), record(5))
  ckpts.close()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '5']
  assert os.listdir(os.path.join(workdir, 'best')) == ['4']

  os.makedirs(os.path.join(workdir, 'best', '.9.partial', 'variables'))  # A kill while linking.
  ckpts = checkpointing.Checkpoints(workdir, keep=2)
  assert os.listdir(os.path.join(workdir, 'best')) == ['4']
  ckpts.save(small_state(6), record(6), also_best=True)
  ckpts.save(small_state(7), record(7))
  ckpts.close()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['6', '7']
  ckpts = checkpointing.Checkpoints(workdir, create=False)
  abstract = checkpointing.abstract(jax.tree.map(jnp.asarray, small_state(0)))
  variables, best_record = ckpts.restore_variables(abstract)  # Its periodic save is gone.
  state, latest_record = ckpts.restore_latest(abstract)
  ckpts.close()
  assert best_record == record(6) and latest_record == record(7)
  jax.tree.map(np.testing.assert_array_equal, variables,
               {k: small_state(6)[k] for k in checkpointing.COLLECTIONS})
  jax.tree.map(np.testing.assert_array_equal, state, small_state(7))


def test_a_failed_save_is_one_error_and_is_never_committed(tmp_path, monkeypatch, caplog):
  """Injected: the checksum record of step 2 cannot be written, as on a full disk. orbax commits
  a step only after its record, so step 2 never appears; its partial folder is removed, and the
  error (raised by the next save or close) names the file; step 1 stays, verified."""
  workdir = str(tmp_path)
  write = checksums.write

  def disk_full_at_step_2(directory, entries=None):
    if os.path.basename(str(directory)).startswith('2.'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                    os.path.join(str(directory), checksums.CHECKSUMS_FILE))
    return write(directory, entries)

  monkeypatch.setattr(checksums, 'write', disk_full_at_step_2)
  ckpts = checkpointing.Checkpoints(workdir)
  ckpts.save(small_state(1), record(1), also_best=True)
  ckpts.save(small_state(2), record(2), also_best=True)  # Returns: written in the background.
  caplog.clear()
  with pytest.raises(checkpointing.CheckpointSaveError) as raised:
    ckpts.close()
  periodic = os.path.join(workdir, 'checkpoints')
  message = str(raised.value)
  assert message.startswith(
      f'No space left on device for the checkpoint of step 2: could not write {periodic}/2.'
      f'orbax-checkpoint-tmp/{checksums.CHECKSUMS_FILE}. The save needs about 0.1 MB; '), message
  assert message.endswith(
      f'MB are free there now. The partial save was removed. The last verified checkpoint, step 1 '
      f'in {periodic}, is kept. Free some space, then run the same command to resume.'), message
  assert os.listdir(periodic) == ['1'] and os.listdir(os.path.join(workdir, 'best')) == ['1']
  checksums.verify(os.path.join(periodic, '1'))
  # orbax's threads logged the failure with tracebacks; those went to debug level.
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def rewrite_in_old_layout(step_dir: str, state: dict, step: int) -> None:
  """A checkpoint as written before `variables` and `train`: one item `state`, and its record."""
  shutil.rmtree(step_dir, ignore_errors=True)
  handler = ocp.CompositeCheckpointHandler(state=ocp.StandardCheckpointHandler(),
                                           record=ocp.JsonCheckpointHandler())
  with ocp.Checkpointer(handler) as checkpointer:
    checkpointer.save(step_dir, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record(step))))
  checksums.write(step_dir)


def test_workdirs_of_the_old_layout_export_evaluate_and_resume(full_run, tmp_path):
  """Periodic and best checkpoints of one item `state` (the whole train state, the best one a
  second full copy): export and evaluation (the same restore_variables) read their variables,
  and resuming restores the whole state from them."""
  workdir = str(tmp_path / 'old')
  shutil.copytree(full_run[0], workdir)
  ckpts = checkpointing.Checkpoints(full_run[0], create=False)
  states = {}
  for step in (8, 12):
    restored = ckpts.periodic.restore(step)
    states[step] = {**restored[checkpointing.VARIABLES], **restored[checkpointing.TRAIN]}
  ckpts.close()
  for step, state in states.items():
    rewrite_in_old_layout(os.path.join(workdir, 'checkpoints', str(step)), state, step)
  shutil.rmtree(os.path.join(workdir, 'best'))
  rewrite_in_old_layout(os.path.join(workdir, 'best', '8'), states[8], 8)

  source = export.from_workdir(workdir)
  assert source.step == 8
  jax.tree.map(np.testing.assert_array_equal, source.variables,
               {k: states[8][k] for k in checkpointing.COLLECTIONS})
  source = export.from_workdir(workdir, step=12)
  jax.tree.map(np.testing.assert_array_equal, source.variables,
               {k: states[12][k] for k in checkpointing.COLLECTIONS})
  with checkpointing.Checkpoints(workdir) as ckpts:  # As training opens them to resume.
    state, restored = ckpts.restore_latest(checkpointing.abstract(
        jax.tree.map(jnp.asarray, states[12])))
    assert restored == record(12) and ckpts.verified_step == 12
  jax.tree.map(np.testing.assert_array_equal, state, states[12])


# The training CLI, whose save of step 4 hangs once its data is written, before its checksum record
# (and so before orbax's commit): a SIGKILL then lands in the middle of the save. The marker file
# (environment variable HANG_MARKER) says when.
HANG_IN_SAVE_OF_STEP_4 = textwrap.dedent("""
    import os, time
    from absl import app
    from asymfusion_jax import checksums, main
    write = checksums.write
    def write_or_hang(directory, entries=None):
      if os.path.basename(str(directory)).startswith('4.'):
        open(os.environ['HANG_MARKER'], 'w').close()
        time.sleep(600)
      return write(directory, entries)
    checksums.write = write_or_hang
    app.run(main.main, flags_parser=main.parse_flags)
""")


def test_kill_during_a_save_leaves_the_previous_checkpoint(full_run, tiny_data, tmp_path):
  """kill -9 while the save of step 4 is written: step 4 was never committed, so resuming
  restores step 2, verified (which resumes exactly: see
  test_train.test_corrupt_latest_checkpoint_is_skipped), and removes the partial folder."""
  del full_run  # Compiled the run's programs into the persistent cache the CLI reads.
  workdir = str(tmp_path / 'killed')
  marker, log = tmp_path / 'saving_4', tmp_path / 'killed.log'
  with open(log, 'w') as out:
    proc = subprocess.Popen(
        [sys.executable, '-c', HANG_IN_SAVE_OF_STEP_4, '--config=configs/demo.py',
         f'--workdir={workdir}', *tiny.flags(tiny_data, max_steps=4, checkpoint_every_steps=2)],
        cwd=tiny.REPO, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, 'HANG_MARKER': str(marker)})
  try:
    deadline = time.time() + 300
    while not marker.exists():
      assert proc.poll() is None, log.read_text()[-3000:]
      assert time.time() < deadline, log.read_text()[-3000:]
      time.sleep(0.2)
  finally:
    proc.kill()
    proc.wait()
  periodic = os.path.join(workdir, 'checkpoints')
  assert sorted(os.listdir(periodic)) == ['2', '4.orbax-checkpoint-tmp']
  ckpts = checkpointing.Checkpoints(workdir)  # As a resumed run opens them.
  abstract = checkpointing.abstract(jax.tree.map(jnp.asarray, reference_state(workdir, 2)))
  state, restored = ckpts.restore_latest(abstract)
  assert restored['step'] == 2 and ckpts.verified_step == 2
  ckpts.save(state, record(3))  # The partial folder is gone by the resumed run's first save.
  ckpts.close()
  assert sorted(os.listdir(periodic)) == ['2', '3']
  assert not os.path.exists(os.path.join(workdir, checkpointing.UNREADABLE_DIR))


def reference_state(workdir, step):
  with checkpointing.Checkpoints(workdir, create=False) as ckpts:
    restored = ckpts.periodic.restore(step)
  return {**restored[checkpointing.VARIABLES], **restored[checkpointing.TRAIN]}


def _private_mount() -> list[str] | None:
  """A command prefix under which `mount -t tmpfs` works and is undone at exit (a private mount
  namespace: as root, or as a user where user namespaces are allowed), or None."""
  probe = tempfile.mkdtemp(prefix='asymfusion-mount-probe-')
  for prefix in (['unshare', '--mount'], ['unshare', '--user', '--map-root-user', '--mount']):
    try:
      done = subprocess.run([*prefix, 'mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe],
                            capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      return None
    if done.returncode == 0:
      return prefix
  return None


# Without a tmpfs: the same run, with the checksum record of step 4 failing as on a full disk.
RECORD_OF_STEP_8_FAILS = textwrap.dedent("""
    import errno, os
    from absl import app
    from asymfusion_jax import checksums, main
    write = checksums.write
    def full(directory, entries=None):
      if os.path.basename(str(directory)).startswith('4.'):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      os.path.join(str(directory), checksums.CHECKSUMS_FILE))
      return write(directory, entries)
    checksums.write = full
    app.run(main.main, flags_parser=main.parse_flags)
""")


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(full_run, tiny_data, tmp_path):
  """Training into an 8 MB tmpfs: the checkpoint of step 2 (4.7 MB) fits, the one of step 4
  (also the best one) does not. One line on stderr names the file and the space needed, exit
  status 1, the partial save is gone and step 2 is kept. Where no tmpfs can be mounted, an
  injected ENOSPC stands in."""
  del full_run  # Compiled the run's programs into the persistent cache the CLI reads.
  disk, kept = tmp_path / 'disk', tmp_path / 'kept'
  disk.mkdir()
  workdir = disk / 'run'
  cli = ['--config=configs/demo.py', f'--workdir={workdir}',
         *tiny.flags(tiny_data, max_steps=4, checkpoint_every_steps=2)]
  prefix = _private_mount()
  if prefix is not None:
    script = (f'mount -t tmpfs -o size=8m tmpfs {disk} || exit 99; "$@"; status=$?; '
              f'cp -a {workdir} {kept}; exit $status')
    command = [*prefix, 'sh', '-c', script, 'sh', sys.executable, '-m', 'asymfusion_jax.main',
               *cli]
  else:
    command = [sys.executable, '-c', RECORD_OF_STEP_8_FAILS, *cli]
    kept = workdir
  done = subprocess.run(command, cwd=tiny.REPO, capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 1, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  periodic = os.path.join(workdir, 'checkpoints')
  assert last.startswith('main: No space left on device for the checkpoint of step 4: could not '
                         f'write {periodic}/4.orbax-checkpoint-tmp/'), done.stderr[-3000:]
  assert ' The save needs about 4.' in last and last.endswith(
      f'The partial save was removed. The last verified checkpoint, step 2 in {periodic}, is '
      'kept. Free some space, then run the same command to resume.'), last
  for noise in ('Traceback', 'Event loop is closed', 'ERROR'):
    assert noise not in done.stderr, done.stderr[-3000:]
  assert done.stderr.count('No space left on device') == 1, done.stderr[-3000:]
  assert os.listdir(kept / 'checkpoints') == ['2'] and os.listdir(kept / 'best') == []
  checksums.verify(kept / 'checkpoints' / '2')
