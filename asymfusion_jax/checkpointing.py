"""Training checkpoints: orbax CheckpointManagers for periodic saves and for the best model.

A checkpoint holds the train state (params, batch_stats, opt_state, step, rng) and a JSON
record (step, data position, best ensemble mIoU so far). `DIR/checkpoints` keeps the latest few
periodic saves; `DIR/best` keeps the one with the highest ensemble mIoU. Every save records the
SHA-256 of each of its files (asymfusion_jax.checksums), and every restore checks them first.

Restoring the latest checkpoint skips, with a one-line warning, any that cannot be read
(corrupt, partial, or whose files no longer match their checksums) and falls back to an older
one; the unreadable ones are moved to `DIR/checkpoints_unreadable/` so that training can save
those steps again. A checkpoint whose parameters do not fit the model (the config changed) is not
unreadable: it stops the run with CheckpointMismatchError, and nothing in the workdir is touched.
A checkpoint asked for by step (evaluation, export) has no fallback: if it cannot be read, that is
an UnreadableCheckpointError naming it.
"""

import os
import shutil
import sys
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from asymfusion_jax import checksums

UNREADABLE_DIR = 'checkpoints_unreadable'


class CheckpointMismatchError(ValueError):
  """A checkpoint was written for another model than the config describes."""


class UnreadableCheckpointError(ValueError):
  """A checkpoint asked for by step cannot be restored: corrupt, partial or failing checksums."""


def _manager(directory: str, max_to_keep: int, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  # Handlers named up front, so that item_metadata can read a step before any restore.
  handlers = {'state': ocp.StandardCheckpointHandler(), 'record': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=handlers)


def _step_dir(manager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def reason(error: BaseException, limit: int = 240) -> str:
  """Why a restore failed, in one line of at most about `limit` characters.

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


def quiet_abandoned_reads() -> None:
  """Keeps the reads a failed restore abandons from printing a traceback each.

  When one read of a restore fails, orbax closes its event loop while TensorStore still finishes
  the others, and each of their completion callbacks fails with "Event loop is closed"; Python
  prints those (sys.unraisablehook), hundreds of tracebacks after the restore's own error. They
  go to debug level; other unraisable errors to the previous hook. Installed once per process.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'asymfusion_quiet', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      logging.debug('A read abandoned by a failed restore finished after its event loop closed.')
      return
    previous(unraisable)

  hook.asymfusion_quiet = True
  sys.unraisablehook = hook


class Checkpoints:
  """The periodic and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    """create=False only reads: a workdir without checkpoints is an error, and nothing is made."""
    if not create and not any(os.path.isdir(os.path.join(workdir, d))
                              for d in ('checkpoints', 'best')):
      raise FileNotFoundError(f'no checkpoints in {workdir} (neither checkpoints/ nor best/); '
                              'check --workdir, or train there first')
    self.workdir = workdir
    self.periodic = _manager(os.path.join(workdir, 'checkpoints'), keep, create)
    self.best = _manager(os.path.join(workdir, 'best'), 1, create)
    # The newest periodic step known good: saved by this process, or restored with checksums.
    self.verified_step = None
    self._unverified_step = None  # A periodic step restored without checksums (an older run).

  def save(self, state, record: dict, best: bool = False) -> None:
    """Saves `state` and `record` at record['step'] and records their checksums."""
    manager = self.best if best else self.periodic
    step = int(record['step'])
    if step in manager.all_steps():
      return
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_as_dict(state)), record=ocp.args.JsonSave(record)))
    manager.wait_until_finished()
    if jax.process_index() == 0:
      checksums.write(_step_dir(manager, step))
    if not best:
      self.verified_step = step

  def kept_note(self) -> str:
    """What a run stopping on a non-finite loss leaves to resume from, in one sentence."""
    directory = self.periodic.directory
    if self.verified_step is not None:
      return f'The last verified checkpoint, step {self.verified_step} in {directory}, is kept.'
    if self._unverified_step is not None:
      return (f'No checkpoint is verified: step {self._unverified_step} in {directory}, which this '
              'run resumed from, was written without checksums.')
    return f'No checkpoint was saved in {directory}.'

  def restore_latest(self, abstract_state) -> tuple[Any, dict] | tuple[None, None]:
    """The newest readable periodic checkpoint as (state, record), or (None, None) if none.

    Unreadable newer checkpoints are moved aside (see the module docstring).

    Raises:
      CheckpointMismatchError: a checkpoint's parameters do not fit abstract_state's.
    """
    unreadable, result = [], (None, None)
    for step in sorted(self.periodic.all_steps(), reverse=True):
      try:
        result = self._restore(self.periodic, step, abstract_state)
        break
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Any unreadable checkpoint is skipped.
        logging.debug('Checkpoint at step %d in %s cannot be restored:', step,
                      self.periodic.directory, exc_info=e)
        unreadable.append((step, e))
    if unreadable:
      self._set_aside(unreadable)
    return result

  def _set_aside(self, unreadable) -> None:
    """Moves unreadable periodic steps out of the manager's folder (process 0), then reloads.

    Args:
      unreadable: (step, the error of its restore) pairs; each gets one warning line.
    """
    if jax.process_index() == 0:
      target_root = os.path.join(self.workdir, UNREADABLE_DIR)
      os.makedirs(target_root, exist_ok=True)
      for step, error in unreadable:
        target, n = os.path.join(target_root, str(step)), 1
        while os.path.exists(target):
          target, n = os.path.join(target_root, f'{step}.{n}'), n + 1
        shutil.move(_step_dir(self.periodic, step), target)
        logging.warning('Checkpoint at step %d in %s cannot be restored (%s); moved to %s.',
                        step, self.periodic.directory, reason(error), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('unreadable checkpoints set aside')
    self.periodic.reload()

  def _check_fits(self, manager, step, abstract_state) -> None:
    """Raises CheckpointMismatchError if the stored parameters differ in names or shapes.

    Only readable metadata is compared; a checkpoint whose metadata cannot be read is left to
    the restore, which treats it as unreadable.
    """
    try:
      stored = manager.item_metadata(step)['state']['params']
    except Exception:  # pylint: disable=broad-except
      return
    expected = _as_dict(abstract_state)['params']
    shapes = lambda tree: {jax.tree_util.keystr(path): tuple(leaf.shape)
                           for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    stored, expected = shapes(stored), shapes(expected)
    if stored == expected:
      return
    differences = [f'{k}: stored {stored[k]}, the config\'s model has {expected[k]}'
                   for k in sorted(stored.keys() & expected.keys()) if stored[k] != expected[k]]
    differences += [f'{k}: only in the checkpoint' for k in sorted(stored.keys() - expected.keys())]
    differences += [f'{k}: only in the config\'s model'
                    for k in sorted(expected.keys() - stored.keys())]
    raise CheckpointMismatchError(
        f'The checkpoint of step {step} in {manager.directory} was written for another model '
        f'than this config describes ({len(differences)} parameters differ; first: '
        f'{"; ".join(differences[:3])}). Use the config it was trained with '
        f'({os.path.join(self.workdir, "config.json")}) or a new workdir; nothing was changed.')

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
    """The best checkpoint, or the periodic one at `step`.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      CheckpointMismatchError: its parameters do not fit abstract_state's.
      UnreadableCheckpointError: it cannot be read, or its files fail their checksums.
    """
    if step is None:
      manager, step = self.best, self.best.latest_step()
      if step is None:
        raise FileNotFoundError(f'no best checkpoint in {manager.directory}; train first or pass '
                                '--step=N')
    else:
      manager = self.periodic
      if step not in manager.all_steps():
        raise FileNotFoundError(f'no checkpoint for step {step} in {manager.directory}; '
                                f'available: {sorted(manager.all_steps())}')
    try:
      return self._restore(manager, step, abstract_state)
    except (CheckpointMismatchError, FileNotFoundError):
      raise
    except Exception as e:  # pylint: disable=broad-except  # Re-raised, named.
      others = [s for s in self.periodic.all_steps() if s != step or manager is self.best]
      raise UnreadableCheckpointError(
          f'The checkpoint of step {step} in {manager.directory} cannot be restored '
          f'({reason(e)}); it was not used. Periodic checkpoints: {sorted(others)} (--step=N).'
      ) from e

  def _restore(self, manager, step, abstract_state):
    """Checks the checksums of `step`, then restores it (see restore_latest and restore)."""
    verified = checksums.verify(_step_dir(manager, step))
    quiet_abandoned_reads()
    self._check_fits(manager, step, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_as_dict(abstract_state)), record=ocp.args.JsonRestore()))
    state = restored['state']
    if not isinstance(abstract_state, dict):
      state = type(abstract_state)(**state)
    if not verified:
      logging.warning('Restored the checkpoint of step %d in %s unverified: it has no checksums '
                      '(written before they were recorded).', step, manager.directory)
    if manager is self.periodic:
      self.verified_step, self._unverified_step = (step, None) if verified else (None, step)
    return state, restored['record']

  def close(self) -> None:
    self.periodic.close()
    self.best.close()


def _as_dict(state) -> dict:
  if isinstance(state, dict):
    return state
  return {k: getattr(state, k) for k in state.__dataclass_fields__}


def abstract(state):
  """ShapeDtypeStructs (with shardings) of a concrete pytree, to restore against."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
