"""resize.resize against the libraries the reference calls: PyTorch F.interpolate and OpenCV."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asymfusion_jax import resize

# (input size, output size): odd, even, non-integer ratios, 1-pixel edge cases.
UP = [((5, 7), (13, 11)), ((7, 9), (7, 20)), ((1, 5), (3, 9)), ((8, 6), (32, 24))]
DOWN = [((13, 11), (5, 7)), ((9, 4), (2, 1)), ((16, 16), (8, 8))]
# Large outputs at non-integer ratios (for align_corners, 4x is 29/119). resize.py computes
# source coordinates in float32 as PyTorch and OpenCV do, but the libraries' vectorised kernels
# still round a few coordinates differently (0.3% of pixels, < 1e-4 on unit-variance values; with
# float64 coordinates it was 5e-4): a looser tolerance here. LARGE[::2] are the upsampling cases.
LARGE = [((30, 40), (120, 160)), ((120, 160), (30, 40)), ((31, 41), (121, 161)),
         ((121, 161), (31, 41)), ((121, 161), (481, 641))]


def _images(in_size, channels, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(2, *in_size, channels)).astype(np.float32)


def _torch_interpolate(x, out_size, align_corners):
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  y = F.interpolate(t, size=out_size, mode='bilinear', align_corners=align_corners)
  return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize('in_size,out_size,atol',
                         [c + (1e-5,) for c in UP + DOWN] + [c + (1e-4,) for c in LARGE])
@pytest.mark.parametrize('align_corners', [False, True])
def test_bilinear_matches_torch(in_size, out_size, atol, align_corners):
  x = _images(in_size, channels=3)
  method = 'bilinear_align_corners' if align_corners else 'bilinear'
  got = np.asarray(resize.resize(x, out_size, method))
  np.testing.assert_allclose(got, _torch_interpolate(x, out_size, align_corners), atol=atol)


@pytest.mark.parametrize('in_size,out_size,atol',
                         [c + (1e-5,) for c in UP + DOWN[:1]] + [c + (1e-4,) for c in LARGE[::2]])
@pytest.mark.parametrize('channels', [1, 5])
def test_cubic_matches_opencv(in_size, out_size, atol, channels):
  x = _images(in_size, channels)
  want = np.stack([
      np.stack([cv2.resize(x[b, ..., c], out_size[::-1], interpolation=cv2.INTER_CUBIC)
                for c in range(channels)], axis=-1)
      for b in range(x.shape[0])])
  got = np.asarray(resize.resize(x, out_size, 'cubic_opencv'))
  np.testing.assert_allclose(got, want, atol=atol)


def test_leading_axes_and_identity():
  """Any leading axes are carried along, and a same-size resize is the identity."""
  x = _images((5, 7), channels=2).reshape(1, 2, 5, 7, 2)
  x = np.concatenate([x, 2 * x], axis=0)  # (2, 2, 5, 7, 2): outputs, batch, h, w, K
  got = np.asarray(resize.resize(x, (9, 13), 'bilinear'))
  assert got.shape == (2, 2, 9, 13, 2)
  np.testing.assert_allclose(got[1], 2 * got[0], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(resize.resize(x, (5, 7), 'cubic_opencv')), x)


def test_unknown_method():
  with pytest.raises(ValueError, match='unknown resize method'):
    resize.resize(np.zeros((1, 2, 2, 1), np.float32), (3, 3), 'nearest')
