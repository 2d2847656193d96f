"""The distances between two sets of Inception features: FID (Frechet distance of their Gaussian
statistics) and KID (polynomial-kernel MMD^2 over seeded subsets), in float64 on the host, as
pytorch-fid and CEN compute them (docs/method.md section 12). NumPy only: no SciPy at run time.
"""

import numpy as np

KID_SCALE = 100.0  # CEN reports KID x 100.
KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000


def _numerically_zero(eigenvalues: np.ndarray) -> np.ndarray:
  """Eigenvalues below rounding noise: under d * eps * the largest (np.linalg.matrix_rank's
  tolerance). Their square roots would be sqrt(noise), far above the noise itself."""
  tolerance = len(eigenvalues) * np.finfo(np.float64).eps * max(eigenvalues.max(), 0.0)
  return eigenvalues <= tolerance


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  roots = np.where(_numerically_zero(values), 0.0, np.sqrt(np.maximum(values, 0.0)))
  return (vectors * roots) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr Re (S1 S2)^(1/2) for covariances S1, S2 (symmetric positive semi-definite), float64.

  S1 S2 is similar to the symmetric S1^(1/2) S2 S1^(1/2), so its eigenvalues are real and
  non-negative, and the trace of the principal square root is the sum of their square roots;
  eigenvalues that rounding makes negative have an imaginary root, whose real part is 0. This is
  the value pytorch-fid takes from scipy.linalg.sqrtm, here from symmetric eigensolvers (no SciPy
  at run time). Eigenvalues within rounding noise of 0 (of S1, then of the product) count as 0:
  covariances of N <= 2048 images are singular, and the square roots of their noise eigenvalues
  would otherwise add up (identical statistics then give an FID of 1e-8 of Tr S, not 1e-13).
  """
  root1 = _sqrt_psd(sigma1)
  inner = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
  roots = np.where(_numerically_zero(eigenvalues), 0.0, np.sqrt(np.maximum(eigenvalues, 0.0)))
  return float(roots.sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'mismatched statistics: mu {mu1.shape} and {mu2.shape}, sigma '
                     f'{sigma1.shape} and {sigma2.shape}')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of two equal-size samples with the kernel (x.y / d + 1)^3 (Binkowski et al.,
  as CEN computes it: Kxx and Kyy without their diagonals, Kxy with it)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, d = x.shape
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, num_subsets: int = KID_SUBSETS,
                              max_subset_size: int = KID_SUBSET_SIZE,
                              seed: int = 0) -> tuple[float, float]:
  """KID (mean, std over subsets) of two feature sets, unscaled (multiply by KID_SCALE to report).

  Each subset draws m = min(max_subset_size, len(x), len(y)) rows of x, then m rows of y, without
  replacement, from np.random.default_rng(seed).
  """
  values = kid_subset_values(x, y, num_subsets, max_subset_size, seed)
  return float(np.mean(values)), float(np.std(values))


def kid_subset_values(x: np.ndarray, y: np.ndarray, num_subsets: int = KID_SUBSETS,
                      max_subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
                      computed=None) -> np.ndarray:
  """(num_subsets,) MMD^2 of kernel_inception_distance's subsets; only the subsets whose indices
  are in `computed` (default: all) are computed, the others are NaN (every subset is drawn, so
  each one's rows do not depend on which are computed)."""
  m = min(max_subset_size, len(x), len(y))
  if m < 2:
    raise ValueError(f'KID needs at least 2 images per set, got {len(x)} and {len(y)}')
  rng = np.random.default_rng(seed)
  computed = set(range(num_subsets) if computed is None else computed)
  values = np.full(num_subsets, np.nan)
  for i in range(num_subsets):
    rows_x, rows_y = rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False)
    if i in computed:
      values[i] = polynomial_mmd2(x[rows_x], y[rows_y])
  return values
