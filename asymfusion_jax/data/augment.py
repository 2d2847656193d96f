"""The train augmentation of docs/method.md section 8, one random draw shared by all modalities.

Order, as in the reference: random scale s ~ U(scale_range), raised so that the shorter side is
at least `min_short_side`; pad to at least crop x crop; random horizontal flip; random crop.
The draw (`draw_augmentation`) is separate from its application (`apply_augmentation`) so that
every modality and the label get the same geometry, and so that tests can recompute where each
pixel must land.

Geometry, exactly:
- Rescaling uses OpenCV with fx = fy = s, as the reference does: the output is
  round(H * s) x round(W * s), colour is bicubic, depth and label are nearest neighbour with
  source row floor(i / s), and an output the size of its input is an unchanged copy.
- Padding is split evenly as in the reference: ceil((crop - size) / 2) on both sides of an axis
  shorter than the crop, so the padded canvas can be one pixel larger than the crop.
- The flip mirrors the padded canvas; because the padding is symmetric this equals padding the
  mirrored image, which is how it is computed.
- The crop keeps rows [top, top + crop) and columns [left, left + crop) of the (mirrored) canvas.
Padding and cropping are done in one copy into a crop x crop canvas filled with the pad value.
"""

import dataclasses

import cv2
import numpy as np

from asymfusion_jax.data import modalities

_INTERPOLATION = {'cubic': cv2.INTER_CUBIC, 'linear': cv2.INTER_LINEAR,
                  'nearest': cv2.INTER_NEAREST}


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One random draw of the train augmentation, for an image of a given size.

  Attributes:
    scale: the rescaling factor s.
    scaled_size: (height, width) after rescaling, round(size * s).
    pad: (rows, columns) of padding added on each side of the rescaled image.
    flip: whether the padded canvas is mirrored left-right.
    top: first row of the crop in the padded canvas.
    left: first column of the crop in the (mirrored) padded canvas.
  """
  scale: float
  scaled_size: tuple[int, int]
  pad: tuple[int, int]
  flip: bool
  top: int
  left: int


def draw_augmentation(rng: np.random.Generator, height: int, width: int, crop_size: int,
                      scale_range: tuple[float, float], min_short_side: int) -> Augmentation:
  """Draws scale, flip and crop position (in that order) for a height x width image."""
  scale = float(rng.uniform(scale_range[0], scale_range[1]))
  short = min(height, width)
  if short * scale < min_short_side:
    scale = min_short_side / short
  scaled = (int(np.rint(height * scale)), int(np.rint(width * scale)))
  pad = tuple(max((crop_size - n + 1) // 2, 0) for n in scaled)
  flip = bool(rng.integers(2))
  top = int(rng.integers(0, scaled[0] + 2 * pad[0] - crop_size + 1))
  left = int(rng.integers(0, scaled[1] + 2 * pad[1] - crop_size + 1))
  return Augmentation(scale, scaled, pad, flip, top, left)


def largest_filled_crop(size: tuple[int, int], scale_range: tuple[float, float],
                        min_short_side: int) -> tuple[int, str]:
  """(the largest crop_size this augmentation fills from train images of at most `size`, why).

  A crop is padded where the scaled image is smaller (`draw_augmentation`); one larger than the
  short side of the largest image at the largest scale (or min_short_side) is padding in every
  crop.
  """
  high, floor = float(scale_range[1]), int(min_short_side)
  short = max(int(np.rint(min(size) * high)), floor)
  why = (f'the train images of at most {size[0]}x{size[1]} have a short side of at most {short} '
         f'pixels at the largest scale {high:g} of config.data.scale_range')
  if short == floor:
    why += f' and config.data.min_short_side={floor}'
  return short, why


def paste(canvas: np.ndarray, image: np.ndarray, row: int, col: int) -> None:
  """Copies `image` into `canvas` with its top-left corner at (row, col), clipped to the canvas.

  (row, col) may be negative. A 2-D image is broadcast over the canvas channels, which is how
  depth gets repeated to 3 channels.
  """
  h, w = image.shape[:2]
  r0, c0 = max(row, 0), max(col, 0)
  r1, c1 = min(row + h, canvas.shape[0]), min(col + w, canvas.shape[1])
  if r0 >= r1 or c0 >= c1:
    return
  patch = image[r0 - row:r1 - row, c0 - col:c1 - col]
  if patch.ndim == 2 and canvas.ndim == 3:
    patch = patch[..., None]
  canvas[r0:r1, c0:c1] = patch


def _rescale(image: np.ndarray, aug: Augmentation, interpolation: str) -> np.ndarray:
  out = cv2.resize(image, None, fx=aug.scale, fy=aug.scale,
                   interpolation=_INTERPOLATION[interpolation])
  if out.shape[:2] != aug.scaled_size:  # OpenCV rounds the same way; this guards the contract.
    raise AssertionError(f'OpenCV resized {image.shape} by {aug.scale} to {out.shape}, '
                         f'expected {aug.scaled_size}.')
  return out[:, ::-1] if aug.flip else out


def apply_augmentation(aug: Augmentation, images: dict[str, np.ndarray], label: np.ndarray,
                       crop_size: int, ignore_label: int,
                       interpolation: dict[str, str] | None = None,
                       raw_pad: dict[str, np.ndarray] | None = None):
  """Applies one draw to every modality and the label.

  Args:
    aug: the draw, from `draw_augmentation` for this example's size.
    images: modality name -> raw image, (H, W, 3) or (H, W); resized with the modality's
      interpolation.
    label: uint8 (H, W).
    crop_size: side of the square output.
    ignore_label: label of padded pixels.
    interpolation: modality name -> 'cubic', 'linear' or 'nearest'; by default the modality's
      of `modalities.MODALITIES` (a dataset with modalities of its own, rgbx, passes them).
    raw_pad: modality name -> its (3,) raw pad value; by default `RAW_PAD_VALUE` for every one.

  Returns:
    (modality name -> float32 (crop, crop, 3) raw values, padded with the raw pad value,
     int32 (crop, crop) label, padded with `ignore_label`).
  """
  row, col = aug.pad[0] - aug.top, aug.pad[1] - aug.left
  out = {}
  for name, image in images.items():
    canvas = np.empty((crop_size, crop_size, 3), np.float32)
    canvas[...] = np.asarray(modalities.RAW_PAD_VALUE if raw_pad is None else raw_pad[name],
                             np.float32)
    method = (modalities.get(name).interpolation if interpolation is None
              else interpolation[name])
    paste(canvas, _rescale(image, aug, method), row, col)
    out[name] = canvas
  label_canvas = np.full((crop_size, crop_size), ignore_label, np.int32)
  paste(label_canvas, _rescale(label, aug, 'nearest'), row, col)
  return out, label_canvas
