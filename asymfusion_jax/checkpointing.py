"""Training checkpoints: asynchronous orbax saves of the train state, verified by checksums.

`DIR/checkpoints/<step>/` keeps the latest few periodic saves, each with the items `variables`
(params and batch_stats), `train` (step, optimizer state, rng) and `record` (JSON: step, data
position, best score so far). `DIR/best/<step>/` is the checkpoint of the best score, with what
evaluation and export need: `variables` and `record`, hard links to the files of the periodic
save of the same step, so it costs no second write and outlives that save's deletion (copies of
them where the file system has no hard links). Workdirs written before this layout have one
item, `state` (the whole train state), in both folders; they resume, evaluate and export as
before.

Saves are asynchronous: `save` returns once the state is copied off the devices, and the next
steps run while orbax writes it in a background thread. There, once the data is complete,
process 0 records the SHA-256 of every file (asymfusion_jax.checksums) and links the best
checkpoint, and only then does orbax commit the step (renames its temporary folder). So a
committed checkpoint has its checksum record; one without is not trusted, and every restore
checks the record first. A save's failure surfaces at the next save or at `close` (which waits
for the pending save; so do a SIGTERM stop and an error, through the context manager) as one
CheckpointSaveError that names the file that could not be written (and, for a full disk, the
space the save needs), after the partial save is removed; the earlier checkpoints are kept.

Restoring the latest checkpoint skips, with a one-line warning, any that cannot be read
(corrupt, partial, without a checksum record or whose files no longer match it) and falls back
to an older one; the unreadable ones are moved to `DIR/checkpoints_unreadable/` so that training
can save those steps again. A checkpoint whose parameters do not fit the model (the config
changed) is not unreadable: it stops the run with CheckpointMismatchError, and nothing in the
workdir is touched. A checkpoint asked for explicitly (evaluation, export) has no fallback: if it
cannot be read, that is an UnreadableCheckpointError naming it.
"""

import dataclasses
import os
import shutil
from typing import Any

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from asymfusion_jax import checksums
from asymfusion_jax.checkpoint_failures import (RESTORE_FAILED, SAVE_LOG, disk_full,
                                                quiet_abandoned_reads, reason,
                                                remove_partial_save)
from asymfusion_jax.models import scan_layout

UNREADABLE_DIR = 'checkpoints_unreadable'
COLLECTIONS = ('params', 'batch_stats')  # The `variables` item: what evaluation and export need.
VARIABLES, TRAIN, RECORD = 'variables', 'train', 'record'
STATE = 'state'  # The one item of the layout before `variables` and `train`.
BEST_ITEMS = (VARIABLES, RECORD)
_STEP_METADATA = '_CHECKPOINT_METADATA'  # orbax's, updated in place when it commits.


class CheckpointMismatchError(ValueError):
  """A checkpoint was written for another model than the config describes."""


class UnreadableCheckpointError(ValueError):
  """A checkpoint asked for by step cannot be restored: corrupt, partial or failing checksums."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, say); its partial files are removed."""


def _manager(directory: str, max_to_keep: int | None, create: bool,
             on_commit=None) -> ocp.CheckpointManager:
  """orbax's manager of one folder of steps; asynchronous saves when on_commit is given.

  on_commit: called in orbax's background thread on process 0 once a save's data is written,
    before orbax commits it.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=create, cleanup_tmp_directories=create,
      enable_async_checkpointing=on_commit is not None,
      async_options=ocp.AsyncOptions(post_finalization_callback=on_commit) if on_commit else None)
  # Handlers named up front, so that item_metadata can read a step before any restore.
  handlers = {name: ocp.StandardCheckpointHandler() for name in (VARIABLES, TRAIN, STATE)}
  handlers[RECORD] = ocp.JsonCheckpointHandler()
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=handlers)


def _step_dir(manager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _uncommitted_dir(directory, step: int) -> epath.Path:
  """Where orbax is writing `step` before it commits: its temporary folder (or, on storage
  where orbax commits with a marker file instead of a rename, the step's own folder)."""
  directory = epath.Path(directory)
  temporary = list(directory.glob(f'{step}{ocp.path.atomicity.TMP_DIR_SUFFIX}*'))
  if len(temporary) == 1:
    return temporary[0]
  if not temporary and (directory / str(step)).exists():
    return directory / str(step)
  raise RuntimeError(f'cannot tell which folder in {directory} holds the save of step {step} '
                     f'(temporary folders: {sorted(p.name for p in temporary)})')


@dataclasses.dataclass(frozen=True)
class _Pending:
  """The save being written in the background."""
  step: int
  also_best: bool
  nbytes: int  # The arrays' size: what the save writes, about (orbax does not compress them).


class Checkpoints:
  """The periodic and best checkpoints of one workdir; a context manager that closes them."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    """create=False only reads: a workdir without checkpoints is an error, and nothing is made."""
    if not create and not any(os.path.isdir(os.path.join(workdir, d))
                              for d in ('checkpoints', 'best')):
      raise FileNotFoundError(f'no checkpoints in {workdir} (neither checkpoints/ nor best/); '
                              'check --workdir, or train there first')
    self.workdir = workdir
    self._best_dir = os.path.abspath(os.path.join(workdir, 'best'))
    if create and jax.process_index() == 0:
      os.makedirs(self._best_dir, exist_ok=True)
      _remove_unfinished_best(self._best_dir)
    self.periodic = _manager(os.path.join(workdir, 'checkpoints'), keep, create,
                             on_commit=self._on_commit if create else None)
    self.best = _manager(self._best_dir, None, create=False)  # Written by _link_best only.
    # The newest periodic step known good: saved by this process, or restored with checksums.
    self.verified_step = None
    self._pending = None  # The _Pending save being written in the background.
    self._closed = False

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    if exc is None:
      self.close()
      return
    try:  # An error stops training: the pending save is finished (or cleaned up) first.
      self.close()
    except CheckpointSaveError as e:  # The error in flight is the one to report.
      logging.warning('%s', e)

  def save(self, state, record: dict, also_best: bool = False) -> None:
    """Starts saving `state` and `record` at record['step']; also the best one if also_best.

    Returns once the state is copied off the devices; the files are written in the background
    (see the module docstring). The previous save is waited for first.

    Raises:
      CheckpointSaveError: this save, or the previous one, could not be written.
    """
    self.wait()
    step = int(record['step'])
    if step in self.periodic.all_steps():
      return
    quiet_abandoned_reads()
    SAVE_LOG.install()
    SAVE_LOG.unwritten.clear()
    tree = _as_dict(state)
    self._pending = _Pending(step, also_best, sum(x.nbytes for x in jax.tree.leaves(tree)))
    SAVE_LOG.saving += 1
    try:
      self.periodic.save(step, args=ocp.args.Composite(
          **{VARIABLES: ocp.args.StandardSave({k: tree[k] for k in COLLECTIONS}),
             TRAIN: ocp.args.StandardSave({k: v for k, v in tree.items() if k not in COLLECTIONS}),
             RECORD: ocp.args.JsonSave(record)}))
    except Exception as e:  # pylint: disable=broad-except  # Re-raised, in one line.
      raise self._failed(e) from e

  def wait(self) -> None:
    """Waits until the pending save is written and verified (committed with its checksums).

    Raises:
      CheckpointSaveError: it could not be written.
    """
    if self._pending is None:
      return
    try:
      self.periodic.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # Re-raised, in one line.
      raise self._failed(e) from e
    self.verified_step = self._pending.step
    self._done()

  def _done(self) -> _Pending:
    pending, self._pending = self._pending, None
    SAVE_LOG.saving -= 1
    return pending

  def _on_commit(self) -> None:
    """orbax's post-finalization callback (process 0, background thread): the checksum record,
    and the best checkpoint's links, before orbax commits the pending save."""
    pending = self._pending
    source = _uncommitted_dir(self.periodic.directory, pending.step)
    files = checksums.write(source)
    if pending.also_best:
      _link_best(source, files, self._best_dir, pending.step)

  def _failed(self, error: BaseException) -> CheckpointSaveError:
    """The one-line error of the pending save's failure, once its partial files are removed."""
    pending = self._done()
    SAVE_LOG.failed = True
    directory = str(self.periodic.directory)
    if jax.process_index() == 0:
      partial = [str(p) for p in epath.Path(directory).glob(
          f'{pending.step}{ocp.path.atomicity.TMP_DIR_SUFFIX}*')]
      remove_partial_save(partial + [os.path.join(self._best_dir, f'.{pending.step}.partial')])
    full, path = disk_full(error)
    path = path or next(iter(SAVE_LOG.unwritten), None)
    if full:
      free = shutil.disk_usage(directory).free
      what = f'could not write {path}' if path else 'could not write its files'
      message = (f'No space left on device for the checkpoint of step {pending.step}: {what}. '
                 f'The save needs about {pending.nbytes / 1e6:.1f} MB; '
                 f'{free / 1e6:.1f} MB are free there now. The partial save was removed. '
                 f'{self._kept()} Free some space, then run the same command to resume.')
    else:
      message = (f'The checkpoint of step {pending.step} could not be written ({reason(error)}); '
                 f'the partial save was removed. {self._kept()}')
    return CheckpointSaveError(message)

  def _kept(self) -> str:
    directory = self.periodic.directory
    if self.verified_step is not None:
      return f'The last verified checkpoint, step {self.verified_step} in {directory}, is kept.'
    return f'No checkpoint was saved in {directory}.'

  def kept_note(self) -> str:
    """What a run stopping on a non-finite loss leaves to resume from, in one sentence or two.

    Waits for the pending save first: only a save with its checksum record counts.
    """
    try:
      self.wait()
    except CheckpointSaveError as e:
      return str(e)
    return self._kept()

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
        self.verified_step = step
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

  def _check_fits(self, manager, step, abstract_state, item: str):
    """Raises CheckpointMismatchError if the stored parameters differ in names or shapes (in
    the canonical layout: a checkpoint of the other config.model.scan_blocks fits). Returns
    the stored parameters' metadata, or None where it cannot be read.

    Only readable metadata is compared; a checkpoint whose metadata cannot be read is left to
    the restore, which treats it as unreadable.
    """
    try:
      metadata = manager.item_metadata(step)[item]['params']
      stored = scan_layout.canonical(metadata)
    except Exception:  # pylint: disable=broad-except
      return None
    expected = scan_layout.canonical(_as_dict(abstract_state)['params'])
    shapes = lambda tree: {jax.tree_util.keystr(path): tuple(leaf.shape)
                           for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    stored, expected = shapes(stored), shapes(expected)
    if stored == expected:
      return metadata
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

  def restore_variables(self, abstract_state, step: int | None = None) -> tuple[dict, dict]:
    """({'params', 'batch_stats'}, record) of the best checkpoint, or the periodic one of `step`.

    abstract_state: the abstract train state (checkpoints of the layout before `variables`
      hold the whole state, and restore against it).

    Raises:
      FileNotFoundError: there is no such checkpoint.
      CheckpointMismatchError: its parameters do not fit abstract_state's.
      UnreadableCheckpointError: it cannot be read, has no checksum record or fails it.
    """
    if step is None:
      manager = self.best
      manager.reload()
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(f'no best checkpoint in {manager.directory}; train first or pass '
                                '--step=N')
    else:
      manager = self.periodic
      if step not in manager.all_steps():
        raise FileNotFoundError(f'no checkpoint for step {step} in {manager.directory}; '
                                f'available: {sorted(manager.all_steps())}')
    try:
      return self._restore(manager, step, abstract_state, variables_only=True)
    except (CheckpointMismatchError, FileNotFoundError):
      raise
    except Exception as e:  # pylint: disable=broad-except  # Re-raised, named.
      others = [s for s in self.periodic.all_steps() if s != step or manager is self.best]
      raise UnreadableCheckpointError(
          f'The checkpoint of step {step} in {manager.directory} cannot be restored '
          f'({reason(e)}); it was not used. Periodic checkpoints: {sorted(others)} (--step=N).'
      ) from e

  def _restore(self, manager, step, abstract_state, variables_only: bool = False):
    """Checks the checksums of `step`, then restores it (see restore_latest and
    restore_variables), as either layout, converted to abstract_state's scan_layout (a
    checkpoint holds the layout of the run that wrote it)."""
    directory = _step_dir(manager, step)
    checksums.verify(directory)
    quiet_abandoned_reads()
    whole = os.path.isdir(os.path.join(directory, STATE))  # The layout before `variables`.
    stored = self._check_fits(manager, step, abstract_state, STATE if whole else VARIABLES)
    tree = _as_dict(abstract_state)
    if variables_only and not whole:
      tree = {k: tree[k] for k in COLLECTIONS}
    records = []

    def read(tree):  # In the checkpoint's scan_layout.
      if whole:
        args = {STATE: ocp.args.StandardRestore(tree)}
      else:
        args = {VARIABLES: ocp.args.StandardRestore({k: tree[k] for k in COLLECTIONS})}
        if not variables_only:
          args[TRAIN] = ocp.args.StandardRestore(
              {k: v for k, v in tree.items() if k not in COLLECTIONS})
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            **args, **{RECORD: ocp.args.JsonRestore()}))
      except Exception:
        RESTORE_FAILED.set()  # Its abandoned reads may end later: quiet_abandoned_reads.
        raise
      records.append(restored[RECORD])
      return dict(restored[STATE]) if whole else {
          **restored[VARIABLES], **(restored[TRAIN] if TRAIN in args else {})}

    values = scan_layout.restore(read, tree if stored is None else stored, tree)
    if variables_only:
      return {k: values[k] for k in COLLECTIONS}, records[0]
    state = values if isinstance(abstract_state, dict) else type(abstract_state)(**values)
    return state, records[0]

  def close(self) -> None:
    """Waits for the pending save (its failure raises CheckpointSaveError), then closes."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self.periodic.close()
      self.best.close()


def _link_or_copy(source: str, target: str) -> None:
  try:
    os.link(source, target)
  except OSError:  # No hard links here (another file system, or none at all): a copy.
    shutil.copy2(source, target)


def _link_best(source, files: dict, best_dir: str, step: int) -> None:
  """Makes best_dir/<step> of the `variables` and `record` items of the save in `source`.

  Hard links (or copies) of the files checksummed as `files`, and their checksum record, are
  gathered in a hidden folder, which then replaces the best checkpoint; the older ones go.
  """
  source = str(source)
  partial = os.path.join(best_dir, f'.{step}.partial')
  shutil.rmtree(partial, ignore_errors=True)
  kept = {relative: entry for relative, entry in files.items()
          if relative.split('/', 1)[0] in BEST_ITEMS}
  for relative in kept:
    target = os.path.join(partial, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _link_or_copy(os.path.join(source, relative), target)
  if os.path.exists(os.path.join(source, _STEP_METADATA)):  # A copy: orbax updates its own.
    shutil.copy2(os.path.join(source, _STEP_METADATA), os.path.join(partial, _STEP_METADATA))
  checksums.write(partial, kept)
  final = os.path.join(best_dir, str(step))
  if os.path.exists(final):  # The same step again (a resumed run): the new one replaces it.
    os.rename(final, os.path.join(best_dir, f'.{step}.replaced'))
  os.rename(partial, final)
  _remove_unfinished_best(best_dir, keep=str(step))


def _remove_unfinished_best(best_dir: str, keep: str | None = None) -> None:
  """Removes what a best checkpoint replaced or left half made; with `keep`, every other step."""
  for name in os.listdir(best_dir):
    unfinished = name.startswith('.') and name.endswith(('.partial', '.replaced'))
    if unfinished or (keep is not None and name != keep):
      shutil.rmtree(os.path.join(best_dir, name), ignore_errors=True)


def _as_dict(state) -> dict:
  if isinstance(state, dict):
    return state
  return {k: getattr(state, k) for k in state.__dataclass_fields__}


def abstract(state):
  """ShapeDtypeStructs (with shardings) of a concrete pytree, to restore against."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
