"""Training checkpoints: orbax CheckpointManagers for periodic saves and for the best model.

A checkpoint holds the train state (params, batch_stats, opt_state, step, rng) and a JSON
record (step, data position, best ensemble mIoU so far). `DIR/checkpoints` keeps the latest few
periodic saves; `DIR/best` keeps the one with the highest ensemble mIoU. Restoring the latest
checkpoint skips, with a warning, any that cannot be read and falls back to an older one.
"""

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp


def _manager(directory: str, max_to_keep: int, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpoints:
  """The periodic and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    """create=False only reads: a workdir without checkpoints is an error, and nothing is made."""
    if not create and not any(os.path.isdir(os.path.join(workdir, d))
                              for d in ('checkpoints', 'best')):
      raise FileNotFoundError(f'no checkpoints in {workdir} (neither checkpoints/ nor best/)')
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
    """The newest readable periodic checkpoint as (state, record), or (None, None) if none."""
    for step in sorted(self.periodic.all_steps(), reverse=True):
      try:
        return self._restore(self.periodic, step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  # Any unreadable checkpoint is skipped.
        logging.warning('Checkpoint at step %d in %s cannot be restored (%s: %s); falling back to '
                        'an older one.', step, self.periodic.directory, type(e).__name__, e)
    return None, None

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
