"""Where predict's model comes from: a training workdir, a converted checkpoint with its config,
or an exported artifact (asymfusion_jax.export) with its sidecar.

A workdir or checkpoint gives the config and the variables (export.from_workdir,
export.from_checkpoint); the task's predictor builds the model that runs them. An artifact is
run as it was exported: its sidecar (FILE.json) holds the config it was exported from, and its
input size is fixed, so predict pads or tiles every image to that size.
"""

import dataclasses
import json
import os
from typing import Any, Callable

import jax

from asymfusion_jax import config_io
from asymfusion_jax import export


@dataclasses.dataclass(frozen=True)
class Model:
  """A model to predict with.

  Attributes:
    config: the config it was trained (or converted) with.
    origin: where it came from, for the log and the run record.
    step: the checkpoint's training step (None for a converted checkpoint or unknown).
    variables: {'params', 'batch_stats'} for a workdir or checkpoint; None for an artifact.
    call: for an artifact, its forward pass (M, B, H, W, 3) -> outputs; None otherwise.
    fixed_size: for an artifact, the (height, width) it takes; None otherwise.
  """
  config: Any
  origin: str
  step: int | None = None
  variables: dict | None = None
  call: Callable | None = None
  fixed_size: tuple[int, int] | None = None


def from_workdir(workdir: str, step: int | None = None) -> Model:
  """The best checkpoint of a training workdir, or its periodic checkpoint of `step`."""
  source = export.from_workdir(workdir, step)
  return Model(source.config, source.origin, source.step, variables=source.variables)


def from_checkpoint(checkpoint: str, config) -> Model:
  """A variables checkpoint written by asymfusion_jax.convert, for the model of `config`."""
  source = export.from_checkpoint(checkpoint, config)
  return Model(source.config, source.origin, source.step, variables=source.variables)


def from_artifact(artifact: str) -> Model:
  """An artifact written by `python -m asymfusion_jax.export --format=jax` and its sidecar.

  Raises:
    FileNotFoundError: no artifact or no sidecar beside it.
    ValueError: the sidecar is not JSON or lacks the config (artifacts exported before predict
      existed: export them again), or the artifact cannot be read.
  """
  meta_path = export.sidecar_path(artifact)
  for path, what in ((artifact, 'artifact'), (meta_path, 'sidecar of the artifact')):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'no {what} at {path}')
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{meta_path} is not valid JSON ({e}); it should be the sidecar that '
                     'asymfusion_jax.export wrote') from e
  if not isinstance(meta, dict) or 'config' not in meta:
    raise ValueError(f'{meta_path} has no config: the artifact was exported before predict '
                     'existed; export it again (python -m asymfusion_jax.export)')
  config = config_io.from_json(json.dumps(meta['config']))
  with open(artifact, 'rb') as f:
    blob = f.read()
  try:
    exported = jax.export.deserialize(bytearray(blob))
  except Exception as e:  # pylint: disable=broad-except  # Whatever the flatbuffer reader says.
    raise ValueError(f'{artifact} is not a jax.export artifact: {e}') from e
  shape = exported.in_avals[0].shape
  return Model(config, f'artifact {os.path.abspath(artifact)}', meta.get('step'),
               call=exported.call, fixed_size=(int(shape[2]), int(shape[3])))
