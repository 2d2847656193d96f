"""Running a model on images of any size: padding, sliding windows, scales and mirroring.

Every forward pass (a window) is padded at the bottom and right, with each modality's pad value,
to what the model needs (a multiple of `Geometry.multiple`, or exactly `Geometry.fixed` for an
exported artifact), run, its outputs brought to the padded size (`Geometry.resize`) and cropped
back to the window. One program is compiled per padded window shape and reused for every image
that needs it.

Without tiling the window is the whole image. With tile (h, w) the image is covered by windows of
min(h, H) x min(w, W) at offsets 0, s, 2s, ... and a last one flush with the far edge (s the
stride, default two thirds of the tile); the outputs of overlapping windows are averaged in
output space (logits, or images for translation). Each scale s resizes the image to
((H - 1) s + 1, (W - 1) s + 1) with align_corners bilinear interpolation, as Cityscapes
evaluation does, runs it (tiled or not), mirrored too with flip, and resizes the outputs back to
H x W the same way; the task's `combine` merges the passes.
"""

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import resize

ALIGN_CORNERS = 'bilinear_align_corners'


@dataclasses.dataclass(frozen=True)
class Geometry:
  """What a model's forward pass needs of its input's height and width.

  Attributes:
    multiple: both are padded up to a multiple of it.
    fixed: or padded to exactly this (height, width) (an artifact exported at that size).
    resize: the resize.resize method that brings outputs smaller than the input up to it
      (RefineNet's stride-4 logits), or None when outputs are at the input size.
  """
  multiple: int = 1
  fixed: tuple[int, int] | None = None
  resize: str | None = None

  def padded(self, height: int, width: int) -> tuple[int, int]:
    if self.fixed is not None:
      if height > self.fixed[0] or width > self.fixed[1]:
        raise ValueError(f'a {height}x{width} window does not fit the artifact\'s fixed input '
                         f'size {self.fixed[0]}x{self.fixed[1]}')
      return self.fixed
    m = self.multiple
    return -(-height // m) * m, -(-width // m) * m


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Offsets of windows of `window` pixels covering `size` pixels, `stride` apart, the last one
  flush with the end."""
  if window >= size:
    return [0]
  return list(range(0, size - window, stride)) + [size - window]


def default_stride(tile: Sequence[int]) -> tuple[int, int]:
  """Two thirds of the tile (windows overlap by a third), at least 1."""
  return tuple(max(1, t - t // 3) for t in tile)


def pad(x: np.ndarray, size: tuple[int, int], values: np.ndarray) -> np.ndarray:
  """(M, B, h, w, 3) padded at the bottom and right to `size` with values[m] for modality m."""
  m, b, h, w, c = x.shape
  if (h, w) == tuple(size):
    return np.ascontiguousarray(x, np.float32)
  out = np.empty((m, b, *size, c), np.float32)
  out[...] = values[:, None, None, None, :]
  out[:, :, :h, :w] = x
  return out


@jax.jit
def _add_window(total: jax.Array, out: jax.Array, top: jax.Array, left: jax.Array) -> jax.Array:
  start = (0, 0, top, left, 0)
  return jax.lax.dynamic_update_slice(
      total, jax.lax.dynamic_slice(total, start, out.shape) + out, start)


_resize = jax.jit(resize.resize, static_argnums=(1, 2))
_mirror = jax.jit(lambda a: a[:, :, :, ::-1])


class Runner:
  """Runs `apply(params, x)` on (M, B, H, W, 3) float32 inputs of any H, W; see the module doc.

  Args:
    apply: the eval forward pass, (M, B, h, w, 3) -> (M + 1, B, h', w', C).
    params: its first argument (the variables; None for an artifact).
    geometry: what the forward needs of its input size.
    pad_values: float32 (M, 3), the padded pixel of each modality after normalisation.
    combine: merges the list of passes' (M + 1, B, H, W, C) outputs.
    tile: (h, w) of sliding windows, or None for the whole image (an artifact's fixed size
      when it has one).
    stride: (h, w) between windows (default_stride(tile) when None).
    scales, flip: the passes (each scale, each mirrored too with flip).
    on_compile: called with (padded input shape, seconds) after each new program is compiled.
  """

  def __init__(self, apply: Callable, params, geometry: Geometry, pad_values: np.ndarray,
               combine: Callable, tile: Sequence[int] | None = None,
               stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,),
               flip: bool = False, on_compile: Callable | None = None):
    if tile is None and geometry.fixed is not None:
      tile = geometry.fixed
    if tile is not None:
      tile = tuple(int(t) for t in tile)
      if len(tile) != 2 or min(tile) < 1:
        raise ValueError(f'--tile must be two positive sizes H,W; got {tile}')
      geometry.padded(*tile)  # Fails now if the tile does not fit an artifact.
      stride = default_stride(tile) if stride is None else tuple(int(s) for s in stride)
      if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f'--tile_stride must be two positive sizes H,W; got {stride}')
    elif stride is not None:
      raise ValueError('--tile_stride needs --tile')
    if not scales or min(scales) <= 0:
      raise ValueError(f'--scales must be positive numbers; got {list(scales)}')
    self.params, self.geometry, self.tile, self.stride = params, geometry, tile, stride
    self.pad_values = np.asarray(pad_values, np.float32)
    self.scales, self.flip = tuple(float(s) for s in scales), bool(flip)
    self.on_compile = on_compile
    self._combine = jax.jit(combine)
    self._compiled = {}

    def forward(params, x):
      out = apply(params, x)
      if out.shape[2:4] != x.shape[2:4]:
        out = resize.resize(out, x.shape[2:4], geometry.resize)
      return out
    self._forward = jax.jit(forward)

  @property
  def compiled_shapes(self) -> list[tuple[int, ...]]:
    """The padded input shapes compiled so far, in order."""
    return list(self._compiled)

  def __call__(self, x: np.ndarray) -> jax.Array:
    """The combined outputs (M + 1, B, H, W, C) of the passes over x (M, B, H, W, 3)."""
    height, width = x.shape[2:4]
    passes = []
    for scale in self.scales:
      size = (int((height - 1) * scale + 1), int((width - 1) * scale + 1))
      scaled = x if size == (height, width) else np.asarray(
          _resize(jnp.asarray(x), size, ALIGN_CORNERS))
      for mirrored in ((False, True) if self.flip else (False,)):
        out = self._pass(scaled[:, :, :, ::-1] if mirrored else scaled)
        if mirrored:
          out = _mirror(out)
        if size != (height, width):
          out = _resize(out, (height, width), ALIGN_CORNERS)
        passes.append(out)
    return self._combine(passes)

  def _pass(self, x: np.ndarray) -> jax.Array:
    """One pass at x's size: the whole image, or the average of the windows."""
    height, width = x.shape[2:4]
    if self.tile is None:
      return self._window(x)
    h, w = min(self.tile[0], height), min(self.tile[1], width)
    tops = window_starts(height, h, self.stride[0])
    lefts = window_starts(width, w, self.stride[1])
    if len(tops) == len(lefts) == 1:
      return self._window(x)
    total, count = None, np.zeros((height, width), np.float32)
    for top in tops:
      for left in lefts:
        out = self._window(x[:, :, top:top + h, left:left + w])
        if total is None:
          total = jnp.zeros(out.shape[:2] + (height, width) + out.shape[4:], out.dtype)
        total = _add_window(total, out, top, left)
        count[top:top + h, left:left + w] += 1
    return total / jnp.asarray(count)[:, :, None]

  def _window(self, x: np.ndarray) -> jax.Array:
    """The forward pass on one window, padded as the model needs and cropped back."""
    height, width = x.shape[2:4]
    padded = pad(x, self.geometry.padded(height, width), self.pad_values)
    if padded.shape not in self._compiled:
      start = time.perf_counter()
      self._compiled[padded.shape] = self._forward.lower(
          self.params, jax.ShapeDtypeStruct(padded.shape, jnp.float32)).compile()
      if self.on_compile is not None:
        self.on_compile(padded.shape, time.perf_counter() - start)
    out = self._compiled[padded.shape](self.params, padded)
    return out if padded.shape[2:4] == (height, width) else out[:, :, :height, :width]
