"""Colour-coded label maps and side-by-side prediction panels for eyeballing results."""

import os

import cv2
import numpy as np

IGNORE_LABEL = 255


def _make_palette() -> np.ndarray:
  """(256, 3) uint8 RGB: PASCAL VOC's bit-interleaved colours, shifted so no class is black.

  VOC's colour 0 is black, but class 0 is a real class here (wall, in NYUv2), so class c takes VOC
  colour c + 1 (all distinct and non-black), and black is kept for the ignore label 255.
  """
  voc = np.zeros((256, 3), np.uint8)
  for i in range(256):
    c, r, g, b = i, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    voc[i] = (r, g, b)
  palette = np.zeros((256, 3), np.uint8)
  palette[:IGNORE_LABEL] = voc[1:IGNORE_LABEL + 1]
  return palette


PALETTE = _make_palette()


def colorize(label_map) -> np.ndarray:
  """(..., H, W) integer labels -> (..., H, W, 3) uint8 RGB; 255 and out-of-range labels black."""
  labels = np.asarray(label_map).astype(np.int64)
  labels = np.where((labels >= 0) & (labels < IGNORE_LABEL), labels, IGNORE_LABEL)
  return PALETTE[labels]


def _to_uint8_image(x) -> np.ndarray:
  """Min-max normalises a (H, W), (H, W, 1) or (H, W, 3) array to uint8 RGB (grey if 1 channel)."""
  x = np.asarray(x, np.float32)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  finite = np.isfinite(x)
  lo, hi = (x[finite].min(), x[finite].max()) if finite.any() else (0.0, 0.0)
  scaled = np.where(finite, (x - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
  out = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
  return np.repeat(out[..., None], 3, axis=-1) if out.ndim == 2 else out


def _title(tile: np.ndarray, text: str) -> np.ndarray:
  tile = np.ascontiguousarray(tile)
  scale = max(tile.shape[0] / 480.0, 0.35)
  org = (4, int(18 * scale) + 4)
  for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
    cv2.putText(tile, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour, thickness,
                cv2.LINE_AA)
  return tile


def save_prediction_panel(path: str, rgb_uint8, depth, label, predictions: dict,
                          titles: bool = True) -> np.ndarray:
  """Writes one PNG: RGB | depth | ground truth | one tile per prediction, left to right.

  Args:
    path: output file; its directory is created if needed.
    rgb_uint8: (H, W, 3) uint8 RGB image.
    depth: (H, W), (H, W, 1) or (H, W, 3) (e.g. HHA) array, min-max normalised for display.
    label: (H, W) ground-truth labels.
    predictions: {name: (H, W) predicted labels}, e.g. {'rgb': .., 'depth': .., 'ensemble': ..}.
    titles: whether to write each tile's name on it.

  Returns:
    The (H, W * (3 + len(predictions)), 3) uint8 RGB panel that was written.
  """
  tiles = [('rgb', np.asarray(rgb_uint8, np.uint8)), ('depth', _to_uint8_image(depth)),
           ('ground truth', colorize(label))]
  tiles += [(name, colorize(pred)) for name, pred in predictions.items()]
  shape = tiles[0][1].shape
  for name, tile in tiles:
    if tile.shape != shape:
      raise ValueError(f'tile {name!r} has shape {tile.shape}, expected {shape}')
  panel = np.concatenate([_title(t, n) if titles else t for n, t in tiles], axis=1)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  if not cv2.imwrite(path, cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
    raise IOError(f'cv2.imwrite could not write {path}')
  return panel
