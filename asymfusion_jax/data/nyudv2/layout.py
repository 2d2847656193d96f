"""The on-disk layout of preprocessed NYUDv2, read and written without TensorFlow.

The widely used layout is a folder with `rgb/`, `depth/` and `masks/` PNGs and the list files
`train.txt` and `val.txt`, whose lines are
`rgb/NNNNNN.png<TAB>masks/NNNNNN.png<TAB>depth/NNNNNN.png`. The TFDS builder reads it and the
synthetic generator writes it, so both go through this one module. Every problem with an example
raises `layout.LayoutError` naming the file and the list line.
"""

import dataclasses
import os

import cv2
import numpy as np
from etils import epath

from asymfusion_jax.data import layout
from asymfusion_jax.data.layout import LayoutError

LIST_FILES = layout.LIST_FILES
# What the TFDS build records in its metadata besides the examples (`builder`), read by the
# pipeline without decoding an image:
# {split: {label value (str): 'Mask masks/... listed in <list> line N'}}, the first mask
# holding each label value;
LABEL_FILES = 'label_files'
# {split: [height, width]}, the largest of each split's images.
MAX_IMAGE_SIZE = 'max_image_size'
FOLDERS = ('rgb', 'masks', 'depth')  # In the column order of the list files.

# NYUDv2's 40 classes (Gupta et al.'s mapping), in label order 0..39.
CLASS_NAMES = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
    'floor mat', 'clothes', 'ceiling', 'books', 'refrigerator', 'television', 'paper', 'towel',
    'shower curtain', 'box', 'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp',
    'bathtub', 'bag', 'other structure', 'other furniture', 'other prop')


@dataclasses.dataclass(frozen=True)
class Entry(layout.ListLine):
  """One line of a list file: the example's three files, relative to the manual folder."""
  rgb: str
  mask: str
  depth: str


def read_list(manual_dir: os.PathLike | str, split: str) -> list[Entry]:
  """Parses the list file of `split` ('train' or 'val'); blank lines are skipped."""
  path, lines = layout.list_lines(manual_dir, split, f'{"/, ".join(FOLDERS)}/.')
  entries = []
  for number, line in lines:
    fields = line.split('\t')
    if len(fields) != 3:
      fields = line.split()
    if len(fields) != 3 or not all(f.strip() for f in fields):
      raise LayoutError(f'{path.name} line {number} ({line!r}): expected three tab-separated paths '
                        'rgb/NNNNNN.png<TAB>masks/NNNNNN.png<TAB>depth/NNNNNN.png.')
    entries.append(Entry(path.name, number, line, *fields))
  return entries


def _read_png(manual_dir, relative: str, flags: int, entry: Entry) -> np.ndarray:
  path = epath.Path(manual_dir) / relative
  if not path.exists():
    raise LayoutError(f'Missing file {path} listed in {entry.where()}.')
  try:
    data = path.read_bytes()
  except OSError as e:  # No permission, a folder, an I/O error.
    raise LayoutError(f'Unreadable file {path} listed in {entry.where()}: {e}') from e
  return layout.decode_image(data, flags, f'{path} listed in {entry.where()}')


def _single_channel(image: np.ndarray, path, entry: Entry, dtypes, what: str) -> np.ndarray:
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim != 2 or image.dtype not in dtypes:
    raise LayoutError(f'{what} {path} listed in {entry.where()} must be a single-channel '
                      f'{" or ".join(np.dtype(d).name for d in dtypes)} PNG; it has shape '
                      f'{image.shape} and type {image.dtype}.')
  return image


def read_example(manual_dir: os.PathLike | str, entry: Entry, num_classes: int | None = None,
                 ignore_label: int = 255) -> dict[str, np.ndarray]:
  """Decodes and checks one example.

  Args:
    manual_dir: the folder of the list files.
    entry: the example's list-file line.
    num_classes: labels must be in [0, num_classes) or equal ignore_label; None checks no label
      values (the TFDS build records them instead, for every config to check against its own
      number of classes).
    ignore_label: the label of unlabelled pixels.

  Returns:
    {'rgb': uint8 (H, W, 3) in RGB order, 'depth': uint16 (H, W), 'label': uint8 (H, W)}. 8-bit
    depth is widened to uint16 without changing its values (cv2.IMREAD_UNCHANGED keeps 16-bit
    depth intact; the default flags would squash it to 8 bits).
  """
  bgr = _read_png(manual_dir, entry.rgb, cv2.IMREAD_COLOR, entry)
  rgb = np.ascontiguousarray(bgr[..., ::-1])
  depth = _read_png(manual_dir, entry.depth, cv2.IMREAD_UNCHANGED, entry)
  depth = _single_channel(depth, entry.depth, entry, (np.uint8, np.uint16), 'Depth image')
  label = _read_png(manual_dir, entry.mask, cv2.IMREAD_UNCHANGED, entry)
  label = _single_channel(label, entry.mask, entry, (np.uint8,), 'Mask')
  for what, relative, image in (('depth', entry.depth, depth), ('mask', entry.mask, label)):
    if image.shape != rgb.shape[:2]:
      raise LayoutError(f'Mis-sized {what} image {relative} listed in {entry.where()}: it is '
                        f'{image.shape[0]}x{image.shape[1]} but {entry.rgb} is '
                        f'{rgb.shape[0]}x{rgb.shape[1]}.')
  if num_classes is not None:
    bad = (label >= num_classes) & (label != ignore_label)
    if bad.any():
      raise LayoutError(f'Mask {entry.mask} listed in {entry.where()} has labels '
                        f'{np.unique(label[bad]).tolist()}; expected 0..{num_classes - 1} or the '
                        f'ignore label {ignore_label}.')
  return {'rgb': rgb, 'depth': depth.astype(np.uint16), 'label': label}


def fingerprint(manual_dir: os.PathLike | str) -> str:
  """A hash of the list files and the sizes of every listed file.

  A prepared TFDS dataset records it, so that `prepare` notices when the manual folder changed
  (for example regenerated with another seed) and rebuilds instead of serving stale data. File
  sizes rather than modification times keep it stable when the folder is copied.
  """
  return layout.folder_fingerprint(
      manual_dir, LIST_FILES,
      lambda root, split: [relative for entry in read_list(root, split)
                           for relative in (entry.rgb, entry.mask, entry.depth)])


def write_example(manual_dir: os.PathLike | str, stem: str, rgb: np.ndarray, depth: np.ndarray,
                  label: np.ndarray) -> str:
  """Writes one example's three PNGs and returns its list-file line (without newline)."""
  root = epath.Path(manual_dir)
  relative = {folder: f'{folder}/{stem}.png' for folder in FOLDERS}
  for folder, image in zip(FOLDERS, (rgb, label, depth)):
    (root / folder).mkdir(parents=True, exist_ok=True)
    layout.write_png(root / relative[folder], image)
  return '\t'.join(relative[folder] for folder in FOLDERS)

