"""FID Inception (models/inception.py), its conversion, and FID/KID (asymfusion_jax.fid).

The reference is pytorch-fid itself: its InceptionV3 built with a seeded random state_dict (its
weight download patched out), saved as a .pth that our torch-free reader converts.
"""

import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import cv2
import jax
import numpy as np
import pytest
from pytorch_fid import fid_score
from pytorch_fid import inception as pytorch_fid_inception
import torch
import torchvision

from asymfusion_jax import convert
from asymfusion_jax import fid
from asymfusion_jax import fid_hosts
from tests import tiny

torch.set_num_threads(2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Image sizes: upsampled, exact, and downsampled without antialiasing (one axis each way).
SIZES = ((64, 80), (64, 80), (299, 299), (331, 256))


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m module args` in a process where torch, TensorFlow and SciPy cannot be imported:
  FID needs none of them at run time."""
  blocked = ("import runpy, sys; sys.modules.update(torch=None, tensorflow=None, scipy=None); "
             f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
  return subprocess.run([sys.executable, '-c', blocked, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**os.environ, 'PYTHONPATH': REPO,
                                                     'JAX_PLATFORMS': 'cpu'}, check=False)


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
  """Every key of the FID Inception (torchvision's Inception3, 1008 classes, no aux head: the FID
  blocks subclass torchvision's with the same parameters), seeded random values. He-scaled
  kernels and BatchNorm statistics near 1 keep activations of order 1 through the 94 layers."""
  model = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                          init_weights=False)
  generator = torch.Generator().manual_seed(seed)
  state_dict = {}
  for key, value in model.state_dict().items():
    if key.endswith('num_batches_tracked'):
      state_dict[key] = torch.tensor(seed + 7)
    elif key.endswith('conv.weight'):
      fan_in = value[0].numel()
      state_dict[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    elif key.endswith(('running_var', 'bn.weight')):  # Positive: a variance and a scale.
      state_dict[key] = torch.rand(value.shape, generator=generator) + 0.5
    elif key == 'fc.weight':
      state_dict[key] = torch.randn(value.shape, generator=generator) * 0.02
    else:  # BatchNorm bias and running_mean, fc.bias.
      state_dict[key] = torch.randn(value.shape, generator=generator) * 0.1
  return state_dict


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(the .pth path, pytorch-fid's InceptionV3 with those weights, the state_dict)."""
  state_dict = random_state_dict()
  path = str(tmp_path_factory.mktemp('inception') / 'random_inception.pth')
  torch.save(state_dict, path)
  with mock.patch.object(pytorch_fid_inception, 'load_state_dict_from_url',
                         lambda *unused_args, **unused_kwargs: state_dict):
    model = pytorch_fid_inception.InceptionV3([3]).eval()
  return path, model, state_dict


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  # Smooth random images (noise at a few scales), closer to photographs than white noise.
  out = []
  for h, w in SIZES:
    coarse = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    out.append(np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
  return out


@pytest.fixture(scope='module')
def reference_features(reference, images):
  """pytorch-fid's pool3 features of `images`, (N, 2048), as its get_activations computes them."""
  _, model, _ = reference
  with torch.no_grad():
    return np.concatenate([
        model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0][:, :, 0, 0].numpy()
        for image in images])


@pytest.fixture(scope='module')
def converted(reference, tmp_path_factory):
  """The directory the convert CLI writes from the .pth (the documented command)."""
  pth, _, _ = reference
  out = str(tmp_path_factory.mktemp('converted') / 'fid_inception')
  run = run_module('asymfusion_jax.convert', f'--inception={pth}', f'--out={out}')
  assert run.returncode == 0, run.stderr[-3000:]
  return out


@pytest.fixture(scope='module')
def extractor(converted):
  """fp32, batch 2: one compilation of the network serves the whole module."""
  return fid.FeatureExtractor(fid.load_weights(converted), batch_size=2)


@pytest.fixture(scope='module')
def folder(images, tmp_path_factory):
  """The images as PNG files, in SIZES order (same-size images are neighbours)."""
  directory = tmp_path_factory.mktemp('folder_a')
  for i, image in enumerate(images):
    cv2.imwrite(str(directory / f'img{i}.png'), image[..., ::-1])  # OpenCV writes BGR.
  return str(directory)


def relative_error(actual, expected):
  return np.abs(actual - expected).max() / np.abs(expected).max()


# The network and its weights.


def test_features_match_pytorch_fid(extractor, images, reference_features):
  ours = np.concatenate([extractor(np.stack(images[:2]))] +
                        [extractor(image[None]) for image in images[2:]])
  assert ours.shape == (len(SIZES), 2048) and ours.dtype == np.float32
  assert relative_error(ours, reference_features) < 1e-4
  # Float input in [0, 255] is the same as uint8.
  np.testing.assert_array_equal(extractor(images[2][None].astype(np.float32)), ours[2:3])


def test_conversion_round_trip_and_pth_equals_directory(reference, converted):
  pth, _, state_dict = reference
  from_pth = fid.load_weights(pth)
  from_dir = fid.load_weights(converted)
  jax.tree.map(np.testing.assert_array_equal, from_pth, jax.tree.map(np.asarray, from_dir))
  back = convert.inception_to_torch(from_pth)
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    if not key.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_wrong_or_truncated_weights_are_named(reference, tmp_path):
  pth, _, state_dict = reference
  truncated = str(tmp_path / 'truncated.pth')
  with open(pth, 'rb') as f:
    data = f.read()
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match='truncated.pth'):
    fid.load_weights(truncated)

  wrong = str(tmp_path / 'resnet.pth')
  partial = {k: v for k, v in state_dict.items() if not k.startswith('Mixed_7c.')}
  partial['conv1.weight'] = torch.zeros(64, 3, 7, 7)
  torch.save(partial, wrong)
  with pytest.raises(ValueError, match=r'resnet.pth(.|\n)*missing keys(.|\n)*Mixed_7c'
                                       r'(.|\n)*unexpected keys(.|\n)*conv1.weight'):
    fid.load_weights(wrong)

  not_a_checkpoint = tmp_path / 'empty_dir'
  not_a_checkpoint.mkdir()
  with pytest.raises(ValueError, match='empty_dir is not a converted FID Inception'):
    fid.load_weights(str(not_a_checkpoint))
  with pytest.raises(FileNotFoundError, match='nothing_here.pth'):
    fid.load_weights(str(tmp_path / 'nothing_here.pth'))


# Statistics and distances.


def test_streaming_statistics_equal_np_cov():
  rng = np.random.default_rng(1)
  # Positive, far-from-zero features, as pool3 features are: the hard case of a one-pass sum.
  features = (100 + rng.normal(size=(257, 16)) @ rng.normal(size=(16, 16))).astype(np.float32)
  stats = fid.FeatureStats(dim=16)
  for start, stop in ((0, 5), (5, 5), (5, 105), (105, 257)):
    stats.update(features[start:stop])
  result = stats.statistics()
  assert result.n == 257
  np.testing.assert_allclose(result.mu, features.astype(np.float64).mean(0), rtol=1e-13)
  np.testing.assert_allclose(result.sigma, np.cov(features.astype(np.float64), rowvar=False),
                             rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(stats.features(), features)


def test_parts_of_the_features_combine_to_the_whole():
  """What the processes of a multi-host evaluation combine (fid_hosts): each part's sums, moved
  to a common shift, add up to those of all the features; gathered features come back in key
  order; KID subsets computed by parts are the whole's."""
  rng = np.random.default_rng(6)
  features = (100 + rng.normal(size=(90, 16)) @ rng.normal(size=(16, 16))).astype(np.float32)
  whole = fid.FeatureStats(dim=16)
  whole.update(features)
  parts = []
  for start, stop in ((0, 7), (7, 50), (50, 90)):
    part = fid.FeatureStats(dim=16)
    part.update(features[stop - 1:stop])  # Each its own shift.
    part.update(features[start:stop - 1])
    parts.append(part)
  shift = sum(p.n * p.shift for p in parts) / 90
  sums = [p.sums_about(shift) for p in parts]
  merged = fid.FeatureStats.from_sums(90, shift, sum(t for t, _ in sums),
                                      sum(o for _, o in sums)).statistics()
  np.testing.assert_allclose(merged.mu, whole.statistics().mu, rtol=1e-13)
  np.testing.assert_allclose(merged.sigma, np.cov(features.astype(np.float64), rowvar=False),
                             rtol=1e-10, atol=1e-12)
  # One process: combine() is the identity, the features sorted by their keys.
  order = rng.permutation(90)
  shuffled = fid.FeatureStats(dim=16)
  shuffled.update(features[order])
  combined = fid_hosts.combine(shuffled, keys=order)
  np.testing.assert_array_equal(combined.features(), features)
  np.testing.assert_allclose(combined.statistics().sigma, whole.statistics().sigma, rtol=1e-10,
                             atol=1e-12)
  x, y = features[:40], features[40:]
  whole_kid = fid.kid_subset_values(x, y, 5, 20, seed=1)
  even, odd = (fid.kid_subset_values(x, y, 5, 20, seed=1, computed=range(first, 5, 2))
               for first in (0, 1))
  assert np.isnan(even[1]) and np.isnan(odd[0])
  np.testing.assert_array_equal(np.where(np.isnan(even), odd, even), whole_kid)
  assert fid_hosts.kernel_inception_distance(x, y, 5, 20, seed=1) == (
      fid.kernel_inception_distance(x, y, 5, 20, seed=1))


@pytest.mark.filterwarnings('ignore:The `disp` argument:DeprecationWarning')  # pytorch-fid's.
def test_frechet_distance_matches_pytorch_fid_and_closed_forms():
  rng = np.random.default_rng(2)
  d = 32
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  x = rng.normal(size=(400, d)) @ rng.normal(size=(d, d))
  y = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) + 0.5
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  expected = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-9)

  # Closed forms: Tr (A A^-1)^(1/2) = d and Tr (A (cA))^(1/2) = sqrt(c) Tr A, A not diagonal.
  a = s1 / np.trace(s1) * d
  shift = np.sum((mu1 - mu2) ** 2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, a, mu2, np.linalg.inv(a)),
                             shift + np.trace(a) + np.trace(np.linalg.inv(a)) - 2 * d, rtol=1e-9)
  np.testing.assert_allclose(fid.frechet_distance(mu1, a, mu2, 4 * a),
                             shift + (1 + 4 - 2 * 2) * np.trace(a), rtol=1e-9)
  # Singular covariances (fewer samples than dimensions), as 1000 images give for 2048 features.
  few = np.cov(x[:10], rowvar=False)
  assert abs(fid.frechet_distance(mu1, few, mu1, few)) < 1e-12 * np.trace(few)


def test_known_feature_shift_gives_its_squared_norm():
  rng = np.random.default_rng(3)
  features = rng.gamma(2.0, size=(50, 64)).astype(np.float32)
  delta = rng.normal(0, 0.1, size=64).astype(np.float32)
  a, b = fid.FeatureStats(dim=64), fid.FeatureStats(dim=64)
  a.update(features)
  b.update(features + delta)
  sa, sb = a.statistics(), b.statistics()
  shift = (features + delta).astype(np.float64).mean(0) - features.astype(np.float64).mean(0)
  np.testing.assert_allclose(fid.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma),
                             shift @ shift, rtol=1e-6)


def direct_mmd2(x, y):
  """The formula term by term: sums over i != j of Kxx and Kyy, all i, j of Kxy."""
  m, d = x.shape
  k = lambda u, v: (u @ v / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return (xx + yy) / (m * (m - 1)) - 2 * xy / m**2


def test_kid_equals_the_formula():
  rng = np.random.default_rng(4)
  x = rng.gamma(2.0, size=(30, 6))
  y = rng.gamma(2.2, size=(25, 6))
  kid, kid_std = fid.kernel_inception_distance(x, y, num_subsets=4, max_subset_size=12, seed=5)
  draw = np.random.default_rng(5)
  values = []
  for _ in range(4):
    xs = x[draw.choice(30, 12, replace=False)]
    values.append(direct_mmd2(xs, y[draw.choice(25, 12, replace=False)]))
  np.testing.assert_allclose([kid, kid_std], [np.mean(values), np.std(values)], rtol=1e-10)
  # m = min(max_subset_size, N): with N = 25 < 1000 every subset of y is all of y.
  whole, _ = fid.kernel_inception_distance(x[:25], y, num_subsets=1)
  np.testing.assert_allclose(whole, direct_mmd2(x[:25], y), rtol=1e-10)


def test_statistics_files(tmp_path):
  stats = fid.Statistics(mu=np.arange(3.0), sigma=np.eye(3), n=7)
  path = str(tmp_path / 'stats.npz')
  fid.save_statistics(path, stats)
  loaded = fid.load_statistics(path)
  assert loaded.n == 7
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  # pytorch-fid's own --save-stats files have no n.
  np.savez(tmp_path / 'pytorch_fid.npz', mu=stats.mu, sigma=stats.sigma)
  assert fid.load_statistics(str(tmp_path / 'pytorch_fid.npz')).n is None
  with open(path, 'rb') as f:
    data = f.read()
  (tmp_path / 'cut.npz').write_bytes(data[:100])
  with pytest.raises(ValueError, match='cut.npz'):
    fid.load_statistics(str(tmp_path / 'cut.npz'))

  calls = []
  compute = lambda: calls.append(1) or stats
  cache = str(tmp_path / 'cache' / 'real.npz')
  for _ in range(2):
    np.testing.assert_array_equal(fid.cached_statistics(cache, compute).mu, stats.mu)
  assert len(calls) == 1


# Folders and the command line.


def test_folders_and_command_line(converted, extractor, folder, reference_features, tmp_path):
  # The command line writes a folder's statistics (PNGs of mixed sizes): pytorch-fid's features.
  stats_path = str(tmp_path / 'a.npz')
  run = run_module('asymfusion_jax.fid', f'--weights={converted}', f'--save-stats={stats_path}',
                   '--batch_size=2', folder)
  assert run.returncode == 0, run.stderr[-3000:]
  assert f'wrote the statistics of {len(SIZES)} images to {stats_path}' in run.stdout
  stats = fid.load_statistics(stats_path)
  assert stats.n == len(SIZES) and stats.sigma.shape == (2048, 2048)
  assert relative_error(stats.mu, reference_features.mean(0)) < 1e-4
  np.testing.assert_allclose(stats.sigma, np.cov(reference_features, rowvar=False),
                             atol=1e-4 * np.abs(stats.sigma).max())

  # Identical folders: FID ~ 0; KID is the formula on their features.
  copy = str(tmp_path / 'b')
  shutil.copytree(folder, copy)
  result = fid.evaluate([folder, copy], extractor, kid_subsets=3)
  assert result['n'] == [len(SIZES)] * 2
  assert abs(result['fid']) < 1e-9 * np.trace(stats.sigma)
  kid, _ = fid.kernel_inception_distance(reference_features, reference_features, num_subsets=3)
  np.testing.assert_allclose(result['kid'], 100 * kid, rtol=1e-4)
  # .npz statistics in place of a folder: FID only, of the same statistics (the distance itself,
  # two 2048x2048 eigensolvers, is tested above).
  compared = []
  with mock.patch.object(fid, 'frechet_distance', lambda *args: compared.append(args) or 0.0):
    result = fid.evaluate([stats_path, copy], extractor)
  assert result['kid'] is None and result['n'] == [len(SIZES)] * 2
  (mu1, sigma1, mu2, sigma2), = compared
  np.testing.assert_array_equal(mu1, stats.mu)
  np.testing.assert_array_equal(sigma1, stats.sigma)
  np.testing.assert_allclose(mu2, stats.mu, rtol=1e-6, atol=1e-7 * np.abs(stats.mu).max())
  np.testing.assert_allclose(sigma2, stats.sigma, atol=1e-6 * np.abs(stats.sigma).max())

  with pytest.raises(ValueError, match='one image folder'):
    fid.evaluate([folder, copy], extractor, save_stats=stats_path)
  with pytest.raises(FileNotFoundError, match='no_such_dir'):
    fid.evaluate([folder, str(tmp_path / 'no_such_dir')], extractor)
  # The command line names what is wrong before loading anything.
  run = run_module('asymfusion_jax.fid', f'--weights={tmp_path}/missing.pth', folder, stats_path)
  assert run.returncode != 0 and 'missing.pth' in run.stderr


def test_benchmark_times_the_extractor(extractor, images):
  """experiments/benchmark_fid.py as a user runs it, on random weights (the `extractor`
  fixture compiles first: the network takes its weights as arguments, so the shared compilation
  cache may serve the script the same program)."""
  del extractor, images
  proc = tiny.run_script('experiments/benchmark_fid.py', '--batch_size=2', '--image_size=64',
                         '--steps=1', '--warmup=0')
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['batch_size'] == 2 and result['image_size'] == [64, 64]
  assert result['weights'] == 'random'
  for key in ('first_call_s', 'step_ms', 'images_per_s', 'stats_ms_per_batch'):
    assert np.isfinite(result[key]) and result[key] > 0, key
