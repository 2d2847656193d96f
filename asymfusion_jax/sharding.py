"""Data parallelism over a ('data',) mesh of every device of every process.

Batches are sharded along their batch axis (axis 1 of the (M, B, H, W, C) images, axis 0 of
labels and masks); parameters and optimiser state are replicated. Each process holds the rows
of the global batch that its own devices own.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
  """A NamedSharding per batch entry: 'image' splits axis 1, everything else axis 0."""
  return {k: NamedSharding(mesh, P(None, 'data') if k == 'image' else P('data')) for k in batch}


def check_batch_size(global_batch: int, what: str = 'config.batch_size') -> None:
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch % devices:
    raise ValueError(f'{what}={global_batch} must be divisible by the {devices} devices '
                     f'of the mesh')
  if global_batch % processes:
    raise ValueError(f'{what}={global_batch} must be divisible by the {processes} processes')


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Assembles each process's rows into global jax.Arrays sharded over the mesh."""
  shardings = batch_shardings(mesh, local_batch)
  out = {}
  for k, v in local_batch.items():
    axis = 1 if k == 'image' else 0
    shape = list(v.shape)
    shape[axis] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(shardings[k], v, tuple(shape))
  return out
