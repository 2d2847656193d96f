"""Model variables ({'params', 'batch_stats'}) as a standalone orbax checkpoint.

This is the exchange format between conversion (`python -m asymfusion_jax.convert`), training
(`config.init.checkpoint`) and export: one directory holding exactly the two variable
collections, without optimizer state or step, so that it can initialise any run of the same model.
The directory also holds the SHA-256 of each of its files (asymfusion_jax.checksums), checked on
every load; a directory without them is refused.
"""

import os
from typing import Any, Mapping

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from asymfusion_jax import checkpointing, checksums
from asymfusion_jax.models import scan_layout

COLLECTIONS = ('params', 'batch_stats')


def _absolute(directory) -> str:
  """orbax wants absolute paths; remote paths (gs://...) are absolute already."""
  directory = os.fspath(directory)
  return directory if '://' in directory else os.path.abspath(directory)


def _check_collections(variables: Mapping[str, Any], what: str) -> None:
  if not isinstance(variables, Mapping) or set(variables) != set(COLLECTIONS):
    keys = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
    raise ValueError(f'{what} must be a mapping with exactly the collections {COLLECTIONS}, '
                     f'got {keys}')


def save_variables(directory, variables: Mapping[str, Any], overwrite: bool = False) -> str:
  """Writes {'params', 'batch_stats'} (NumPy or JAX leaves) as an orbax checkpoint.

  Args:
    directory: the checkpoint directory to create; relative paths are made absolute.
    variables: a mapping with exactly the collections 'params' and 'batch_stats'.
    overwrite: replace an existing directory instead of failing.

  Returns:
    The absolute path written. The call returns once the checkpoint is complete on disk.
  """
  _check_collections(variables, 'variables')
  path = _absolute(directory)
  tree = {name: variables[name] for name in COLLECTIONS}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree, force=overwrite)
  if jax.process_index() == 0:
    checksums.write(path)
  return path


def _leaf_mismatches(restored, target) -> list[str]:
  """Paths whose restored shape differs from the target's (orbax does not check shapes)."""
  problems = []

  def check(path, have, want):
    if tuple(np.shape(have)) != tuple(want.shape):
      problems.append(f'{jax.tree_util.keystr(path)}: checkpoint {tuple(np.shape(have))}, '
                      f'target {tuple(want.shape)}')

  jax.tree_util.tree_map_with_path(check, restored, target)
  return problems


def check_same_shapes(tree: Mapping[str, Any], target: Mapping[str, Any], what: str) -> None:
  """Raises ValueError listing the entries of `tree` missing from, extra to, or shaped unlike
  those of `target` (any nested mappings of arrays or ShapeDtypeStructs)."""
  have = flax.traverse_util.flatten_dict(dict(tree), sep='/')
  want = flax.traverse_util.flatten_dict(dict(target), sep='/')
  problems = [f'missing {k}' for k in sorted(set(want) - set(have))]
  problems += [f'unexpected {k}' for k in sorted(set(have) - set(want))]
  problems += [f'{k}: {tuple(np.shape(have[k]))}, expected {tuple(want[k].shape)}'
               for k in sorted(set(have) & set(want))
               if tuple(np.shape(have[k])) != tuple(want[k].shape)]
  if problems:
    raise ValueError(f'{what} does not match the model ({len(problems)} problems): '
                     + '; '.join(problems[:10]) + (' ...' if len(problems) > 10 else ''))


def load_variables(directory, target: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Restores the variables that save_variables wrote.

  Args:
    directory: the checkpoint directory.
    target: optional abstract variables (e.g. `jax.eval_shape(model.init, ...)`: leaves with
      shape, dtype and optionally sharding). When given, the checkpoint must have exactly its
      structure and shapes, and leaves come back with the target's dtype; those whose target
      has a sharding come back as jax.Arrays placed by it. Other leaves come back as they were
      saved (NumPy or jax.Array). A checkpoint in the other models.scan_layout than the
      target's (config.model.scan_blocks) comes back converted to the target's.

  Returns:
    {'params': ..., 'batch_stats': ...}.

  Raises:
    FileNotFoundError: the directory does not exist.
    ValueError: the directory is not an orbax checkpoint, does not match the target, or has no
      checksum record or its files fail it (checksums.ChecksumError).
  """
  path = _absolute(directory)
  if not os.path.isdir(path) and '://' not in path:
    raise FileNotFoundError(f'no variables checkpoint at {path}: the directory does not exist')
  try:
    checksums.verify(path)
  except checksums.ChecksumError as e:
    raise checksums.ChecksumError(f'checkpoint {path} cannot be used: {e}') from e
  if target is not None:
    _check_collections(target, 'target')
    target = {name: target[name] for name in COLLECTIONS}
  checkpointing.quiet_abandoned_reads()
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      if target is None:
        restored = checkpointer.restore(path)
      else:  # Converted to the target's scan_layout (the converters write the canonical one).
        try:
          stored = checkpointer.metadata(path).item_metadata['params']
        except Exception:  # pylint: disable=broad-except  # The restore names what is wrong.
          stored = target
        restored = scan_layout.restore(lambda t: checkpointer.restore(path, t), stored, target)
    except FileNotFoundError as e:
      raise ValueError(f'{path} is not an orbax variables checkpoint: {e}') from e
    except ValueError as e:
      if target is None:
        raise
      raise ValueError(f'checkpoint {path} does not match the target variables: {e}') from e
  if target is not None:
    problems = _leaf_mismatches(restored, target)
    if problems:
      raise ValueError(f'checkpoint {path} does not match the target variables:\n  ' +
                       '\n  '.join(problems))
  else:
    _check_collections(restored, f'checkpoint {path}')
  return restored
