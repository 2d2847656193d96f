"""FID and KID of images spread over processes (hosts): each process extracts the Inception
features of its own images only, and what the distances need is combined across processes.

- Statistics (FID): every process's fid.FeatureStats sums are moved to one common shift (the
  count-weighted mean of the processes' shifts, which keeps the sums of outer products small as
  one process's first-batch shift does) and summed over the processes in float64, in process
  order (sharding.process_sum). Every process then holds the same bits, which equal the sums one
  process would have taken of every image up to float64 rounding (~1e-16 relative), so the FID
  of N processes is the single-process FID to ~1e-12 relative, at 1/N of the features each.
- Features (KID, a kernel on samples): every process's features are gathered in dataset order
  (each row comes with its dataset index), so the seeded subsets draw the very rows that one
  process holding every image would. Each process computes every process_count-th subset and the
  subset values are gathered: the same mean and std as one process, at 1/N of the kernel work.

With one process every function here returns what fid's own do.
"""

import jax
import numpy as np

from asymfusion_jax import fid, sharding


def combine(stats: fid.FeatureStats, keys) -> fid.FeatureStats:
  """The FeatureStats of every process's features: `stats` holds this process's, in the order
  of `keys` (unique dataset indices, one per feature row). The result keeps the features, in key
  order, when `stats` does."""
  counts = sharding.process_allgather(np.int64(stats.n))
  shifts = sharding.process_allgather(stats.shift)
  n = int(counts.sum())
  shift = (counts.astype(np.float64) @ shifts) / max(n, 1)
  total, outer = stats.sums_about(shift)
  total, outer = sharding.process_sum(total), sharding.process_sum(outer)
  features = None
  try:
    local = stats.features()
  except ValueError:  # Features not kept: FID only.
    local = None
  if local is not None:
    if len(keys) != len(local):
      raise ValueError(f'{len(keys)} keys for {len(local)} features')
    features = sharding.gather_rows(local, keys)
  return fid.FeatureStats.from_sums(n, shift, total, outer, features)


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, num_subsets: int = fid.KID_SUBSETS,
                              max_subset_size: int = fid.KID_SUBSET_SIZE,
                              seed: int = 0) -> tuple[float, float]:
  """fid.kernel_inception_distance of the same (gathered) features on every process, each
  process computing the subsets p, p + P, p + 2P, ... of the P processes."""
  p, count = jax.process_index(), jax.process_count()
  values = fid.kid_subset_values(x, y, num_subsets, max_subset_size, seed,
                                 computed=range(p, num_subsets, count))
  gathered = sharding.process_allgather(values)
  values = gathered[np.arange(num_subsets) % count, np.arange(num_subsets)]
  return float(np.mean(values)), float(np.std(values))
