"""The config of a training workdir, read back from the config.json that training writes.

Training records its resolved config in WORKDIR/config.json (`ConfigDict.to_json_best_effort`),
so tools that start from a workdir (export, evaluation elsewhere) rebuild the same model without
the original config file or its command-line overrides. JSON has no tuples; every list is read
back as a tuple, which is how the config files spell sequences, so the round trip gives an equal
config. A config.json written before a field existed gets that field's default from the paper
config of its dataset (config_lib.paper_defaults), so workdirs of earlier versions keep exporting
and evaluating. A resumed run compares its config with the config.json as written
(read_workdir_config, differing_keys), so a translation or Cityscapes config is never compared
with fields of another dataset's defaults.
"""

import json
import os

import ml_collections

from asymfusion_jax import config_lib

CONFIG_FILE = 'config.json'


def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def from_json(text: str) -> ml_collections.ConfigDict:
  """A ConfigDict from the JSON text of `ConfigDict.to_json_best_effort`, lists as tuples."""
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config that trained in `workdir`, with the fields it predates at their defaults.

  Raises:
    FileNotFoundError: the workdir does not exist or has no config.json.
    ValueError: config.json is not valid JSON.
  """
  config = read_workdir_config(workdir)
  return with_defaults(config, config_lib.paper_defaults(config))


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json as it was written (see load_workdir_config for its errors)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'no workdir at {workdir}: the directory does not exist')
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'the workdir {workdir} has no {CONFIG_FILE}, so its model is '
                            'unknown; training (python -m asymfusion_jax.main) writes it')
  with open(path) as f:
    text = f.read()
  try:
    config = from_json(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); it should be the config that training '
                     'wrote') from e
  return config


def with_defaults(config: ml_collections.ConfigDict,
                  defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` plus every field of `defaults` it lacks (recursively); its own values win."""
  merged = defaults.to_dict()

  def fill(base: dict, own: dict) -> dict:
    for key, value in own.items():
      base[key] = fill(base[key], value) if (
          isinstance(value, dict) and isinstance(base.get(key), dict)) else value
    return base
  return ml_collections.ConfigDict(fill(merged, config.to_dict()))


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _json_flat(config: ml_collections.ConfigDict) -> dict:
  """The dotted keys of `config` after the JSON round trip of a config.json."""
  return _flat(from_json(config.to_json_best_effort()).to_dict())


def differing_keys(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict,
                   defaults: ml_collections.ConfigDict | None = None) -> list[str]:
  """The dotted keys whose values differ between two configs, or that only one has; sorted.

  `new` goes through the same JSON round trip as a config.json, so a config compares equal to
  the config.json written from it. defaults: what a key of `new` that `old` lacks counts as in
  `old` (a config.json written before the key existed); a key only the defaults have is none of
  the comparison's business.
  """
  a = _flat(old.to_dict())
  b = _json_flat(new)
  if defaults is not None:
    predated = _json_flat(defaults)
    a.update({k: predated[k] for k in b.keys() - a.keys() if k in predated})
  missing = object()
  return sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
