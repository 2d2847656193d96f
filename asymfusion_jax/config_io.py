"""The config of a training workdir, read back from the config.json that training writes.

Training records its resolved config in WORKDIR/config.json (`ConfigDict.to_json_best_effort`),
so tools that start from a workdir (export, evaluation elsewhere) rebuild the same model without
the original config file or its command-line overrides. JSON has no tuples; every list is read
back as a tuple, which is how the config files spell sequences, so the round trip gives an equal
config.
"""

import json
import os

import ml_collections

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
  """The config that trained in `workdir`.

  Raises:
    FileNotFoundError: the workdir does not exist or has no config.json.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'no workdir at {workdir}: the directory does not exist')
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'the workdir {workdir} has no {CONFIG_FILE}, so its model is '
                            'unknown; training (python -m asymfusion_jax.main) writes it')
  with open(path) as f:
    return from_json(f.read())
