"""Colour-coded label maps and side-by-side prediction panels for eyeballing results."""

import cv2
import numpy as np

from asymfusion_jax import drawing
from asymfusion_jax.drawing import GAP, TITLE_HEIGHT

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


def colorize(label_map, palette=None) -> np.ndarray:
  """(..., H, W) integer labels -> (..., H, W, 3) uint8 RGB; 255 and out-of-range labels black.

  palette: uint8 (256, 3), the colour of each label (a dataset's palette(config)); None for
  PALETTE.
  """
  palette = PALETTE if palette is None else np.asarray(palette, np.uint8)
  labels = np.asarray(label_map).astype(np.int64)
  labels = np.where((labels >= 0) & (labels < IGNORE_LABEL), labels, IGNORE_LABEL)
  return palette[labels]


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


# Panel layout, in pixels: tiles are scaled up (nearest neighbour, by a whole factor) to at least
# MIN_TILE_HEIGHT; each has a title bar above it (drawing.TITLE_HEIGHT); drawing.GAP separates
# tiles and rows.
MIN_TILE_HEIGHT = 256


def _pixel_accuracy(pred: np.ndarray, label: np.ndarray) -> float | None:
  """Percent of labelled pixels (label != 255) predicted right; None if there are none."""
  valid = label != IGNORE_LABEL
  return 100.0 * float(np.mean(pred[valid] == label[valid])) if valid.any() else None


def _legend(classes, names, width: int, palette) -> np.ndarray:
  """Rows of colour swatches and class names, wrapped at `width` pixels."""
  entries = []
  for c in classes:
    if c == IGNORE_LABEL:
      text = 'unlabelled'
    else:
      text = f'{c} {names[c]}' if names is not None and c < len(names) else f'class {c}'
    entries.append((c, text))
  swatch, row_height, pad = 18, 28, 12
  sizes = [swatch + 6 + cv2.getTextSize(t, drawing.FONT, drawing.FONT_SCALE, 1)[0][0]
           for _, t in entries]
  rows, row, used = [], [], 0
  for entry, size in zip(entries, sizes):
    if row and used + size > width - 2 * GAP:
      rows.append(row)
      row, used = [], 0
    row.append((entry, size))
    used += size + pad
  if row:
    rows.append(row)
  legend = np.full((row_height * len(rows) + GAP, width, 3), drawing.BACKGROUND, np.uint8)
  for r, row in enumerate(rows):
    x, top = GAP, r * row_height + GAP // 2
    for (c, text), size in row:
      colour = tuple(int(v) for v in colorize(c, palette))
      cv2.rectangle(legend, (x, top + 4), (x + swatch, top + 4 + swatch), colour, -1)
      cv2.rectangle(legend, (x, top + 4), (x + swatch, top + 4 + swatch), (96, 96, 96), 1)
      drawing.put_text(legend, text, x + swatch + 6, top + 4 + swatch - 3, width)
      x += size + pad
  return legend


def prediction_panel(rgb_uint8, depth, label, predictions: dict,
                     names=None, palette=None) -> np.ndarray:
  """A figure of one image: inputs and ground truth above, predictions below, a legend under.

  Tiles are enlarged (nearest neighbour) to at least MIN_TILE_HEIGHT pixels, so that classes of
  small images can be told apart; every tile has a title, each prediction its pixel accuracy on
  this image; the legend lists the classes that the ground truth or a prediction contains.

  Args:
    rgb_uint8: (H, W, 3) uint8 RGB image.
    depth: (H, W), (H, W, 1) or (H, W, 3) (e.g. HHA) array, min-max normalised for display.
    label: (H, W) ground-truth labels (255: unlabelled).
    predictions: {name: (H, W) predicted labels}, e.g. {'rgb': .., 'depth': .., 'ensemble': ..};
      a name other than 'ensemble' is titled as a branch.
    names: class names, indexed by label (e.g. a dataset's class_names(config)); None shows
      class ids.
    palette: uint8 (256, 3) label colours (a dataset's palette(config)); None for PALETTE.

  Returns:
    The (height, width, 3) uint8 RGB figure.
  """
  label = np.asarray(label)
  inputs = [('RGB', np.asarray(rgb_uint8, np.uint8)), ('depth', _to_uint8_image(depth)),
            ('ground truth', colorize(label, palette))]
  outputs = []
  for name, pred in predictions.items():
    pred = np.asarray(pred)
    if pred.shape != label.shape:
      raise ValueError(f'prediction {name!r} has shape {pred.shape}, expected {label.shape}')
    accuracy = _pixel_accuracy(pred, label)
    title = name if name == 'ensemble' else f'{name} branch'
    if accuracy is not None:
      title += f': {accuracy:.1f}% pixels right'
    outputs.append((title, colorize(pred, palette)))
  for name, tile in inputs:
    if tile.shape[:2] != label.shape:
      raise ValueError(f'{name} has shape {tile.shape}, expected {label.shape} (+ channels)')

  factor = max(1, -(-MIN_TILE_HEIGHT // label.shape[0]))
  columns = max(len(inputs), len(outputs))
  tile_h, tile_w = label.shape[0] * factor, label.shape[1] * factor

  def row(tiles):
    cells = [drawing.titled(np.repeat(np.repeat(t, factor, axis=0), factor, axis=1), title)
             for title, t in tiles]
    cells += [np.full((TITLE_HEIGHT + tile_h, tile_w, 3), drawing.BACKGROUND, np.uint8)] * (
        columns - len(tiles))
    spacer = np.full((TITLE_HEIGHT + tile_h, GAP, 3), drawing.BACKGROUND, np.uint8)
    parts = [spacer]
    for cell in cells:
      parts += [cell, spacer]
    return np.concatenate(parts, axis=1)

  rows = [row(inputs), row(outputs)] if outputs else [row(inputs)]
  width = rows[0].shape[1]
  present = np.unique(np.concatenate([label.ravel()] + [np.asarray(p).ravel()
                                                         for p in predictions.values()]))
  classes = [int(c) for c in present if 0 <= c < IGNORE_LABEL]
  if IGNORE_LABEL in present:
    classes.append(IGNORE_LABEL)
  gap = np.full((GAP, width, 3), drawing.BACKGROUND, np.uint8)
  parts = [gap]
  for r in rows:
    parts += [r, gap]
  parts.append(_legend(classes, names, width, palette))
  return np.concatenate(parts, axis=0)


def save_prediction_panel(path: str, rgb_uint8, depth, label, predictions: dict,
                          names=None, palette=None) -> np.ndarray:
  """Writes prediction_panel(...) as a PNG (creating its directory) and returns it."""
  return drawing.write_png(path, prediction_panel(rgb_uint8, depth, label, predictions, names,
                                                  palette))
