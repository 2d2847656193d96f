"""How long a checkpoint save holds up training: the step-time stall around periodic saves.

  python experiments/checkpoint_stall.py --config=configs/demo.py [--config.batch_size=2 ...] \\
      [--steps=40 --save_every=10 --best_every=2 --warmup=3] [--workdir=/tmp/stall]

Runs the library's train step (experiments/benchmark.build_step: jitted, donated, sharded) on a
synthetic batch and saves the train state through checkpointing.Checkpoints every --save_every
steps, as training does (every --best_every-th save is also the best checkpoint, as after an
evaluation that improved). Every step ends in block_until_ready and is timed with the save call
that follows it. Reported, per save:

  blocking_ms: what the save call itself took on the training thread, beyond a plain step;
  overhead_ms: the whole loop's time (with the final wait for pending saves) beyond as many
    plain steps, per save: the blocking part plus whatever a save in the background takes from
    the steps that run meanwhile (on a CPU backend it competes with them for the cores);
  final_wait_ms: waiting for the last pending save at the end.

The last line is one JSON object. The state's size (`state_mb`) and the checkpoint's size on disk
(`checkpoint_mb`, the periodic one) come with it. Works against checkpointing.Checkpoints before
asynchronous saves (save(..., best=True) wrote a second, full best checkpoint) and after
(save(..., also_best=True) links it), so one command measures both versions of the library.
"""

import inspect
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app, flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import checkpointing, config_lib  # pylint: disable=g-import-not-at-top
from experiments import benchmark  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS


def _save(ckpts, state, step: int, best: bool) -> None:
  record = {'step': step, 'data_position': step, 'best_metric': None, 'best_value': None}
  if 'also_best' in inspect.signature(ckpts.save).parameters:
    ckpts.save(state, record, also_best=best)
  else:  # Before asynchronous saves: the best checkpoint was its own full save, first.
    if best:
      ckpts.save(state, record, best=True)
    ckpts.save(state, record)


def _megabytes(directory: str) -> float:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(directory) for name in names) / 1e6


def measure(config, workdir: str, steps: int, save_every: int, best_every: int,
            warmup: int) -> dict:
  """Runs warmup + steps train steps with saves; returns the figures of the module docstring."""
  step_fn, (state, batch) = benchmark.build_step(config, 'train')
  for _ in range(warmup):
    state = jax.block_until_ready(step_fn(state, batch)[0])
  ckpts = checkpointing.Checkpoints(workdir, keep=2)
  plain, with_save, saves = [], [], 0
  loop_start = time.perf_counter()
  for i in range(1, steps + 1):
    start = time.perf_counter()
    state = jax.block_until_ready(step_fn(state, batch)[0])
    if i % save_every == 0:
      saves += 1
      _save(ckpts, state, i, best=saves % best_every == 0)
      with_save.append(time.perf_counter() - start)
    else:
      plain.append(time.perf_counter() - start)
  wait_start = time.perf_counter()
  ckpts.close()
  end = time.perf_counter()
  step_s = statistics.median(plain)
  state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  latest = os.path.join(workdir, 'checkpoints', str(saves * save_every))
  return {
      'step_ms': step_s * 1e3,
      'blocking_ms': (statistics.mean(with_save) - step_s) * 1e3,
      'overhead_ms': ((end - loop_start) - steps * step_s) / saves * 1e3,
      'final_wait_ms': (end - wait_start) * 1e3,
      'saves': saves,
      'best_saves': saves // best_every,
      'steps': steps,
      'state_mb': state_bytes / 1e6,
      'checkpoint_mb': _megabytes(latest),
      'async': 'also_best' in inspect.signature(ckpts.save).parameters,
      'platform': jax.local_devices()[0].platform,
      'device_kind': jax.local_devices()[0].device_kind,
  }


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='checkpoint-stall-')
  if os.path.exists(os.path.join(workdir, 'checkpoints')):
    raise app.UsageError(f'{workdir} has checkpoints already; give an empty --workdir')
  try:
    result = measure(FLAGS.config, workdir, FLAGS.steps, FLAGS.save_every, FLAGS.best_every,
                     FLAGS.warmup)
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  for key, value in result.items():
    print(f'{key:>16}  {value:.1f}' if isinstance(value, float) else f'{key:>16}  {value}')
  print(json.dumps(result))


if __name__ == '__main__':
  config_lib.DEFINE_config_file('config', None, 'A config file (configs/*.py).', lock_config=False)
  flags.DEFINE_string('workdir', None, 'An empty directory for the checkpoints (default: a '
                      'temporary one, removed afterwards).')
  flags.DEFINE_integer('steps', 40, 'Timed train steps.')
  flags.DEFINE_integer('save_every', 10, 'Steps between saves.')
  flags.DEFINE_integer('best_every', 2, 'Every N-th save is also the best checkpoint.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps first (the first compiles).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
