"""The training program: trains and evaluates any task (asymfusion_jax.tasks) from a config.

`train_and_evaluate(config, workdir)` is the main job; `evaluate_checkpoint` is `--mode=eval`.
The task (config.task) supplies its state, data, train step and evaluation; everything else
here is shared: the mesh, the loop, verified checkpoints and resume, the workdir lock, SIGTERM,
NaN checks, metrics.jsonl/TensorBoard and the progress lines.
The step functions are pure and run under jax.jit with the batch sharded over a ('data',) mesh.
A run resumes from its workdir: the batch of step t and the random keys of step t are functions
of (seed, t) alone, so a resumed run ends with the same parameters as an uninterrupted one.
"""

import json
import math
import os
import shutil
import signal

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import (checkpointing, config_io, config_lib, missing, sharding, tasks,
                            workdir_lock)
from asymfusion_jax.logger import MetricLogger, Progress, eval_scalars, print_run_summary
from asymfusion_jax.tasks import TrainState


def abstract_train_state(config, mesh) -> TrainState:
  """ShapeDtypeStructs (replicated) of the TrainState training saves, allocating nothing.

  The optimiser state's structure does not depend on the schedule's step counts, so one step
  per epoch stands in for the dataset size: restoring for evaluation or export needs no dataset.
  """
  task = tasks.get(config)
  shapes = jax.eval_shape(lambda: task.create_train_state(config, mesh, 1))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.replicated(mesh)), shapes)


# How often (in steps) the processes of a multi-process run agree on a SIGTERM.
_TERMINATION_SYNC_STEPS = 10


class _Termination:
  """Turns SIGTERM into a flag; agreed() tells the training loop when to stop on it."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint, then exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self, done: int, now: bool = False) -> bool:
    """Whether to stop after step `done`, the same answer on every process.

    A signal may reach one host of a cluster before (or without) the others; if that host
    stopped alone, the others would wait for it in the next step's collectives. So processes
    compare their flags every _TERMINATION_SYNC_STEPS steps (one small collective), and all stop
    at the same step; now=True compares them at this step whatever its number (every process
    must then ask too). A single process checks its own flag after every step.
    """
    if jax.process_count() == 1:
      return self.requested
    if done % _TERMINATION_SYNC_STEPS and not now:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


class StoppedBySignal(Exception):
  """Training stopped on SIGTERM before its last step, after saving a checkpoint of `step`.

  saved=False: it stopped before its first step (SIGTERM while the step compiled), with
  nothing new to save: the workdir's latest checkpoint (if any) is `step`.
  """

  def __init__(self, step: int, total: int, saved: bool = True):
    super().__init__(f'stopped by SIGTERM after step {step} of {total}; checkpoint saved' if saved
                     else f'stopped by SIGTERM before step {step + 1} of {total}, while the '
                     'train step compiled; nothing new to save')
    self.step = step


# The checkpoint record's key for the train metrics of the steps since the last logged one.
_UNLOGGED_KEY = 'unlogged_train_metrics'

# What to do after a non-finite loss or update, the end of its error message.
_NAN_ADVICE = 'To go on, lower the learning rate (or look for bad data) and run again.'


class _LossWatch:
  """Collects the train step's metrics on device and checks them for NaN/Inf in one transfer.

  kept: says which checkpoint a run stopped here can resume from (Checkpoints.kept_note).
  """

  def __init__(self, kept):
    self._kept = kept
    self._pending = []
    self._checked = []

  def add(self, step: int, metrics) -> None:
    """metrics: the step's {name: scalar} (or one scalar, named 'loss')."""
    self._pending.append((step, metrics if isinstance(metrics, dict) else {'loss': metrics}))

  def check(self) -> None:
    """Raises FloatingPointError naming the metric and the steps where it is not finite."""
    values = jax.device_get([metrics for _, metrics in self._pending])
    checked = [(step, {k: float(v) for k, v in m.items()})
               for (step, _), m in zip(self._pending, values)]
    self._pending = []
    bad = [(step, name, v) for step, m in checked for name, v in m.items()
           if not math.isfinite(v)]
    if bad:
      step, name, value = bad[0]
      raise FloatingPointError(
          f'training {name} is {value} at step {step} (non-finite at steps '
          f'{sorted({s for s, _, _ in bad})}); stopping. {self._kept()} {_NAN_ADVICE}')
    self._checked += checked

  def drain(self) -> dict[str, list[float]]:
    """The checked values of every metric since the last drain, {name: [value per step]}."""
    self.check()
    out = {}
    for _, metrics in self._checked:
      for name, value in metrics.items():
        out.setdefault(name, []).append(value)
    self._checked = []
    return out

  def undrained(self) -> list:
    """The checked values not logged yet, [[step, {name: value}], ...], for a checkpoint's
    record: a run resumed from it logs the same means as one that never stopped."""
    return [[step, dict(metrics)] for step, metrics in self._checked]

  def resume(self, undrained: list, start: int) -> None:
    """Takes back a checkpoint's undrained() values, of the steps up to `start`."""
    self._checked = [(int(step), {k: float(v) for k, v in metrics.items()})
                     for step, metrics in undrained if int(step) <= start]


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def write_config(config, workdir: str, step: int = 0) -> None:
  """Records the config of a run that starts (or resumes) at `step`.

  WORKDIR/config.json stays the config of the workdir's first run. A run resumed with another
  config (a longer schedule, a changed interval) keeps it, writes its own beside it as
  config.step_<step>.json and logs the differing keys, so the record tells which steps ran under
  which config.
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, config_io.CONFIG_FILE)
  if os.path.exists(path):
    try:
      # As written: only the fields it predates count as their defaults.
      written = config_io.read_workdir_config(workdir)
      changed = config_io.differing_keys(written, config, config_lib.paper_defaults(written))
    except ValueError as e:  # Unreadable: keep it as it is, and record this run's beside it.
      changed = [f'(all: {e})']
    if not changed:
      return
    path = os.path.join(workdir, f'config.step_{step}.json')
    logging.warning('This run (from step %d) has another config than %s, in %s; it is recorded '
                    'in %s.', step, config_io.CONFIG_FILE, ', '.join(changed), path)
  with open(path, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def resolve_data_paths(config, workdir: str):
  """A copy of config whose empty synthetic-data paths point into the workdir."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.data.synthetic and not config.data.manual_dir:
      config.data.manual_dir = os.path.join(os.path.abspath(workdir), 'data', 'synthetic')
    if config.data.synthetic and not config.data.tfds_data_dir:
      config.data.tfds_data_dir = os.path.join(os.path.abspath(workdir), 'data', 'tfds')
  return config


def prepare_data(task: tasks.Task, config) -> int:
  """Prepares the data (process 0), checks the config against it, returns steps per epoch."""
  if jax.process_index() == 0:
    task.prepare_data(config)
  sync('data prepared')
  # Again, on every process: what depends on data that was not built before (the train images'
  # size, say) is known now.
  task.check_training(config)
  return task.steps_per_epoch(config)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains with periodic evaluation; returns the last evaluation's results.

  Runs the task of config.task (asymfusion_jax.tasks). Everything that can be checked is
  checked before the workdir exists; what only the prepared data can tell (labels outside the
  config's classes, fewer examples than a batch) fails before training starts, and a workdir
  this call created is then removed again. So a config error leaves no workdir behind.

  Raises:
    StoppedBySignal: SIGTERM stopped training before its last step (a checkpoint is saved).
    workdir_lock.WorkdirLockedError: another run holds the workdir.
  """
  config = resolve_data_paths(config, workdir)
  task = tasks.get(config)
  task.check_training(config)  # Before the workdir exists: a bad config leaves nothing.
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  data_ready = False
  try:
    # The lock before anything is written: preparing synthetic data writes into the workdir.
    with workdir_lock.WorkdirLock(workdir, 'training'):
      per_epoch = prepare_data(task, config)
      data_ready = True
      # Closed on any exit: a pending checkpoint save is finished before the lock goes.
      with checkpointing.Checkpoints(workdir, config.keep_checkpoints) as ckpts:
        return _train_and_evaluate(task, config, workdir, per_epoch, ckpts)
  except Exception:
    if created and not data_ready and jax.process_index() == 0:
      shutil.rmtree(workdir, ignore_errors=True)  # After the lock is released.
    raise


def _best_of(record: dict) -> tuple[str, float] | None:
  """(metric, value) of the best checkpoint so far, from a checkpoint's record."""
  if record.get('best_metric') is not None:
    return record['best_metric'], float(record['best_value'])
  return None


def _score(task: tasks.Task, config, results: dict) -> tuple[str, float]:
  """(name, value) of the metric that picks the best checkpoint, from an evaluation."""
  name, _ = task.best_metric(config)
  branch, metric = name.split('/')
  return name, float(results[branch][metric])


def _improves(task: tasks.Task, config, score: tuple[str, float],
              best: tuple[str, float] | None) -> bool:
  if best is None or best[0] != score[0]:  # The first evaluation, or another criterion now.
    return True
  higher = task.best_metric(config)[1]
  return score[1] > best[1] if higher else score[1] < best[1]


def _train_and_evaluate(task: tasks.Task, config, workdir: str, per_epoch: int,
                        ckpts: checkpointing.Checkpoints) -> dict:
  """train_and_evaluate with the workdir locked, the data prepared and its checkpoints open."""
  mesh = sharding.make_mesh()
  total = task.total_steps(config, per_epoch)
  eval_every = config.eval_every_epochs * per_epoch
  logging.info('initialising the model (its initialisation compiles first)...')
  state = task.create_train_state(config, mesh, per_epoch)

  restored, record = ckpts.restore_latest(checkpointing.abstract(state))
  if restored is not None:
    state, best = restored, _best_of(record)
    logging.info('Resumed from the checkpoint of step %d in %s.', record['step'], workdir)
  else:
    state, best = task.from_pretrained(state, config), None
  # Only now: a config whose model does not fit the workdir's checkpoints has changed nothing.
  write_config(config, workdir, int(state.step))

  start = int(state.step)
  logger = MetricLogger(workdir, resume_step=start)
  batches = sharding.prefetch_to_device(missing.train_batches(task, config, start), mesh,
                                        config.data.prefetch_to_device)
  evaluator = task.evaluator(config, mesh)
  metrics_seen = _LossWatch(ckpts.kept_note)
  if restored is not None:  # The losses of the steps since the last logged one.
    metrics_seen.resume(record.get(_UNLOGGED_KEY, []), start)
  progress = Progress(total, eval_every)
  step_fn = None
  results = {}

  def save(step, also_best=False):
    """The periodic checkpoint of `step`, and the best one too if also_best."""
    # The losses so far were finite, but the update after the last of them may not be.
    if not bool(_all_finite((state.params, state.batch_stats, state.opt_state))):
      raise FloatingPointError(f'the parameters after step {step} are not finite; stopping. '
                               f'{ckpts.kept_note()} {_NAN_ADVICE}')
    record = {'step': step, 'data_position': step,
              'best_metric': best[0] if best else None, 'best_value': best[1] if best else None,
              _UNLOGGED_KEY: metrics_seen.undrained()}
    ckpts.save(state, record, also_best=also_best)

  if start >= total:
    logging.info('The run in %s is complete (step %d of %d); evaluating its last state.',
                 workdir, start, total)
    results = evaluator.run(state.variables(), workdir, step=start)
  stopped, saved = None, True
  with _Termination() as term:
    for step in range(start, total):
      batch = next(batches)
      if step_fn is None:
        progress.compiling()
        step_fn = _compiled(task.jit_train_step(config, mesh, per_epoch, state, batch), state,
                            batch)
        if term.agreed(step, now=True):  # SIGTERM while it compiled: no step yet.
          logging.warning('Stopped by SIGTERM before step %d; nothing new to save.', step + 1)
          stopped, saved = step, False
          break
      state, metrics = step_fn(state, batch)
      done = step + 1  # Steps are counted from 1, as in metrics.jsonl and checkpoints.
      metrics_seen.add(done, metrics)
      stop = term.agreed(done)
      if step == start:
        jax.block_until_ready(state)
        progress.start(done)
      if done % config.log_every_steps == 0 or done == total:
        logged = metrics_seen.drain()
        rate = progress.report(done, logged[task.progress_metric],
                               name=task.progress_metric)
        logger.write(done, {**{f'train/{k}': float(np.mean(v)) for k, v in logged.items()},
                            **task.extra_scalars(config, per_epoch, step),
                            'steps_per_second': rate})
      if done % eval_every == 0 or done == total:
        progress.pause(done)
        metrics_seen.check()
        results = evaluator.run(state.variables(), workdir, step=done)
        logger.write(done, eval_scalars(results))
        score = _score(task, config, results)
        improved = _improves(task, config, score, best)
        if improved:
          best = score
        save(done, also_best=improved)
        progress.start(done)  # Throughput excludes evaluation and checkpointing.
      elif done % config.checkpoint_every_steps == 0 or stop:
        metrics_seen.check()
        save(done)
      if stop:
        logging.warning('Stopped by SIGTERM after step %d; checkpoint saved.', done)
        stopped = done if done < total else None
        break
  batches.close()
  ckpts.close()
  logger.close()
  print_run_summary(workdir, task.best_metric(config))
  if stopped is not None:
    raise StoppedBySignal(stopped, total, saved)
  return results


def _compiled(step_fn, state, batch):
  """The jitted step compiled ahead of its first call, so that a SIGTERM received while it
  compiled is seen before the first step (which may take long too); a step function that is
  not a jax.jit (a test's wrapper) as it is."""
  if not hasattr(step_fn, 'lower'):
    return step_fn
  return step_fn.lower(state, batch).compile()


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """--mode=eval: evaluates the best checkpoint, or the periodic one of `step`.

  It leaves the training record alone: the results go to WORKDIR/eval/step_N/results.json and
  the predictions to WORKDIR/eval/step_N/predictions/, never to metrics.jsonl or predictions/.
  The checkpoint is read before the data is touched, so a mistyped workdir fails at once,
  without generating or building a dataset.

  Raises:
    FileNotFoundError: no such workdir or checkpoint.
    checkpointing.UnreadableCheckpointError: the checkpoint is corrupt or fails its checksums.
    workdir_lock.WorkdirLockedError: another run holds the workdir.
  """
  config = resolve_data_paths(config, workdir)
  tasks.get(config).check_config(config)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'no checkpoints in {workdir}: the directory does not exist; '
                            'check --workdir')
  with workdir_lock.WorkdirLock(workdir, 'evaluation'):
    return _evaluate_checkpoint(config, workdir, step)


def _evaluate_checkpoint(config, workdir: str, step: int | None) -> dict:
  """evaluate_checkpoint with the workdir locked."""
  task = tasks.get(config)
  mesh = sharding.make_mesh()
  ckpts = checkpointing.Checkpoints(workdir, config.keep_checkpoints, create=False)
  try:
    variables, record = ckpts.restore_variables(abstract_train_state(config, mesh), step)
  finally:
    ckpts.close()
  logging.info('Evaluating the checkpoint of step %d.', record['step'])
  if jax.process_index() == 0:
    task.prepare_data(config)
  sync('data prepared')
  out_dir = os.path.join(workdir, 'eval', f'step_{record["step"]}')
  results = task.evaluator(config, mesh).run(variables, out_dir, step=record['step'])
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  if missing.subsets(config):
    missing.evaluate(task, config, mesh, state.variables(), results, out_dir, record['step'])
  return results


def sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
