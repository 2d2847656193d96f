"""Titled image tiles side by side, written as PNGs: what every task's prediction figures share.

The segmentation panels (tasks/segmentation/visualize.py) and the translation grids
(tasks/translation/evaluation.py) both draw tiles under a white title bar and write RGB PNGs.
"""

import os

import cv2
import numpy as np

# Every tile has a title bar of TITLE_HEIGHT pixels above it; GAP separates tiles and rows.
TITLE_HEIGHT = 30
GAP = 8
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.6
TEXT = (0, 0, 0)
BACKGROUND = 255


def put_text(image: np.ndarray, text: str, x: int, y_bottom: int, max_width: int) -> None:
  """Black text with its baseline at y_bottom, shrunk to fit max_width if needed."""
  scale = FONT_SCALE
  width = cv2.getTextSize(text, FONT, scale, 1)[0][0]
  if width > max_width > 0:
    scale *= max_width / width
  cv2.putText(image, text, (x, y_bottom), FONT, scale, TEXT, 1, cv2.LINE_AA)


def titled(tile: np.ndarray, title: str) -> np.ndarray:
  """The tile under a white bar with its title."""
  bar = np.full((TITLE_HEIGHT, tile.shape[1], 3), BACKGROUND, np.uint8)
  put_text(bar, title, 4, TITLE_HEIGHT - 9, tile.shape[1] - 8)
  return np.concatenate([bar, tile], axis=0)


# Tiles narrower than this are enlarged (nearest neighbour) so that their titles stay legible.
MIN_TILE_WIDTH = 128


def image_row(tiles: dict) -> np.ndarray:
  """Titled uint8 (H, W, 3) images side by side, {title: image} in order, a gap between them.

  Small images (under MIN_TILE_WIDTH wide) are enlarged by a whole factor, pixels kept sharp.
  """
  def enlarged(image):
    image = np.asarray(image, np.uint8)
    factor = -(-MIN_TILE_WIDTH // image.shape[1])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image
  tiles = [titled(enlarged(image), title) for title, image in tiles.items()]
  gap = np.full((tiles[0].shape[0], 4, 3), BACKGROUND, np.uint8)
  parts = [gap]
  for tile in tiles:
    parts += [tile, gap]
  return np.concatenate(parts, axis=1)


def save_image_row(path: str, tiles: dict) -> np.ndarray:
  """Writes image_row(tiles) as a PNG (creating its directory) and returns it."""
  return write_png(path, image_row(tiles))


def write_png(path: str, rgb: np.ndarray) -> np.ndarray:
  """Writes an RGB uint8 image as a PNG, creating its directory; returns the image."""
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
    raise IOError(f'cv2.imwrite could not write {path}')
  return rgb
