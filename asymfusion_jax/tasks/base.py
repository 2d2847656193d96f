"""What a task gives the training program: its state, data, train step and evaluation.

train.py owns everything the tasks share (the mesh, the loop, checkpoints with verified
resume, the workdir lock, SIGTERM, NaN checks, metrics and progress); a task owns what is its
own. A task is a class with the methods of `Task` below; `asymfusion_jax.tasks.get(config)`
picks it from config.task.
"""

from typing import Any, Iterator

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds; the same class for every task.

  params and opt_state are whatever tree the task trains (segmentation: the model's params and
  one optax state; translation: {'generator': ..., 'discriminator': ...} of each).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Raw uint32 key data, so orbax stores it as a plain array.

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


class Task:
  """The interface train.py runs. Every method gets the run's (resolved) config."""

  # Values of the training metrics (train step outputs) that the progress line shows.
  progress_metric = 'loss'

  def check_config(self, config) -> None:
    """Raises validation.ConfigError naming the first invalid key; needs no data or devices."""
    raise NotImplementedError

  def check_training(self, config) -> None:
    """check_config, plus what training needs of the devices and the planned dataset."""
    raise NotImplementedError

  def prepare_data(self, config) -> None:
    """Builds the dataset if needed (process 0 only; the others wait)."""
    raise NotImplementedError

  def steps_per_epoch(self, config) -> int:
    raise NotImplementedError

  def total_steps(self, config, steps_per_epoch: int) -> int:
    raise NotImplementedError

  def create_train_state(self, config, mesh, steps_per_epoch: int) -> TrainState:
    """The initial state, replicated over the mesh."""
    raise NotImplementedError

  def from_pretrained(self, state: TrainState, config) -> TrainState:
    """`state` with the config's pretrained weights (config.init), for a run without a
    checkpoint."""
    raise NotImplementedError

  def train_batches(self, config, start_step: int) -> Iterator[dict]:
    """This process's batches of steps start_step, start_step + 1, ..., as the mesh runs them."""
    raise NotImplementedError

  def jit_train_step(self, config, mesh, steps_per_epoch: int, state: TrainState, batch: dict):
    """(state, global batch) -> (state, {name: scalar}), jitted with the mesh's shardings."""
    raise NotImplementedError

  def extra_scalars(self, config, steps_per_epoch: int, step: int) -> dict[str, float]:
    """Scalars logged beside the train metrics at 0-based `step` (learning rates, say)."""
    del config, steps_per_epoch, step
    return {}

  def evaluator(self, config, mesh):
    """An object whose run(variables, out_dir, step) evaluates the whole validation set and
    returns {branch: {metric: value}}."""
    raise NotImplementedError

  def best_metric(self, config) -> tuple[str, bool]:
    """('<branch>/<metric>' of the evaluation results, higher is better): what picks the best
    checkpoint."""
    raise NotImplementedError
