"""The batch loops of every input pipeline (NYUDv2, Cityscapes, Taskonomy) and their schedule.

A dataset's pipeline says how one row is filled; these loops decide which example goes in
which row of which batch, and run the filling on workers (`workers.run_ahead`: threads or, with
config.data.worker_kind='process', processes) ahead of the consumer.

Train batches are a pure function of (config.seed, global step), so a run resumes exactly by
asking for the batches from its saved step on:
- Epoch e visits the examples in the order np.random.default_rng([seed, 0, e]).permutation(N),
  steps_per_epoch = N // batch_size steps of `batch_size` (global) examples each, dropping the
  remaining N % batch_size examples of that epoch (as the reference's drop_last does).
- The example at position p of epoch e is augmented with np.random.default_rng([seed, 1, e, p]).
- Process i of n takes rows [i * B / n, (i + 1) * B / n) of each global batch.

An evaluation pass puts val examples [k * B, (k + 1) * B) in global batch k (B the eval batch
size) and fills the last one up with padding rows (mask False), so every batch has one shape
and jit compiles once.
"""

import itertools
import math
from typing import Callable

import ml_collections
import numpy as np

from asymfusion_jax.data import workers

# Batches prepared ahead of the one being consumed: enough to hide the input work behind a train
# step, few enough that memory stays small. It changes timing only, never the batches.
PREFETCH = 2

# (local batch size) -> a dict of empty arrays, the batch that the rows fill in place.
EmptyBatch = Callable[[int], dict]


def empty_segmentation_batch(num_modalities: int, crop_size: int) -> EmptyBatch:
  """The empty train batch of the segmentation pipelines: {'image': float32 (M, B, crop, crop,
  3), 'label': int32 (B, crop, crop)}."""
  return lambda local: {
      'image': np.empty((num_modalities, local, crop_size, crop_size, 3), np.float32),
      'label': np.empty((local, crop_size, crop_size), np.int32)}


def local_batch_size(global_batch: int, process_index: int, process_count: int,
                     what: str) -> int:
  """This process's share of a global batch."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} is not divisible by the {process_count} processes.')
  return global_batch // process_count


def train_schedule(seed: int, step: int, batch_size: int,
                   num_examples: int) -> list[tuple[int, tuple[int, ...]]]:
  """The global batch at `step`: (example index, augmentation seed) per row (see module doc)."""
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(f'The train split has {num_examples} examples, fewer than one batch of '
                     f'{batch_size}.')
  epoch, within = divmod(step, per_epoch)
  order = np.random.default_rng([seed, 0, epoch]).permutation(num_examples)
  positions = range(within * batch_size, (within + 1) * batch_size)
  return [(int(order[p]), (seed, 1, epoch, p)) for p in positions]


def check_train_request(config: ml_collections.ConfigDict, start_step: int, process_index: int,
                        process_count: int) -> int:
  """This process's share of config.batch_size; raises if it has none or start_step < 0.

  train_batches checks this itself; a pipeline with work to do first (loading a split) calls it
  before, so that a bad request fails at once.
  """
  local = local_batch_size(config.batch_size, process_index, process_count, 'batch_size')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  return local


def train_batches(config: ml_collections.ConfigDict, num_examples: int, empty: EmptyBatch,
                  fill: Callable[[dict, int, int, np.random.Generator], None],
                  start_step: int = 0, process_index: int = 0, process_count: int = 1):
  """This process's train batches for steps start_step, start_step + 1, ... forever.

  Each batch is empty(local batch size), whose row j fill(batch, j, example index, rng) fills
  (all of it) from the example the schedule puts there, drawing its augmentation from rng.
  """
  local = check_train_request(config, start_step, process_index, process_count)
  seed, global_batch = int(config.seed), int(config.batch_size)
  train_schedule(seed, 0, global_batch, num_examples)  # Fails now, not in the first next().

  def fill_row(batch, row, index, key):
    fill(batch, row, index, np.random.default_rng(key))

  def plan(step):
    rows = train_schedule(seed, step, global_batch, num_examples)
    return empty(local), [(j, *row) for j, row in enumerate(rows[process_index * local:][:local])]

  return workers.run_ahead(map(plan, itertools.count(start_step)), fill_row, config, PREFETCH,
                           ('train_batches', (start_step, process_index, process_count)),
                           whole_rows=True)


def eval_batches(config: ml_collections.ConfigDict, num_examples: int, empty: EmptyBatch,
                 fill: Callable[[dict, int, int], None], process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every example once.

  Each batch is empty(local batch size) with a 'mask' added (True for rows holding an example);
  fill(batch, row, index) fills row `row` from val example `index`, and padding rows keep what
  empty() put there. batch_size is the global eval batch size (default config.eval_batch_size).
  """
  global_batch = int(config.eval_batch_size if batch_size is None else batch_size)
  local = local_batch_size(global_batch, process_index, process_count, 'eval batch size')

  def plan(k):
    batch = empty(local)
    batch['mask'] = np.zeros((local,), bool)
    rows = []
    for row in range(local):
      index = k * global_batch + process_index * local + row
      if index < num_examples:
        batch['mask'][row] = True
        rows.append((row, index))
    return batch, rows

  return workers.run_ahead(map(plan, range(math.ceil(num_examples / global_batch))), fill,
                           config, PREFETCH,
                           ('eval_batches', (process_index, process_count, batch_size)))
