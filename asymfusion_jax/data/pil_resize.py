"""PIL's antialiased bilinear resize of 8-bit images (Image.resize with Image.BILINEAR), in NumPy.

The translation recipe resizes with PIL, whose BILINEAR filter widens with the scale when it
shrinks (a triangle filter covering every source pixel, i.e. antialiased), unlike OpenCV's or
PyTorch's bilinear. This reproduces PIL's integer arithmetic exactly, so images come out equal
byte for byte without making Pillow a dependency:

- per axis and output pixel, the source pixels within `support = max(in/out, 1)` of the centre
  `(i + 0.5) * in / out` get triangle weights, normalised to sum 1 in float64;
- weights become fixed point with 22 fractional bits, rounded half away from zero;
- a horizontal pass (skipped when the width is unchanged), then a vertical pass (skipped when
  the height is unchanged), each output being `(2**21 + sum(pixel * weight)) >> 22` clipped to
  [0, 255], so the intermediate image is 8-bit as in PIL.

The horizontal-first order is the one of every Pillow release up to 12, which the reference
used. Pillow 13 (python-pillow/Pillow#9549) starts with the vertical pass for some shapes whose
height shrinks much more than their width, which moves some pixels by one level; square images
resized to squares, as in the translation recipe, come out the same with both.
"""

import functools
import math

import numpy as np

_PRECISION_BITS = 32 - 8 - 2


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, fixed-point weights), each (out_size, k): the taps of every output pixel.

  Taps beyond a pixel's window have weight 0 and a valid (clamped) index.
  """
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = filter_scale  # The bilinear (triangle) filter has support 1.
  k = int(math.ceil(support)) * 2 + 1
  indices = np.zeros((out_size, k), np.int64)
  weights = np.zeros((out_size, k), np.int32)
  for i in range(out_size):
    centre = (i + 0.5) * scale
    lo = max(int(centre - support + 0.5), 0)
    hi = min(int(centre + support + 0.5), in_size)
    x = np.arange(lo, hi)
    w = np.maximum(1.0 - np.abs((x - centre + 0.5) * (1.0 / filter_scale)), 0.0)
    total = 0.0
    for value in w:  # In order, as PIL sums (NumPy's pairwise sum can differ in the last bit).
      total += float(value)
    if total != 0.0:
      w = w / total
    fixed = w * (1 << _PRECISION_BITS)
    fixed = np.where(fixed < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5))
    indices[i, :hi - lo] = x
    indices[i, hi - lo:] = hi - 1 if hi > lo else 0
    weights[i, :hi - lo] = fixed.astype(np.int32)
  return indices, weights


def _resize_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
  indices, weights = _taps(image.shape[axis], out_size)
  # int32 as in PIL: 255 * 2**22 plus the rounding term stays below 2**31.
  pixels = image.astype(np.int32)
  acc = np.full(image.shape[:axis] + (out_size,) + image.shape[axis + 1:],
                1 << (_PRECISION_BITS - 1), np.int32)
  shape = [1] * image.ndim
  shape[axis] = out_size
  for t in range(indices.shape[1]):
    acc += np.take(pixels, indices[:, t], axis=axis) * weights[:, t].reshape(shape)
  return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes uint8 (H, W) or (H, W, C) to `size` = (height, width) exactly as PIL's BILINEAR."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f'resize_bilinear takes uint8 (H, W) or (H, W, C) images, got '
                     f'{image.dtype} {image.shape}.')
  out_h, out_w = size
  if out_h < 1 or out_w < 1:
    raise ValueError(f'Cannot resize to {size}.')
  if out_w != image.shape[1]:
    image = _resize_axis(image, out_w, 1)
  if out_h != image.shape[0]:
    image = _resize_axis(image, out_h, 0)
  return np.ascontiguousarray(image)
