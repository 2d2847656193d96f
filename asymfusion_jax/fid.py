"""FID and KID with the FID Inception-v3 in JAX: no TensorFlow or PyTorch at run time.

The numbers are those of pytorch-fid (and of CEN for KID), docs/method.md section 12:

- features: the 2048-d pool3 features of pytorch-fid's port of TensorFlow's 2015-12-05 Inception
  graph (models/inception.py), on RGB images bilinearly resized to 299x299;
- FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), sample covariances (N - 1), float64;
- KID = unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over 50 seeded subsets of
  min(1000, N) images drawn without replacement from each set, reported x 100 (KID_SCALE).

Statistics stream: FeatureStats keeps float64 running sums on the host, so the mean and covariance
of any number of images need no feature array. KID needs the features themselves (any two images
may meet in a subset), so FeatureStats also keeps them, in float32 (400 MB for 50k images) unless
keep_features=False; statistics saved to .npz (mu, sigma, n) give FID only. The sums of several
FeatureStats add up, to float64 rounding, once moved to a common shift (sums_about, from_sums):
fid_hosts combines those of processes that each extracted the features of their own images. The
distances themselves are in fid_distances (and importable from here).

Command line:

  python -m asymfusion_jax.fid --weights=pt_inception-2015-12-05-6726825d.pth DIR_A DIR_B
  python -m asymfusion_jax.fid --weights=W --save-stats=real.npz DIR  # once per dataset
  python -m asymfusion_jax.fid --weights=W real.npz DIR               # FID only

--weights is pytorch-fid's .pth or the directory that
`python -m asymfusion_jax.convert --inception=FILE --out=DIR` wrote from it (faster to load).
"""

import concurrent.futures
import dataclasses
import os
import tempfile
import zipfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from asymfusion_jax import cli
from asymfusion_jax import variables_io
from asymfusion_jax.convert import inception as inception_convert
# The distances are part of this module's interface (fid.frechet_distance, ...).
from asymfusion_jax.fid_distances import (  # pylint: disable=unused-import
    KID_SCALE, KID_SUBSET_SIZE, KID_SUBSETS, frechet_distance, kernel_inception_distance,
    kid_subset_values, polynomial_mmd2, trace_sqrt_product)
from asymfusion_jax.models import inception

# pytorch-fid's IMAGE_EXTENSIONS (matched here case-insensitively).
IMAGE_EXTENSIONS = ('.bmp', '.jpg', '.jpeg', '.pgm', '.png', '.ppm', '.tif', '.tiff', '.webp')
STATS_SUFFIX = '.npz'


# Weights and features.


def load_weights(path: str) -> dict[str, Any]:
  """FID Inception variables from pytorch-fid's .pth (converted now) or a converted directory.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: naming `path`, when it is not the FID Inception's weights (a truncated or other
      .pth, another model's checkpoint).
  """
  if os.path.isdir(path):
    try:
      return variables_io.load_variables(path, target=inception.abstract_variables(logits=True))
    except ValueError as e:
      raise ValueError(f'{path} is not a converted FID Inception (python -m '
                       f'asymfusion_jax.convert --inception=FILE --out={path}): {e}') from e
  if not os.path.exists(path):
    raise FileNotFoundError(f'no FID Inception weights at {path}: give pytorch-fid\'s '
                            'pt_inception-2015-12-05-6726825d.pth or the directory converted '
                            'from it')
  return inception_convert.load_inception_file(path)


class FeatureExtractor:
  """Jitted pool3 features of image batches, the batch sharded over the local devices.

  Preprocessing (resize to 299x299, scaling) compiles once per input image size; the network
  compiles once, for (batch_size, 299, 299, 3). Every call pads its last chunk to batch_size and
  drops the padded rows, so a call's rows all count once whatever their number.
  """

  def __init__(self, variables: Mapping[str, Any], batch_size: int = 50,
               dtype: Any = jnp.float32, mesh: Mesh | None = None):
    """Places the variables on every device of the mesh and jits preprocessing and network.

    Args:
      variables: load_weights' result (the `fc` layer may be present or not).
      batch_size: images per network call, a multiple of the mesh's device count.
      dtype: compute dtype of the network, float32 or bfloat16 (features are float32 either way).
      mesh: a ('data',) mesh; by default one over this process's devices (one process computes
        all of its images' features, as the CLI does).
    """
    self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.local_devices()), ('data',))
    devices = self.mesh.devices.size
    if batch_size < 1 or batch_size % devices:
      raise ValueError(f'batch_size={batch_size} must be a positive multiple of the {devices} '
                       'devices of the mesh')
    self.batch_size = batch_size
    self._rows = NamedSharding(self.mesh, P('data'))
    replicated = NamedSharding(self.mesh, P())
    params = {k: variables[k] for k in variables_io.COLLECTIONS}
    self._variables = jax.device_put(params, replicated)
    model = inception.InceptionV3(dtype=jnp.dtype(dtype), preprocessed=True)
    self._preprocess = jax.jit(inception.preprocess, in_shardings=self._rows,
                               out_shardings=self._rows)
    self._network = jax.jit(model.apply, in_shardings=(replicated, self._rows),
                            out_shardings=self._rows)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB, uint8 or float in [0, 255] -> (N, 2048) float32 pool3 features."""
    return self.submit(images)()

  def submit(self, images: np.ndarray) -> Callable[[], np.ndarray]:
    """Starts the features of `images` on the devices and returns a function that waits for them,
    so that the host can prepare the next batch meanwhile (JAX dispatches asynchronously)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected (N, H, W, 3) RGB images, got shape {images.shape}')
    outputs = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      count = len(chunk)
      if count < self.batch_size:
        pad = np.zeros((self.batch_size - count,) + chunk.shape[1:], chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      x = self._preprocess(jax.device_put(chunk, self._rows))
      outputs.append((self._network(self._variables, x), count))

    def result() -> np.ndarray:
      features = [np.asarray(f)[:count] for f, count in outputs]
      if not features:
        return np.zeros((0, inception.FEATURE_DIM), np.float32)
      return np.concatenate(features).astype(np.float32, copy=False)

    return result


# Statistics.


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Mean and sample covariance (N - 1) of the features, float64; n is None when not recorded
  (pytorch-fid's own .npz files hold mu and sigma only)."""
  mu: np.ndarray
  sigma: np.ndarray
  n: int | None


class FeatureStats:
  """Running float64 sums of features, batch by batch: mean and covariance without a feature array.

  The sums are taken about a shift (the first batch's mean), which keeps the one-pass covariance
  as accurate as np.cov's two passes: features are all positive, so their raw second moments are
  large beside their covariance.
  """

  def __init__(self, dim: int | None = None, keep_features: bool = True):
    """dim: of the features (default inception.FEATURE_DIM); keep_features: also keep the
    float32 features, which KID needs (4 * dim bytes a row)."""
    self.dim = inception.FEATURE_DIM if dim is None else dim
    self.n = 0
    self._shift = None
    self._sum = np.zeros(self.dim, np.float64)
    self._outer = np.zeros((self.dim, self.dim), np.float64)
    self._kept = [] if keep_features else None

  def update(self, features: np.ndarray) -> None:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != self.dim:
      raise ValueError(f'expected (N, {self.dim}) features, got shape {features.shape}')
    if not len(features):
      return
    f64 = features.astype(np.float64)
    if self._shift is None:
      self._shift = f64.mean(axis=0)
    centred = f64 - self._shift
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred
    self.n += len(features)
    if self._kept is not None:
      self._kept.append(features.astype(np.float32))

  @property
  def shift(self) -> np.ndarray:
    """What the sums are taken about: the first batch's mean (zeros before any feature)."""
    return np.zeros(self.dim) if self._shift is None else self._shift.copy()

  def sums_about(self, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum, sum of outer products) of the features minus `shift` (float64): with a shift common
    to several FeatureStats, these add up to those of all their features (from_sums)."""
    d = self.shift - np.asarray(shift, np.float64)
    return (self._sum + self.n * d, self._outer + np.outer(self._sum, d) + np.outer(d, self._sum)
            + self.n * np.outer(d, d))

  @classmethod
  def from_sums(cls, n: int, shift: np.ndarray, total: np.ndarray, outer: np.ndarray,
                features: np.ndarray | None = None) -> 'FeatureStats':
    """The FeatureStats of n features whose sums about `shift` are given (and, for KID, the
    features themselves)."""
    stats = cls(len(shift), keep_features=features is not None)
    stats.n, stats._shift = int(n), np.asarray(shift, np.float64)
    stats._sum, stats._outer = np.asarray(total, np.float64), np.asarray(outer, np.float64)
    if features is not None:
      stats._kept = [np.asarray(features, np.float32)]
    return stats

  def statistics(self) -> Statistics:
    if self.n < 2:
      raise ValueError(f'a covariance needs at least 2 images, got {self.n}')
    mean = self._sum / self.n
    sigma = (self._outer - self.n * np.outer(mean, mean)) / (self.n - 1)
    return Statistics(mu=self._shift + mean, sigma=sigma, n=self.n)

  def features(self) -> np.ndarray:
    """(n, dim) float32 features, in the order they came."""
    if self._kept is None:
      raise ValueError('the features were not kept (FeatureStats(keep_features=False))')
    if not self._kept:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate(self._kept)


def save_statistics(path: str, stats: Statistics) -> None:
  """Writes mu (dim,), sigma (dim, dim) float64 and n to a .npz, whole or not at all."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp_stats_', suffix=STATS_SUFFIX)
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, mu=np.asarray(stats.mu, np.float64), sigma=np.asarray(stats.sigma, np.float64),
               n=np.int64(-1 if stats.n is None else stats.n))
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def load_statistics(path: str) -> Statistics:
  """Reads save_statistics' .npz, or pytorch-fid's (mu and sigma, no n)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = {'mu', 'sigma'} - set(data.files)
      if missing:
        raise ValueError(f'it has no {sorted(missing)} (keys: {sorted(data.files)})')
      mu = np.asarray(data['mu'], np.float64)
      sigma = np.asarray(data['sigma'], np.float64)
      n = int(data['n']) if 'n' in data.files else -1
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # Truncated or not .npz.
    raise ValueError(f'{path}: not readable FID statistics: {e}') from e
  if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
    raise ValueError(f'{path}: mu {mu.shape} and sigma {sigma.shape} are not (d,) and (d, d)')
  return Statistics(mu=mu, sigma=sigma, n=None if n < 0 else n)


def cached_statistics(cache_path: str, compute: Callable[[], Statistics]) -> Statistics:
  """The statistics saved at cache_path, or compute() saved there first (e.g. the real images'
  statistics of a dataset, computed once)."""
  if os.path.exists(cache_path):
    return load_statistics(cache_path)
  stats = compute()
  save_statistics(cache_path, stats)
  logging.info('saved FID statistics of %s images to %s', stats.n, cache_path)
  return stats


# Folders of images.


def image_files(directory: str) -> list[str]:
  """The images directly in `directory` (pytorch-fid's extensions, any case), sorted."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no image folder at {directory}')
  files = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                 if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
  if not files:
    raise ValueError(f'{directory} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
  return files


def read_image(path: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB. Like PIL's convert('RGB') in pytorch-fid: grey is replicated, alpha
  dropped, and EXIF orientation ignored."""
  import cv2  # pylint: disable=g-import-not-at-top
  image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
  if image is None:
    raise ValueError(f'{path}: OpenCV cannot read this image')
  if image.dtype != np.uint8:
    raise ValueError(f'{path}: {image.dtype} pixels; FID images are 8-bit')
  return image[..., ::-1]


def _decoded(files: Sequence[str], num_workers: int, prefetch: int) -> Iterator[np.ndarray]:
  """The images of `files` in order, decoded by threads, at most `prefetch` ahead."""
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    pending = []
    for path in files:
      pending.append(pool.submit(read_image, path))
      if len(pending) >= prefetch:
        yield pending.pop(0).result()
    for future in pending:
      yield future.result()


def image_batches(files: Sequence[str], batch_size: int, num_workers: int = 4) -> Iterator:
  """(B', H, W, 3) uint8 batches of up to batch_size images that share a size: a batch ends
  early where the size changes, so mixed sizes work (each new size compiles the resize once)."""
  batch = []
  for image in _decoded(files, num_workers, prefetch=2 * batch_size):
    if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
      yield np.stack(batch)
      batch = []
    batch.append(image)
  if batch:
    yield np.stack(batch)


def feature_stats(extractor: FeatureExtractor, batches: Iterable[np.ndarray],
                  keep_features: bool = True) -> FeatureStats:
  """FeatureStats of the features of every image of `batches`.

  One batch is in flight on the devices while the host sums the previous one's features.
  """
  stats = FeatureStats(keep_features=keep_features)
  pending = None
  for batch in batches:
    started = extractor.submit(batch)
    if pending is not None:
      stats.update(pending())
    pending = started
  if pending is not None:
    stats.update(pending())
  return stats


def folder_stats(extractor: FeatureExtractor, directory: str, keep_features: bool = True,
                 num_workers: int = 4) -> FeatureStats:
  files = image_files(directory)
  stats = feature_stats(extractor, image_batches(files, extractor.batch_size, num_workers),
                        keep_features)
  logging.info('features of %d images in %s', stats.n, directory)
  return stats


# Command line.


def check_inputs(paths: Sequence[str], save_stats: str | None = None) -> None:
  """Raises ValueError or FileNotFoundError, naming the input, unless the command line's
  positional arguments can be evaluated: two inputs (image folders or .npz statistics), or one
  image folder with save_stats."""
  if save_stats is not None:
    if len(paths) != 1 or paths[0].endswith(STATS_SUFFIX):
      raise ValueError(f'--save-stats takes one image folder, got {list(paths)}')
  elif len(paths) != 2:
    raise ValueError(f'give two inputs (image folders or .npz statistics), got {list(paths)}')
  for path in paths:
    if path.endswith(STATS_SUFFIX):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'no statistics file {path}')
    else:
      image_files(path)


def evaluate(paths: Sequence[str], extractor: FeatureExtractor, save_stats: str | None = None,
             kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE,
             seed: int = 0, num_workers: int = 4) -> dict[str, Any]:
  """What the command line computes: FID and KID of two inputs, or one folder's statistics.

  Args:
    paths: two inputs (image folders, or .npz statistics for FID only) or, with save_stats, one
      folder (check_inputs).
    extractor: a FeatureExtractor of the FID Inception.

  Returns:
    {'fid', 'kid', 'kid_std' (x KID_SCALE; None when an input is .npz), 'n': [n1, n2]} or,
    with save_stats, {'n': [n]} after writing the folder's statistics there.
  """
  check_inputs(paths, save_stats)
  if save_stats is not None:
    stats = folder_stats(extractor, paths[0], keep_features=False,
                         num_workers=num_workers).statistics()
    save_statistics(save_stats, stats)
    return {'n': [stats.n]}
  with_kid = not any(p.endswith(STATS_SUFFIX) for p in paths)
  statistics, features = [], []
  for path in paths:
    if path.endswith(STATS_SUFFIX):
      statistics.append(load_statistics(path))
      continue
    stats = folder_stats(extractor, path, keep_features=with_kid, num_workers=num_workers)
    statistics.append(stats.statistics())
    if with_kid:
      features.append(stats.features())
  (s1, s2), result = statistics, {'kid': None, 'kid_std': None}
  result['fid'] = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
  result['n'] = [s1.n, s2.n]
  if with_kid:
    kid, kid_std = kernel_inception_distance(*features, num_subsets=kid_subsets,
                                             max_subset_size=kid_subset_size, seed=seed)
    result['kid'], result['kid_std'] = KID_SCALE * kid, KID_SCALE * kid_std
  return result


def main(argv):
  args = flags.FLAGS
  paths, save_stats = argv[1:], args['save-stats'].value
  # An error is one line (cli.run).
  check_inputs(paths, save_stats)  # Before the weights load and the network compiles.
  extractor = FeatureExtractor(load_weights(args.weights), batch_size=args.batch_size,
                               dtype=jnp.dtype(args.dtype))
  result = evaluate(paths, extractor, save_stats, args.kid_subsets, args.kid_subset_size,
                    args.seed, args.num_workers)
  if save_stats is not None:
    print(f'wrote the statistics of {result["n"][0]} images to {save_stats}')
    return
  print(f'FID: {result["fid"]:.4f}')
  if result['kid'] is None:
    print('KID: not computed (it needs the images: an input is .npz statistics)')
  else:
    size = min(args.kid_subset_size, *result['n'])
    print(f'KID x {KID_SCALE:g}: {result["kid"]:.4f} +- {result["kid_std"]:.4f} '
          f'({args.kid_subsets} subsets of {size} images)')


def _define_flags():
  """CLI flags, defined only when run as a script so that importing this module defines none."""
  flags.DEFINE_string('weights', None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or "
                      'the directory asymfusion_jax.convert --inception wrote from it.')
  flags.DEFINE_string('save-stats', None, 'Write the statistics (mu, sigma, n) of the one image '
                      'folder given to this .npz instead of comparing two inputs.')
  flags.DEFINE_integer('batch_size', 50, 'Images per network call (a multiple of the devices).')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                    'Compute dtype of the network; float32 gives pytorch-fid\'s features.')
  flags.DEFINE_integer('kid_subsets', KID_SUBSETS, 'KID: number of random subsets.')
  flags.DEFINE_integer('kid_subset_size', KID_SUBSET_SIZE, 'KID: images per subset (at most).')
  flags.DEFINE_integer('seed', 0, 'KID: seed of the subsets.')
  flags.DEFINE_integer('num_workers', 4, 'Threads decoding images.')
  flags.mark_flags_as_required(['weights'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main, 'asymfusion_jax.fid')
