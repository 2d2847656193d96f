"""channel_shuffle and pixel_shift against an independent loop-based NumPy reference
(docs/method.md section 3)."""

import jax
import numpy as np
import pytest

from asymfusion_jax import fusion

OFFSETS = [(-1, 0), (0, -1), (0, 1), (1, 0)]


def numpy_channel_shuffle(x):
  m_count, *_, c = x.shape
  s = 4 * (c // 5)
  out = x.copy()
  for m in range(m_count):
    out[m, ..., s:] = x[(m + 1) % m_count, ..., s:]
  return out


def numpy_pixel_shift(x, reverse=False):
  m_count, b_count, h, w, c = x.shape
  g = c // 5
  offsets = OFFSETS[::-1] if reverse else OFFSETS
  out = np.zeros_like(x)
  for m in range(m_count):
    for b in range(b_count):
      for k, (dh, dw) in enumerate(offsets):
        for ch in range(k * g, (k + 1) * g):
          for i in range(h):
            for j in range(w):
              if 0 <= i + dh < h and 0 <= j + dw < w:
                out[m, b, i, j, ch] = x[m, b, i + dh, j + dw, ch]
  return out


@pytest.mark.parametrize('num_modalities', [1, 2, 3])
@pytest.mark.parametrize('channels', [13, 7, 10])
def test_channel_shuffle_matches_numpy(num_modalities, channels):
  x = np.random.default_rng(0).normal(size=(num_modalities, 2, 5, 7, channels)).astype(np.float32)
  np.testing.assert_array_equal(fusion.channel_shuffle(x), numpy_channel_shuffle(x))


@pytest.mark.parametrize('num_modalities', [1, 2, 3])
@pytest.mark.parametrize('channels', [13, 7, 4])
@pytest.mark.parametrize('reverse', [False, True])
def test_pixel_shift_matches_numpy(num_modalities, channels, reverse):
  x = np.random.default_rng(1).normal(size=(num_modalities, 2, 5, 7, channels)).astype(np.float32)
  np.testing.assert_array_equal(fusion.pixel_shift(x, reverse=reverse),
                                numpy_pixel_shift(x, reverse))


def test_two_modality_shuffle_swaps_last_channels():
  x = np.random.default_rng(2).normal(size=(2, 1, 3, 3, 11)).astype(np.float32)
  y = np.asarray(fusion.channel_shuffle(x))
  np.testing.assert_array_equal(y[0, ..., 8:], x[1, ..., 8:])
  np.testing.assert_array_equal(y[1, ..., 8:], x[0, ..., 8:])
  np.testing.assert_array_equal(y[..., :8], x[..., :8])


def test_first_offset_moves_content_one_row_down():
  x = np.zeros((1, 1, 5, 5, 5), np.float32)
  x[0, 0, 2, 2, 0] = 1.0  # Group 0 (channel 0) has offset (-1, 0).
  y = np.asarray(fusion.pixel_shift(x))
  assert y[0, 0, 3, 2, 0] == 1.0 and y.sum() == 1.0


def test_fusion_ops_are_jit_compatible_and_trace_once():
  x = np.ones((3, 2, 5, 7, 13), np.float32)
  shift = jax.jit(fusion.pixel_shift, static_argnames='reverse')
  np.testing.assert_array_equal(shift(x), fusion.pixel_shift(x))
  np.testing.assert_array_equal(jax.jit(fusion.channel_shuffle)(x), fusion.channel_shuffle(x))


@pytest.mark.parametrize('reverse', [False, True])
def test_pixel_shift_gradient_is_the_reverse_shift(reverse):
  """The custom VJP equals autodiff of the NumPy-checked forward: <shift(x), y> = <x, shift*(y)>."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 1, 4, 6, 13)).astype(np.float32)
  y = rng.normal(size=x.shape).astype(np.float32)
  grad = jax.grad(lambda x: (fusion.pixel_shift(x, reverse=reverse) * y).sum())(x)
  expected = np.zeros_like(x)
  for idx in np.ndindex(x.shape):  # d/dx[idx] of sum(shift(x) * y), by finite basis vectors.
    e = np.zeros_like(x)
    e[idx] = 1.0
    expected[idx] = (numpy_pixel_shift(e, reverse) * y).sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
