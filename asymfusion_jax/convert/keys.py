"""The key-mapping machinery that every converter of asymfusion_jax.convert shares.

A conversion is a list of Entry records, one per source key (a PyTorch state_dict key or a
TF variable name), each saying where its value lives in the Flax variables and how it is laid
out there. from_torch checks a state_dict against such a list, naming every missing,
unexpected and mis-shaped key at once, and fills variables shaped like the model's (taken from
jax.eval_shape, so nothing is allocated).
"""

import dataclasses
import functools
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax.models import scan_layout

DATA_PARALLEL_PREFIX = 'module.'
NUM_BATCHES_TRACKED = 'num_batches_tracked'
# Flax BatchNorm leaves and their PyTorch names, in the order PyTorch lists them.
BN_LEAVES = (('params', 'scale', 'weight'), ('params', 'bias', 'bias'),
             ('batch_stats', 'mean', 'running_mean'), ('batch_stats', 'var', 'running_var'))
# Spatial size of the abstract input used to get the expected shapes; any size >= 32 works.
_SHAPE_PROBE_SIZE = 64
_MAX_LISTED = 20
# Entry kinds that a state_dict may lack and that are not stored in the Flax variables.
OPTIONAL_KINDS = ('counter', 'ignored')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch state_dict value and where it lives in the Flax variables.

  kind: 'kernel' (a convolution kernel, transposed), 'matrix' (a Linear weight, transposed into a
  Dense kernel), 'copy' (same array), 'row' (row `row` of a per-modality (M, C) BatchNorm array),
  'counter' (num_batches_tracked, no Flax counterpart) or 'ignored' (a value without Flax
  counterpart that the model does not use, such as an InstanceNorm's running statistics).
  'counter' and 'ignored' entries are checked for shape when present and may be absent.
  The TF-DeepLab converter adds 'depthwise' and 'rows' (asymfusion_jax.convert.deeplab) and
  keeps the TF shape in torch_shape.
  """
  torch_key: str
  kind: str
  collection: str | None = None
  path: tuple[str, ...] = ()
  row: int | None = None
  torch_shape: tuple[int, ...] = ()


def modules(params: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator:
  """Yields (module path, {leaf name: leaf}) for every module that holds parameters, in order."""
  leaves = {k: v for k, v in params.items() if not isinstance(v, Mapping)}
  if leaves:
    yield path, leaves
  for name, child in params.items():
    if isinstance(child, Mapping):
      yield from modules(child, path + (name,))


def get(tree: Mapping[str, Any], path: tuple[str, ...]):
  for name in path:
    tree = tree[name]
  return tree


def to_numpy(value) -> np.ndarray:
  """A NumPy view of a torch tensor (duck-typed, so the library never imports torch) or array."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':  # NumPy has no bfloat16: exact in float32.
      value = value.float()
  if hasattr(value, 'numpy'):
    value = value.numpy()
  return np.asarray(value)


def strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops the `module.` prefix that DataParallel puts on every key (when every key has it)."""
  keys = list(state_dict)
  if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
    return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def numpy_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The state_dict without DataParallel's prefix, every value as a NumPy array."""
  return {k: to_numpy(v) for k, v in strip_data_parallel(state_dict).items()}


def listing(title: str, items: list[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f'\n    ... and {len(items) - len(shown)} more' if len(items) > len(shown) else ''
  return f'  {title} ({len(items)}):\n    ' + '\n    '.join(shown) + more


def mismatch(what: str, missing: list[str], unexpected: list[str], misshaped: list[str],
             noun: str = 'keys') -> str | None:
  """The error message listing every missing, unexpected and mis-shaped key; None if none."""
  if not (missing or unexpected or misshaped):
    return None
  parts = [listing(title, items) for title, items in (
      (f'missing {noun}', missing), (f'unexpected {noun}', unexpected),
      (f'mis-shaped {noun}', misshaped)) if items]
  return f'{what}:\n' + '\n'.join(parts)


def from_torch(state_dict: Mapping[str, Any], abstract: Mapping[str, Any],
               entries: list[Entry], what: str) -> dict[str, Any]:
  """Fills the variables shaped like `abstract` from a (prefix-free, NumPy) state_dict.

  `entries` say where each state_dict key goes; 'counter' and 'ignored' entries may be absent
  from the state_dict.
  """
  shapes = {e.torch_key: e.torch_shape for e in entries}
  missing = [e.torch_key for e in entries
             if e.kind not in OPTIONAL_KINDS and e.torch_key not in state_dict]
  missing = list(dict.fromkeys(missing))  # torchvision BatchNorms serve every modality's row.
  unexpected = [k for k in state_dict if k not in shapes]
  misshaped = [f'{k}: got {state_dict[k].shape}, expected {shape}'
               for k, shape in shapes.items()
               if k in state_dict and state_dict[k].shape != shape]
  error = mismatch(f'the state_dict does not match {what}', missing, unexpected, misshaped)
  if error:
    raise ValueError(error)

  leaves = {}
  for e in entries:
    if e.kind in OPTIONAL_KINDS:
      continue
    value = state_dict[e.torch_key]
    target = get(abstract[e.collection], e.path)
    buf = leaves.setdefault((e.collection, e.path), np.empty(target.shape, target.dtype))
    if e.kind == 'kernel':
      buf[...] = value.transpose(2, 3, 1, 0)
    elif e.kind == 'matrix':
      buf[...] = value.T
    elif e.kind == 'row':
      buf[e.row] = value
    else:
      buf[...] = value

  def fill(key_path, _):
    collection, *path = (k.key for k in key_path)
    return leaves[collection, tuple(path)]

  return jax.tree_util.tree_map_with_path(fill, dict(abstract))


def to_torch(variables: Mapping[str, Any], entry: Entry) -> np.ndarray:
  """The float32 PyTorch value of a 'kernel', 'matrix', 'row' or 'copy' entry of `variables`."""
  value = np.asarray(get(variables[entry.collection], entry.path), np.float32)
  if entry.kind == 'kernel':
    value = value.transpose(3, 2, 0, 1)
  elif entry.kind == 'matrix':
    value = value.T
  elif entry.kind == 'row':
    value = value[entry.row]
  return np.ascontiguousarray(value)


def abstract_variables(model, num_modalities: int, **init_kwargs) -> dict[str, Any]:
  """The shapes and dtypes of the variables of a model with (M, B, H, W, 3) input, in the
  canonical (unscanned) models.scan_layout whatever the model's scan_blocks."""
  probe = jax.ShapeDtypeStruct(
      (num_modalities, 1, _SHAPE_PROBE_SIZE, _SHAPE_PROBE_SIZE, 3), jnp.float32)
  init = functools.partial(model.init, **init_kwargs)
  return scan_layout.canonical(dict(jax.eval_shape(init, jax.random.key(0), probe)))


def require(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f'the state_dict has no key {key!r}, so its model cannot be inferred')
  return state_dict[key]


def describe(model) -> str:
  fields = ('depth', 'width', 'width_divisor', 'middle_flow_units', 'num_modalities',
            'decoder_width', 'num_classes', 'ngf', 'num_downs', 'ndf')
  values = ', '.join(f'{f}={getattr(model, f)}' for f in fields if hasattr(model, f))
  return f'{type(model).__name__}({values})'

