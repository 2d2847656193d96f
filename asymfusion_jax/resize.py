"""Separable image resizing with the exact coordinate conventions the reference uses.

jax.image.resize works with half-pixel centres and (when shrinking) antialiasing. The reference
needs three other kernels, each written here as a small number of static gather taps per axis:

- bilinear with align_corners=True (PyTorch's nn.Upsample in the RefineNet decoder),
- bilinear with align_corners=False (PyTorch's F.interpolate in the loss),
- bicubic with a = -0.75 and replicated borders (OpenCV's INTER_CUBIC in evaluation).

Indices and weights are computed in NumPy from the static shapes, so under jit they are constants.
"""

import jax
import jax.numpy as jnp
import numpy as np


def linear_taps(in_size: int, out_size: int, align_corners: bool):
  """[(indices, weights)] of the two taps of linear interpolation, each shaped (out_size,).

  Source coordinates are computed in float32, as PyTorch does, so that results match it bit for
  bit in the coordinates (float64 would differ by up to ~1e-4 at large non-integer ratios).
  """
  i = np.arange(out_size, dtype=np.float32)
  if align_corners:
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
    src = scale * i
  else:
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (i + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = src - i0.astype(np.float32)
  return [(i0, 1.0 - lam), (i1, lam)]


def cubic_taps(in_size: int, out_size: int, a: float = -0.75):
  """[(indices, weights)] of the four taps of OpenCV's INTER_CUBIC (half-pixel, border replicate)."""
  i = np.arange(out_size, dtype=np.float64)
  # OpenCV computes the coordinate in double and stores it as float before splitting it.
  src = ((i + 0.5) * (in_size / out_size) - 0.5).astype(np.float32)
  base = np.floor(src).astype(np.int64)
  t = (src - base.astype(np.float32)).astype(np.float32)

  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1

  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

  weights = [far(1 + t), near(t), near(1 - t), far(2 - t)]
  return [(np.clip(base + k - 1, 0, in_size - 1), w) for k, w in zip(range(4), weights)]


def _resize_axis(x: jax.Array, taps, axis: int) -> jax.Array:
  shape = [1] * x.ndim
  shape[axis] = -1
  out = None
  for idx, w in taps:
    term = jnp.take(x, jnp.asarray(idx), axis=axis) * jnp.asarray(w.reshape(shape), x.dtype)
    out = term if out is None else out + term
  return out


def resize(x: jax.Array, size: tuple[int, int], method: str) -> jax.Array:
  """Resizes the spatial axes (-3, -2) of an NHWC array with any number of leading axes.

  method: 'bilinear_align_corners', 'bilinear' (half-pixel, no antialiasing) or 'cubic_opencv'.
  """
  height, width = x.shape[-3], x.shape[-2]
  out_h, out_w = size
  if method == 'bilinear_align_corners':
    taps_h, taps_w = linear_taps(height, out_h, True), linear_taps(width, out_w, True)
  elif method == 'bilinear':
    taps_h, taps_w = linear_taps(height, out_h, False), linear_taps(width, out_w, False)
  elif method == 'cubic_opencv':
    taps_h, taps_w = cubic_taps(height, out_h), cubic_taps(width, out_w)
  else:
    raise ValueError(f'unknown resize method {method!r}; expected bilinear_align_corners, '
                     'bilinear or cubic_opencv')
  if (height, width) != (out_h, out_w):
    x = _resize_axis(x, taps_h, x.ndim - 3)
    x = _resize_axis(x, taps_w, x.ndim - 2)
  return x
