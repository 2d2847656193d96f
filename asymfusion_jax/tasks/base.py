"""What a task gives the training program: its state, data, train step and evaluation.

train.py owns everything the tasks share (the mesh, the loop, checkpoints with verified
resume, the workdir lock, SIGTERM, NaN checks, metrics and progress); a task owns what is its
own. A task is a class with the methods of `Task` below; `asymfusion_jax.tasks.get(config)`
picks it from config.task.
"""

import abc
from typing import Any, Iterator

import flax
import jax
import numpy as np

from asymfusion_jax.data import predict_io

from asymfusion_jax import data


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


class Task(abc.ABC):
  """The interface train.py runs. Every method gets the run's (resolved) config."""

  # Values of the training metrics (train step outputs) that the progress line shows.
  progress_metric = 'loss'
  # The batch key of the (M, B, H, W, C) network inputs (what missing modalities replace).
  input_key = 'image'

  @abc.abstractmethod
  def check_config(self, config) -> None:
    """Raises validation.ConfigError naming the first invalid key; needs no data or devices."""

  @abc.abstractmethod
  def check_training(self, config) -> None:
    """check_config, plus what training needs of the devices and the planned dataset."""

  @abc.abstractmethod
  def prepare_data(self, config) -> None:
    """Builds the dataset if needed (process 0 only; the others wait)."""

  @abc.abstractmethod
  def steps_per_epoch(self, config) -> int:
    """Train steps in one epoch of the prepared dataset (needs prepare_data first)."""

  @abc.abstractmethod
  def total_steps(self, config, steps_per_epoch: int) -> int:
    """Train steps of the whole run (config.max_steps > 0 cuts it short)."""

  @abc.abstractmethod
  def create_train_state(self, config, mesh, steps_per_epoch: int) -> TrainState:
    """The initial state, replicated over the mesh."""

  @abc.abstractmethod
  def from_pretrained(self, state: TrainState, config) -> TrainState:
    """`state` with the config's pretrained weights (config.init), for a run without a
    checkpoint."""

  @abc.abstractmethod
  def train_batches(self, config, start_step: int) -> Iterator[dict]:
    """This process's batches of steps start_step, start_step + 1, ..., as the mesh runs them."""

  @abc.abstractmethod
  def jit_train_step(self, config, mesh, steps_per_epoch: int, state: TrainState, batch: dict):
    """(state, global batch) -> (state, {name: scalar}), jitted with the mesh's shardings."""

  def extra_scalars(self, config, steps_per_epoch: int, step: int) -> dict[str, float]:
    """Scalars logged beside the train metrics at 0-based `step` (learning rates, say)."""
    del config, steps_per_epoch, step
    return {}

  @abc.abstractmethod
  def evaluator(self, config, mesh, wrap=None):
    """An object whose run(variables, out_dir, step) evaluates the whole validation set and
    returns {branch: {metric: value}}. wrap: model -> the model evaluated (missing.py's
    MissingModel), or None."""

  def predictor(self, config, logits: bool = False) -> 'Predictor':
    """What `python -m asymfusion_jax.predict` runs and writes for this task. logits: also
    write the float outputs (segmentation only)."""
    raise NotImplementedError(f'{type(self).__name__} has no predict support')

  @abc.abstractmethod
  def best_metric(self, config) -> tuple[str, bool]:
    """('<branch>/<metric>' of the evaluation results, higher is better): what picks the best
    checkpoint."""

  # The steps as programs, for timing and inspecting them (asymfusion_jax.step_program).

  @abc.abstractmethod
  def synthetic_batch(self, config, mode: str, seed: int = 0) -> dict:
    """This process's rows of a batch of config.batch_size with the shapes and dtypes of the
    pipeline's 'train' or 'eval' batches (the latter with their mask), random values."""

  @abc.abstractmethod
  def build_step(self, config, mesh, mode: str, batch: dict, abstract: bool = False):
    """(jitted step, its arguments) of the 'train' step (state, batch) as training runs it, or
    the 'eval' step as the evaluator runs it, on the global `batch`; abstract=True gives the
    state or variables as shapes only (jax.eval_shape), enough to lower and compile."""

  # What export.py asks of a task.

  @abc.abstractmethod
  def load_converted(self, config, checkpoint: str) -> dict:
    """The variables that `inference` takes, read from a checkpoint that
    `python -m asymfusion_jax.convert` wrote for the config's model; ValueError if it does
    not fit the model."""

  @abc.abstractmethod
  def inference(self, config, variables: dict):
    """The eval-mode forward pass that an export serialises: a function of the (M, B, H, W, 3)
    float32 inputs, with `variables` (a checkpoint's, or load_converted's) baked in."""

  @abc.abstractmethod
  def export_sidecar(self, config) -> dict:
    """The task's part of an export's sidecar: what the inputs are, what the outputs mean."""

  def export_image_size(self, config) -> tuple[int, int]:
    """(H, W) of an export's input when --height and --width are not given: the size of the
    dataset's evaluation images where the config knows it (its eval_image_size), else the
    training crop."""
    size = data.get(config).eval_image_size(config)
    return size if size is not None else (int(config.crop_size), int(config.crop_size))

  def torch_state_dict(self, config, variables: dict) -> dict:
    """The variables as a state_dict of the reference PyTorch implementation (export
    --format=torch); ValueError where the model has none."""
    del variables
    raise ValueError(f'--format=torch writes the reference PyTorch RefineNet; config.model.name '
                     f'is {config.model.name!r}, which has no PyTorch reference layout: use '
                     '--format=jax')


class Predictor(abc.ABC):
  """What `python -m asymfusion_jax.predict` runs and writes for a task (Task.predictor).

  Attributes:
    config: the model's config.
    model: the Flax module that predicts (the one evaluation runs); its input_multiple and
      output_resize say how to run it at any size (asymfusion_jax.predict.windows.Geometry).
    io: the dataset's predict I/O (data/predict_io.py): input encoding, pad values, label
      convention and palette.
  """

  def __init__(self, config, model):
    self.config, self.model, self.io = config, model, predict_io.get(config)

  @property
  def input_multiple(self) -> int:
    return self.model.input_multiple

  @property
  def output_resize(self) -> str | None:
    return self.model.output_resize

  def apply(self, params, x: jax.Array) -> jax.Array:
    """The eval forward pass: (M, B, H, W, 3) inputs -> (M + 1, B, h, w, C) outputs."""
    return self.model.apply(params, x, train=False)

  @abc.abstractmethod
  def params(self, variables: dict):
    """What apply takes of a checkpoint's {'params', 'batch_stats'}."""

  @staticmethod
  @abc.abstractmethod
  def combine(passes: list[jax.Array]) -> jax.Array:
    """One (M + 1, B, H, W, C) output of the passes of scales and mirroring."""

  @abc.abstractmethod
  def kinds(self) -> list[tuple[str, str]]:
    """(folder, file extension) of every file written per image and branch."""

  @abc.abstractmethod
  def host_outputs(self, combined: jax.Array) -> dict[str, np.ndarray]:
    """{folder: array (R, B, ...)}, the files' contents, of the rows R of `combined`."""
