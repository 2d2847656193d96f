"""Deployable forms of a trained model: a jax.export inference program, or a reference .pth.

  python -m asymfusion_jax.export --workdir=DIR [--step=N] --out=model.jax
  python -m asymfusion_jax.export --checkpoint=CKPT --config=configs/X.py --out=model.jax
  python -m asymfusion_jax.export --workdir=DIR --format=torch --out=refinenet.pth

The model comes from a training workdir (its best checkpoint, or the periodic one of --step;
the config is WORKDIR/config.json) or from a variables checkpoint written by
`python -m asymfusion_jax.convert` together with the config file it was converted for.

--format=jax (the default) writes the eval-mode forward pass as a serialized `jax.export`
artifact with the variables baked in as constants, lowered for every platform in --platforms, so
that one artifact exported on a CPU also runs on a GPU or TPU. Its input is (M, B, H, W, 3)
float32 normalised images, with a symbolic batch size B and H, W fixed at export (--height,
--width: the fusion pixel shift and the align-corners upsampling build static gather indices from
the feature sizes). Its output is the (M + 1, B, ceil(H/4), ceil(W/4), K) float32 logits of a
RefineNet, or the (M + 1, B, H, W, K) logits of a DeepLab (at input size unless
config.model.upsample_logits is off): the M branches, then the ensemble. A translation model
exports its generator: input (M, B, H, W, 3) domain images in [-1, 1], output the
(M + 1, B, H, W, 3) RGB images in [-1, 1] (H and W multiples of 2**config.model.num_downs). FILE.json, the
sidecar, says how to feed it and read it (see `sidecar`). Running it needs only jax: `jax.export.deserialize(blob).call(x)`.

Each platform of the artifact computes in the dtype that training on it would use:
config.compute_dtype, or --compute_dtype if given, where 'auto' is float32 on cpu and bfloat16
on cuda, rocm and tpu whatever machine exports (jax.lax.platform_dependent keeps, where the
artifact is compiled, only the branch of that platform). The sidecar's `compute_dtype` maps
every platform to its dtype. Inputs and outputs are float32 on every platform.

--format=torch writes the variables as a state_dict of the reference PyTorch implementation
(docs/method.md section 9) in torch.save's zip format, without importing torch.

Nothing is written unless the whole export succeeds: the files go to temporaries beside --out,
which are renamed at the end (the sidecar first, so an artifact never lacks its sidecar).
"""

import contextlib
import dataclasses
import errno
import json
import os
import tempfile
from typing import Any, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp

from asymfusion_jax import cli
from asymfusion_jax import checkpointing
from asymfusion_jax import config_io
from asymfusion_jax import logger
from asymfusion_jax import model_flags
from asymfusion_jax import sharding
from asymfusion_jax import tasks
from asymfusion_jax import torch_pickle
from asymfusion_jax import train
from asymfusion_jax.models import resolve_compute_dtype
from asymfusion_jax.models.refinenet import COMPUTE_DTYPES

FORMATS = ('jax', 'torch')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
# TPU lowering works without a TPU, so the default artifact runs on every usual accelerator.
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
BATCH_DIM = 'b'
SIDECAR_SUFFIX = '.json'


@dataclasses.dataclass(frozen=True)
class Source:
  """A trained model to export.

  Attributes:
    config: the config that builds its model (build_model) and names its modalities.
    variables: {'params', 'batch_stats'} as NumPy arrays.
    step: the training step of the checkpoint; None for a converted checkpoint.
    origin: where it came from, for the sidecar and the log.
  """
  config: Any
  variables: dict
  step: int | None
  origin: str


def from_workdir(workdir: str, step: int | None = None) -> Source:
  """The best checkpoint of a training workdir, or its periodic checkpoint of `step`.

  Raises:
    FileNotFoundError: no workdir, no config.json in it, or no such checkpoint.
  """
  config = config_io.load_workdir_config(workdir)
  ckpts = checkpointing.Checkpoints(workdir, config.keep_checkpoints, create=False)
  try:
    variables, record = ckpts.restore_variables(
        train.abstract_train_state(config, sharding.make_mesh()), step)
  finally:
    ckpts.close()
  return Source(config, jax.device_get(variables), int(record['step']),
                f'workdir {os.path.abspath(workdir)}')


def from_checkpoint(checkpoint: str, config) -> Source:
  """A variables checkpoint (asymfusion_jax.convert, variables_io) for the model of `config`.

  Raises:
    FileNotFoundError: no such directory.
    ValueError: it is not a variables checkpoint, or does not match the config's model.
  """
  variables = tasks.get(config).load_converted(config, checkpoint)
  return Source(config, jax.device_get(variables), None,
                f'checkpoint {os.path.abspath(checkpoint)}')


# The jax.export artifact.


def default_image_size(config) -> tuple[int, int]:
  """(H, W) of the artifact's input when --height/--width are not given (Task.export_image_size).

  Segmentation: the size of the dataset's images where the config knows it (synthetic data),
  else the training crop; for NYUDv2 evaluation at full resolution pass --height=480
  --width=640. Translation models take config.crop_size squares (256 in the paper).
  """
  return tasks.get(config).export_image_size(config)


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """The platforms as a tuple, or a ValueError naming the valid ones."""
  platforms = tuple(platforms)
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown or len(set(platforms)) != len(platforms):
    raise ValueError(f'--platforms must be distinct names among {PLATFORMS}, got {platforms}')
  return platforms


def compute_dtypes(config, platforms: Sequence[str],
                   compute_dtype: str | None = None) -> dict[str, str]:
  """{platform: the dtype name it computes in}: compute_dtype (default config.compute_dtype)
  resolved for each platform as training there resolves it ('auto': float32 on cpu only)."""
  key, name = (('config.compute_dtype', config.compute_dtype) if compute_dtype is None
               else ('--compute_dtype', compute_dtype))
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'{key} must be one of {COMPUTE_DTYPES}, got {name!r}')
  return {p: str(resolve_compute_dtype(name, p)) for p in check_platforms(platforms)}


def export_forward(source: Source, height: int, width: int,
                   platforms: Sequence[str] = DEFAULT_PLATFORMS,
                   compute_dtype: str | None = None) -> jax.export.Exported:
  """The eval-mode forward pass with the variables as constants, input (M, b, H, W, 3); each
  platform computes in its dtype of compute_dtypes."""
  if height < 1 or width < 1:
    raise ValueError(f'the input size must be positive, got {height}x{width}')
  dtypes = compute_dtypes(source.config, platforms, compute_dtype)
  forwards = {name: _forward(source, name) for name in sorted(set(dtypes.values()))}
  if len(forwards) == 1:
    forward, = forwards.values()
  else:  # One branch per dtype; lowering keeps the one of the platform it compiles for.
    branches = {platform: forwards[name] for platform, name in dtypes.items()}

    def forward(x):
      return jax.lax.platform_dependent(x, **branches)
  batch, = jax.export.symbolic_shape(BATCH_DIM)
  spec = jax.ShapeDtypeStruct((len(source.config.modalities), batch, height, width, 3),
                              jnp.float32)
  return jax.export.export(jax.jit(forward), platforms=tuple(dtypes))(spec)


def _forward(source: Source, dtype: str):
  """The eval-mode forward pass of the source's model (Task.inference: the segmentation model,
  or a translation model's generator), computing in `dtype`."""
  config = source.config.copy_and_resolve_references()
  config.compute_dtype = dtype
  return tasks.get(config).inference(config, source.variables)


def _shape(aval) -> list:
  return [d if isinstance(d, int) else str(d) for d in aval.shape]


def sidecar(source: Source, exported: jax.export.Exported, artifact: str,
            compute_dtype: str | None = None) -> dict:
  """The JSON description that deployment needs besides the artifact.

  The task's part (Task.export_sidecar) says how raw pixels become the input, as the dataset's
  input_encoding states it: modalities (input order along axis 0) and their normalisation
  (NYUDv2: raw_pad_value, normalisation and formula of data.modalities.to_json; Cityscapes: a
  formula per modality; Taskonomy: the target and the formula); segmentation adds num_classes,
  ignore_label and the logits' output_stride. outputs names the M + 1 output rows. Shapes list
  symbolic dimensions by name ('b': any batch size >= 1). compute_dtype maps every platform to
  the dtype it computes in (compute_dtypes; the argument as there).
  """
  config = source.config
  (inp,), (out,) = exported.in_avals, exported.out_avals
  return {
      'artifact': artifact,
      'format': 'jax.export',
      'task': config.task,
      **tasks.get(config).export_sidecar(config),
      'outputs': list(config.modalities) + ['ensemble'],
      'input_shape': _shape(inp),
      'input_dtype': str(inp.dtype),
      'output_shape': _shape(out),
      'output_dtype': str(out.dtype),
      'platforms': list(exported.platforms),
      'step': source.step,
      'source': source.origin,
      'model': config.model.to_dict(),
      # The whole config, from which `python -m asymfusion_jax.predict --artifact` reads the
      # dataset's input encoding and label convention.
      'config': json.loads(config.to_json_best_effort()),
      'compute_dtype': compute_dtypes(config, exported.platforms, compute_dtype),
      'jax_version': jax.__version__,
      'calling_convention_version': exported.calling_convention_version,
  }


def sidecar_path(out: str) -> str:
  """FILE.json beside FILE, whatever FILE's own suffix."""
  return out + SIDECAR_SUFFIX


# Writing.


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def check_out(paths: Sequence[str]) -> None:
  """Fails before any work if an output path cannot be a file (it is a folder, or a file is
  where one of its folders would be)."""
  for path in paths:
    if os.path.isdir(path):
      raise ValueError(f'cannot write {path}: it is a folder')
    above = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(above):
      above = os.path.dirname(above)
    if not os.path.isdir(above):
      raise NotADirectoryError(errno.ENOTDIR, f'{above} is a file, not a folder', path)


def _make_parents(path: str) -> list[str]:
  """Creates the missing folders above `path`; returns them, deepest first, for clean-up."""
  created, directory = [], os.path.dirname(os.path.abspath(path))
  while not os.path.isdir(directory):
    created.append(directory)
    directory = os.path.dirname(directory)
  for directory in reversed(created):
    os.mkdir(directory)
  return created


def _temp_beside(path: str, what: str) -> str:
  fd, temp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix=f'.{what}',
                              dir=os.path.dirname(os.path.abspath(path)))
  os.close(fd)
  return temp


@contextlib.contextmanager
def _replaced_atomically(paths: Sequence[str]) -> Iterator[list[str]]:
  """Temporary paths beside `paths`; moved onto them together, only if the block succeeds.

  Files already at `paths` are moved aside first and put back if any move fails, so a failure
  leaves the old files (or none) and never a new file beside an old one; folders created for
  the outputs are removed again.
  """
  check_out(paths)
  created, temps, backups, done = [], [], {}, []
  try:
    for path in paths:
      created += _make_parents(path)
      temps.append(_temp_beside(path, 'tmp'))
      os.chmod(temps[-1], 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename.
    yield temps
    for path in paths:
      if os.path.lexists(path):
        backup = _temp_beside(path, 'old')
        temps.append(backup)  # Removed at the end, unless moved back.
        os.replace(path, backup)
        backups[path] = backup
    for temp, path in zip(temps, paths):
      os.replace(temp, path)
      done.append(path)
  except BaseException:
    for path in done:
      os.remove(path)
    for path, backup in backups.items():
      os.replace(backup, path)
    _remove(temps)
    for directory in created:  # Deepest first.
      if os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
    raise
  _remove(temps)


def _remove(paths: Sequence[str]) -> None:
  for path in paths:
    if os.path.exists(path):
      os.remove(path)


def write_jax(source: Source, out: str, height: int | None = None, width: int | None = None,
              platforms: Sequence[str] = DEFAULT_PLATFORMS,
              compute_dtype: str | None = None) -> dict:
  """Writes the artifact to `out` and its sidecar to sidecar_path(out); returns the sidecar.

  compute_dtype: 'float32', 'bfloat16' or 'auto' for every platform; None: config.compute_dtype.
  """
  default_h, default_w = default_image_size(source.config)
  exported = export_forward(source, default_h if height is None else height,
                            default_w if width is None else width, platforms, compute_dtype)
  blob = exported.serialize()
  meta = sidecar(source, exported, os.path.basename(out), compute_dtype)
  with _replaced_atomically([sidecar_path(out), out]) as (meta_temp, blob_temp):
    with open(meta_temp, 'w') as f:
      json.dump(meta, f, indent=2)
    with open(blob_temp, 'wb') as f:
      f.write(blob)
  return meta


def write_torch(source: Source, out: str) -> None:
  """Writes the reference implementation's state_dict (num_batches_tracked 0) to `out`
  (Task.torch_state_dict: a RefineNet's; ValueError for any other model)."""
  state_dict = tasks.get(source.config).torch_state_dict(source.config, source.variables)
  with _replaced_atomically([out]) as (temp,):
    torch_pickle.save_state_dict(temp, state_dict)


def export(source: Source, out: str, fmt: str = 'jax', **jax_options) -> None:
  """Writes `source` to `out` in format `fmt` ('jax': write_jax with jax_options; 'torch')."""
  if fmt == 'jax':
    write_jax(source, out, **jax_options)
  elif fmt == 'torch':
    if jax_options:
      raise ValueError(f'{sorted(jax_options)} only apply to --format=jax')
    write_torch(source, out)
  else:
    raise ValueError(f'unknown export format {fmt!r}; choose one of {FORMATS}')


# Command line.


def _source_from_flags(args) -> Source:
  if model_flags.chosen(args) == 'workdir':
    return from_workdir(args.workdir, args.step)
  return from_checkpoint(args.checkpoint, args.config)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logger.setup_cli_logging()
  args = flags.FLAGS
  options = {}
  if args.format == 'jax':
    options = {'height': args.height, 'width': args.width, 'platforms': args.platforms,
               'compute_dtype': args.compute_dtype}
  elif any(args[name].present for name in ('height', 'width', 'platforms', 'compute_dtype')):
    raise app.UsageError('--height, --width, --platforms and --compute_dtype only apply to '
                         '--format=jax')
  # Before the checkpoint is read, so that a typo fails at once. An error is one line
  # (cli.run): the files go to temporaries renamed at the end, so nothing was written then.
  check_platforms(args.platforms)
  check_out([args.out] + ([sidecar_path(args.out)] if args.format == 'jax' else []))
  source = _source_from_flags(args)
  export(source, args.out, args.format, **options)
  logging.info('Exported the %s (step %s) as %s to %s.', source.origin, source.step,
               args.format, args.out)


def _define_flags():
  """CLI flags, defined only when run as a script so that importing this module defines none."""
  model_flags.define()
  flags.DEFINE_string('out', None, 'File to write. --format=jax also writes OUT.json.')
  flags.DEFINE_enum('format', 'jax', FORMATS, 'jax: a jax.export artifact with a JSON sidecar; '
                    'torch: a .pth state_dict of the reference PyTorch implementation.')
  flags.DEFINE_list('platforms', list(DEFAULT_PLATFORMS),
                    f'--format=jax: platforms to lower for, among {PLATFORMS}.')
  flags.DEFINE_integer('height', None, '--format=jax: input height (default: the synthetic '
                       'image height, else config.crop_size).', lower_bound=1)
  flags.DEFINE_integer('width', None, '--format=jax: input width (default: the synthetic image '
                       'width, else config.crop_size).', lower_bound=1)
  flags.DEFINE_enum('compute_dtype', None, COMPUTE_DTYPES, '--format=jax: the compute dtype '
                    "of every platform instead of config.compute_dtype ('auto': float32 on cpu, "
                    'bfloat16 on cuda, rocm and tpu).')
  flags.mark_flags_as_required(['out'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main, 'export failed, nothing written')
