"""Training checkpoints: orbax CheckpointManagers for periodic saves and for the best model.

A checkpoint holds the train state (params, batch_stats, opt_state, step, rng) and a JSON
record (step, data position, best ensemble mIoU so far). `DIR/checkpoints` keeps the latest few
periodic saves; `DIR/best` keeps the one with the highest ensemble mIoU.

Restoring the latest checkpoint skips, with a warning, any that cannot be read (corrupt or
partial) and falls back to an older one; the unreadable ones are moved to
`DIR/checkpoints_unreadable/` so that training can save those steps again. A checkpoint whose
parameters do not fit the model (the config changed) is not unreadable: it stops the run with
CheckpointMismatchError, and nothing in the workdir is touched.
"""

import os
import shutil
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

UNREADABLE_DIR = 'checkpoints_unreadable'


class CheckpointMismatchError(ValueError):
  """A checkpoint was written for another model than the config describes."""


def _manager(directory: str, max_to_keep: int, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  # Handlers named up front, so that item_metadata can read a step before any restore.
  handlers = {'state': ocp.StandardCheckpointHandler(), 'record': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=handlers)


class Checkpoints:
  """The periodic and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    """create=False only reads: a workdir without checkpoints is an error, and nothing is made."""
    if not create and not any(os.path.isdir(os.path.join(workdir, d))
                              for d in ('checkpoints', 'best')):
      raise FileNotFoundError(f'no checkpoints in {workdir} (neither checkpoints/ nor best/)')
    self.workdir = workdir
    self.periodic = _manager(os.path.join(workdir, 'checkpoints'), keep, create)
    self.best = _manager(os.path.join(workdir, 'best'), 1, create)

  def save(self, state, record: dict, best: bool = False) -> None:
    manager = self.best if best else self.periodic
    step = int(record['step'])
    if step in manager.all_steps():
      return
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_as_dict(state)), record=ocp.args.JsonSave(record)))
    manager.wait_until_finished()

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
        logging.warning('Checkpoint at step %d in %s cannot be restored (%s: %s); falling back to '
                        'an older one.', step, self.periodic.directory, type(e).__name__, e)
        unreadable.append(step)
    if unreadable:
      self._set_aside(unreadable)
    return result

  def _set_aside(self, steps) -> None:
    """Moves unreadable periodic steps out of the manager's folder (process 0), then reloads."""
    if jax.process_index() == 0:
      target_root = os.path.join(self.workdir, UNREADABLE_DIR)
      os.makedirs(target_root, exist_ok=True)
      for step in steps:
        target, n = os.path.join(target_root, str(step)), 1
        while os.path.exists(target):
          target, n = os.path.join(target_root, f'{step}.{n}'), n + 1
        shutil.move(os.path.join(str(self.periodic.directory), str(step)), target)
        logging.warning('Moved the unreadable checkpoint of step %d to %s.', step, target)
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
    """The best checkpoint, or the periodic one at `step`."""
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
    return self._restore(manager, step, abstract_state)

  def _restore(self, manager, step, abstract_state):
    self._check_fits(manager, step, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_as_dict(abstract_state)), record=ocp.args.JsonRestore()))
    state = restored['state']
    if not isinstance(abstract_state, dict):
      state = type(abstract_state)(**state)
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
