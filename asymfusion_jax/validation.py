"""Checks of a config that run before a run writes anything: the helpers and the keys every
task shares.

Errors found later cost more: a negative learning rate trains by gradient ascent until the loss
is NaN, a batch larger than the dataset fails once the workdir and its data exist. So training
and --mode=eval check every key first (Task.check_config, Task.check_training), and each error
names the key, its value and what would be valid. Each task checks its own keys in its package
(tasks/<task>/validation.py) with the helpers below, and the dataset of config.data.name its own
(`check_dataset`); checks that need the dataset's size read it without writing anything (the
dataset's planned_num_examples).
"""

import math
import numbers

from asymfusion_jax import data
from asymfusion_jax import fusion as fusion_lib
from asymfusion_jax.models import kernels as kernels_lib
from asymfusion_jax.models import refinenet


class ConfigError(ValueError):
  """A config value that cannot run; the message names the key, its value and what is valid."""


def value(config, key: str):
  """config's value at the dotted `key`."""
  node = config
  for part in key.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f'config.{key} is missing; asymfusion_jax/config_lib.py has the keys '
                        'of each config and their defaults') from None
  return node


def fail(key: str, found, requirement: str):
  """Raises ConfigError: config.<key>=<found> must be <requirement>."""
  raise ConfigError(f'config.{key}={found!r} must be {requirement}')


def is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def integer(config, key: str, minimum: int) -> int:
  """An integer >= minimum."""
  found = value(config, key)
  if not is_int(found) or found < minimum:
    fail(key, found, 'a positive integer' if minimum == 1 else f'an integer >= {minimum}')
  return found


def number(config, key: str, low: float, high: float = math.inf, low_open: bool = False,
           high_open: bool = True) -> float:
  """A finite number in the interval given by low, high and whether each end is open."""
  found = value(config, key)
  inside = is_number(found) and (low < found if low_open else low <= found) and (
      found < high if high_open else found <= high)
  if not inside:
    if high == math.inf:
      fail(key, found, f'a finite number {">" if low_open else ">="} {low:g}')
    fail(key, found, f'a number in {"(" if low_open else "["}{low:g}, {high:g}'
                     f'{")" if high_open else "]"}')
  return found


def sequence(config, key: str, length: int | None = None) -> tuple:
  """A sequence (not a string) of `length` values, or a non-empty one."""
  found = value(config, key)
  if isinstance(found, (str, bytes)) or not hasattr(found, '__len__') or (
      length is not None and len(found) != length) or (length is None and not found):
    fail(key, found, f'a sequence of {length} values' if length else 'a non-empty sequence')
  return tuple(found)


def choice(config, key: str, choices) -> None:
  found = value(config, key)
  if found not in choices:
    fail(key, found, f'one of {sorted(choices) if isinstance(choices, dict) else choices}')


def boolean(config, key: str) -> None:
  found = value(config, key)
  if not isinstance(found, bool):
    fail(key, found, 'True or False')


def fusion(config) -> None:
  """config.model.fusion names a fusion method (asymfusion_jax.fusion.METHODS)."""
  choice(config, 'model.fusion', fusion_lib.METHODS)


def modalities(config, known, what: str) -> tuple:
  """config.modalities: a non-empty sequence of names in `known`, without repeats."""
  names = sequence(config, 'modalities')
  if not all(name in known for name in names):
    fail('modalities', names, f'a sequence of known {what}, among {sorted(known)}')
  if len(set(names)) != len(names):
    fail('modalities', names, 'a sequence without repeats')
  return names


def compute_dtype(config) -> None:
  choice(config, 'compute_dtype', refinenet.COMPUTE_DTYPES)


def check_dataset(config):
  """The dataset of config.data.name (data.get), which must serve config.model.name; it then
  checks the keys only it reads (its check_config). Returns the dataset."""
  dataset = data.get(config)
  model_name = value(config, 'model.name')
  if model_name not in dataset.MODELS:
    fail('data.name', config.data.name, f'a dataset for config.model.name={model_name!r}, one of '
                                        f'{data.for_model(model_name)}')
  dataset.check_config(config)
  return dataset


def kernels(config) -> None:
  choice(config, 'model.kernels', kernels_lib.KERNELS)


def check_run(config) -> None:
  """The keys of the training loop every task has: its length, logging and checkpoints."""
  integer(config, 'max_steps', -1)
  for key in ('log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps',
              'keep_checkpoints'):
    integer(config, key, 1)
  integer(config, 'num_prediction_images', 0)
  from asymfusion_jax import missing  # pylint: disable=g-import-not-at-top (it imports this)
  missing.check_config(config)
