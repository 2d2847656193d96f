"""Training and evaluation of AsymFusion segmentation from an ml_collections config.

`train_and_evaluate(config, workdir)` is the main job; `evaluate_checkpoint` is `--mode=eval`.
The step functions are pure and run under jax.jit with the batch sharded over a ('data',) mesh.
A run resumes from its workdir: the batch of step t and the dropout key of step t are functions
of (seed, t) alone, so a resumed run ends with the same parameters as an uninterrupted one.
"""

import functools
import json
import math
import os
import shutil
import signal
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from asymfusion_jax import (checkpointing, config_io, evaluation, initialization, losses, optim,
                            sharding, validation, workdir_lock)
from asymfusion_jax.data import pipeline
from asymfusion_jax.logger import MetricLogger, Progress, print_run_summary
from asymfusion_jax.models import build_model


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Raw uint32 key data, so orbax stores it as a plain array.

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


def init_variables(model, config, rng) -> dict:
  # Parameter shapes do not depend on the image size; a small one keeps init cheap.
  x = jnp.zeros((len(config.modalities), 1, 64, 64, 3), jnp.float32)
  return dict(model.init({'params': rng}, x, train=False))


def create_train_state(model, tx, config, mesh) -> TrainState:
  """A replicated TrainState initialised from config.seed, under jit so nothing runs eagerly."""
  def make():
    rng = jax.random.PRNGKey(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    variables = init_variables(model, config, init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=tx.init(variables['params']), rng=train_rng)
  return jax.jit(make, out_shardings=sharding.replicated(mesh))()


def abstract_train_state(config, mesh) -> TrainState:
  """ShapeDtypeStructs (replicated) of the TrainState training saves, allocating nothing.

  The optimiser state's structure does not depend on the schedule's step counts, so one step
  per epoch stands in for the dataset size: restoring for evaluation or export needs no dataset.
  """
  model = build_model(config)
  tx = optim.make_optimizer(config, 1)
  shapes = jax.eval_shape(lambda: create_train_state(model, tx, config, mesh))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.replicated(mesh)), shapes)


def train_step(state: TrainState, batch: dict, *, model, tx, ignore_label: int):
  """One SGD step on the sum of the M + 1 outputs' cross-entropies (docs/method.md section 6)."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    if model.frozen_bn:
      logits = model.apply(variables, batch['image'], train=True, rngs={'dropout': dropout_rng})
      new_stats = state.batch_stats
    else:
      logits, updates = model.apply(variables, batch['image'], train=True,
                                    rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      new_stats = updates['batch_stats']
    return losses.segmentation_loss(logits, batch['label'], ignore_label), new_stats

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                            opt_state=opt_state)
  return new_state, {'loss': loss}


def jit_train_step(model, tx, config, mesh, state, example_batch):
  step_fn = functools.partial(train_step, model=model, tx=tx,
                              ignore_label=config.data.ignore_label)
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, sharding.batch_shardings(mesh, example_batch)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


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

  def agreed(self, done: int) -> bool:
    """Whether to stop after step `done`, the same answer on every process.

    A signal may reach one host of a cluster before (or without) the others; if that host
    stopped alone, the others would wait for it in the next step's collectives. So processes
    compare their flags every _TERMINATION_SYNC_STEPS steps (one small collective), and all stop
    at the same step. A single process checks its own flag after every step.
    """
    if jax.process_count() == 1:
      return self.requested
    if done % _TERMINATION_SYNC_STEPS:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


class StoppedBySignal(Exception):
  """Training stopped on SIGTERM before its last step, after saving a checkpoint of `step`."""

  def __init__(self, step: int, total: int):
    super().__init__(f'stopped by SIGTERM after step {step} of {total}; checkpoint saved')
    self.step = step


class _LossWatch:
  """Collects per-step losses on device and checks them for NaN/Inf in one transfer.

  kept: says which checkpoint a run stopped here can resume from (Checkpoints.kept_note).
  """

  def __init__(self, kept):
    self._kept = kept
    self._pending = []
    self._checked = []

  def add(self, step: int, loss: jax.Array) -> None:
    self._pending.append((step, loss))

  def check(self) -> None:
    """Raises FloatingPointError naming the steps whose loss is not finite."""
    values = jax.device_get([loss for _, loss in self._pending])
    checked = [(step, float(v)) for (step, _), v in zip(self._pending, values)]
    self._pending = []
    bad = [(s, v) for s, v in checked if not math.isfinite(v)]
    if bad:
      raise FloatingPointError(
          f'training loss is {bad[0][1]} at step {bad[0][0]} (non-finite at steps '
          f'{[s for s, _ in bad]}); stopping. {self._kept()}')
    self._checked += checked

  def drain(self) -> list[float]:
    """The checked losses since the last drain."""
    self.check()
    out, self._checked = [v for _, v in self._checked], []
    return out


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
      changed = config_io.differing_keys(config_io.load_workdir_config(workdir), config)
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


def steps_per_epoch(config) -> int:
  steps = pipeline.steps_per_epoch(config)
  if steps < 1:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the '
                     f'{pipeline.num_examples(config, "train")} training examples')
  return steps


def prepare_data(config) -> int:
  """Prepares the data (process 0) and returns the train steps per epoch."""
  if jax.process_index() == 0:
    pipeline.prepare(config)
  sync('data prepared')
  return steps_per_epoch(config)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains with periodic evaluation; returns the last evaluation's results.

  Everything that can be checked is checked before the workdir exists; what only the prepared
  data can tell (labels outside the config's classes, fewer examples than a batch) fails before
  training starts, and a workdir this call created is then removed again. So a config error
  leaves no workdir behind.

  Raises:
    StoppedBySignal: SIGTERM stopped training before its last step (a checkpoint is saved).
    workdir_lock.WorkdirLockedError: another run holds the workdir.
  """
  config = resolve_data_paths(config, workdir)
  validation.check_training(config)  # Before the workdir exists: a bad config leaves nothing.
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  data_ready = False
  try:
    # The lock before anything is written: preparing synthetic data writes into the workdir.
    with workdir_lock.WorkdirLock(workdir, 'training'):
      per_epoch = prepare_data(config)
      data_ready = True
      return _train_and_evaluate(config, workdir, per_epoch)
  except Exception:
    if created and not data_ready and jax.process_index() == 0:
      shutil.rmtree(workdir, ignore_errors=True)  # After the lock is released.
    raise


def _train_and_evaluate(config, workdir: str, per_epoch: int) -> dict:
  """train_and_evaluate with the workdir locked and the data prepared."""
  mesh = sharding.make_mesh()
  total = optim.total_steps(config, per_epoch)
  eval_every = config.eval_every_epochs * per_epoch
  model = build_model(config)
  tx = optim.make_optimizer(config, per_epoch)
  ckpts = checkpointing.Checkpoints(workdir, config.keep_checkpoints)
  logging.info('initialising the model (its initialisation compiles first)...')
  state = create_train_state(model, tx, config, mesh)

  restored, record = ckpts.restore_latest(checkpointing.abstract(state))
  if restored is not None:
    state, best_miou = restored, record['best_miou']
    logging.info('Resumed from the checkpoint of step %d in %s.', record['step'], workdir)
  else:
    state, best_miou = initialization.from_pretrained(state, config), -1.0
  # Only now: a config whose model does not fit the workdir's checkpoints has changed nothing.
  write_config(config, workdir, int(state.step))

  start = int(state.step)
  logger = MetricLogger(workdir, resume_step=start)
  batches = pipeline.train_batches(config, start_step=start, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  rows = validation.train_batch_rows(config)  # > batch / processes: padded (frozen BN only).
  if rows * jax.process_count() != config.batch_size:
    logging.info('Training on %d rows per step: config.batch_size=%d filled up to a multiple of '
                 'the %d devices with unlabelled rows (with frozen BatchNorm they change '
                 'nothing but the dropout masks drawn).', rows * jax.process_count(), config.batch_size, jax.device_count())
  evaluator = evaluation.Evaluator(model, config, mesh)
  losses_seen = _LossWatch(ckpts.kept_note)
  progress = Progress(total, eval_every)
  lr = optim.learning_rate_schedules(config, per_epoch)
  step_fn = None
  results = {}

  def save(step, also_best=False):
    """The periodic checkpoint of `step`, and the best one too if also_best."""
    # The losses so far were finite, but the update after the last of them may not be.
    if not bool(_all_finite((state.params, state.batch_stats, state.opt_state))):
      raise FloatingPointError(f'the parameters after step {step} are not finite; stopping. '
                               f'{ckpts.kept_note()}')
    record = {'step': step, 'data_position': step, 'best_miou': best_miou}
    if also_best:
      ckpts.save(state, record, best=True)
    ckpts.save(state, record)

  if start >= total:
    logging.info('The run in %s is complete (step %d of %d); evaluating its last state.',
                 workdir, start, total)
    results = evaluator.run(state.variables(), workdir, step=start)
  stopped = None
  with _Termination() as term:
    for step in range(start, total):
      batch = sharding.global_batch(
          mesh, sharding.pad_rows(next(batches), rows, config.data.ignore_label))
      if step_fn is None:
        step_fn = jit_train_step(model, tx, config, mesh, state, batch)
        progress.compiling()  # The first call below compiles it.
      state, metrics = step_fn(state, batch)
      done = step + 1  # Steps are counted from 1, as in metrics.jsonl and checkpoints.
      losses_seen.add(done, metrics['loss'])
      stop = term.agreed(done)
      if step == start:
        jax.block_until_ready(state)
        progress.start(done)
      if done % config.log_every_steps == 0 or done == total:
        logged = losses_seen.drain()
        rate = progress.report(done, logged)
        logger.write(done, {
            'train/loss': float(np.mean(logged)),
            'train/lr_encoder': float(lr['encoder'](step)),
            'train/lr_decoder': float(lr['decoder'](step)),
            'steps_per_second': rate})
      if done % eval_every == 0 or done == total:
        progress.pause(done)
        losses_seen.check()
        results = evaluator.run(state.variables(), workdir, step=done)
        logger.write(done, evaluation.flatten(results))
        improved = results['ensemble']['miou'] > best_miou
        best_miou = max(best_miou, results['ensemble']['miou'])
        save(done, also_best=improved)
        progress.start(done)  # Throughput excludes evaluation and checkpointing.
      elif done % config.checkpoint_every_steps == 0 or stop:
        losses_seen.check()
        save(done)
      if stop:
        logging.warning('Stopped by SIGTERM after step %d; checkpoint saved.', done)
        stopped = done if done < total else None
        break
  ckpts.close()
  logger.close()
  print_run_summary(workdir)
  if stopped is not None:
    raise StoppedBySignal(stopped, total)
  return results


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
  validation.check_config(config)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'no checkpoints in {workdir}: the directory does not exist')
  with workdir_lock.WorkdirLock(workdir, 'evaluation'):
    return _evaluate_checkpoint(config, workdir, step)


def _evaluate_checkpoint(config, workdir: str, step: int | None) -> dict:
  """evaluate_checkpoint with the workdir locked."""
  mesh = sharding.make_mesh()
  ckpts = checkpointing.Checkpoints(workdir, config.keep_checkpoints, create=False)
  try:
    state, record = ckpts.restore(abstract_train_state(config, mesh), step)
  finally:
    ckpts.close()
  logging.info('Evaluating the checkpoint of step %d.', record['step'])
  if jax.process_index() == 0:
    pipeline.prepare(config)
  sync('data prepared')
  out_dir = os.path.join(workdir, 'eval', f'step_{record["step"]}')
  results = evaluation.Evaluator(build_model(config), config, mesh).run(
      state.variables(), out_dir, step=record['step'])
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
