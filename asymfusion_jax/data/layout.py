"""The on-disk layout of preprocessed NYUDv2, read and written without TensorFlow.

The widely used layout is a folder with `rgb/`, `depth/` and `masks/` PNGs and the list files
`train.txt` and `val.txt`, whose lines are
`rgb/NNNNNN.png<TAB>masks/NNNNNN.png<TAB>depth/NNNNNN.png`. The TFDS builder reads it and the
synthetic generator writes it, so both go through this one module. Every problem with an example
raises `LayoutError` naming the file and the list line, because a dataset of 1449 images is
repaired one bad file at a time.
"""

import dataclasses
import hashlib
import os

import cv2
import numpy as np
from etils import epath

LIST_FILES = {'train': 'train.txt', 'val': 'val.txt'}
# What the TFDS build records in its metadata besides the examples (`builder`), read by the
# pipeline without decoding an image:
# {split: {label value (str): 'Mask masks/... listed in <list> line N'}}, the first mask
# holding each label value;
LABEL_FILES = 'label_files'
# {split: [height, width]}, the largest of each split's images.
MAX_IMAGE_SIZE = 'max_image_size'
FOLDERS = ('rgb', 'masks', 'depth')  # In the column order of the list files.


class LayoutError(ValueError):
  """A list file or an image of the manual folder is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One line of a list file: the example's three files, relative to the manual folder."""
  list_file: str
  line_number: int  # 1-based, as an editor shows it.
  line: str
  rgb: str
  mask: str
  depth: str

  def where(self) -> str:
    return f'{self.list_file} line {self.line_number} ({self.line!r})'


def list_lines(manual_dir: os.PathLike | str, split: str,
               beside: str) -> tuple[epath.Path, list[tuple[int, str]]]:
  """The list file of `split` ('train' or 'val') and its non-blank lines, stripped, with their
  1-based numbers. A missing file is a LayoutError saying the manual folder must hold the list
  files next to `beside`; a file without a line is one too. Shared by the datasets whose
  manual folder has list files (NYUDv2, Taskonomy)."""
  if split not in LIST_FILES:
    raise ValueError(f'Unknown split {split!r}; expected one of {sorted(LIST_FILES)}.')
  path = epath.Path(manual_dir) / LIST_FILES[split]
  if not path.exists():
    raise LayoutError(f'Missing list file {path}: the manual folder must hold '
                      f'{" and ".join(LIST_FILES.values())} next to {beside}')
  lines = [(number, raw.strip())
           for number, raw in enumerate(path.read_text().splitlines(), start=1) if raw.strip()]
  if not lines:
    raise LayoutError(f'List file {path} is empty.')
  return path, lines


def read_list(manual_dir: os.PathLike | str, split: str) -> list[Entry]:
  """Parses the list file of `split` ('train' or 'val'); blank lines are skipped."""
  path, lines = list_lines(manual_dir, split, f'{"/, ".join(FOLDERS)}/.')
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


def decode_image(data: bytes, flags: int, where: str) -> np.ndarray:
  """cv2.imdecode of `data`, or a LayoutError 'Unreadable image <where>.' (empty or corrupt)."""
  array = np.frombuffer(data, np.uint8)
  image = None
  if array.size:
    try:
      image = cv2.imdecode(array, flags)
    except cv2.error:
      image = None
  if image is None:
    raise LayoutError(f'Unreadable image {where}.')
  return image


def _read_png(manual_dir, relative: str, flags: int, entry: Entry) -> np.ndarray:
  path = epath.Path(manual_dir) / relative
  if not path.exists():
    raise LayoutError(f'Missing file {path} listed in {entry.where()}.')
  try:
    data = path.read_bytes()
  except OSError as e:  # No permission, a folder, an I/O error.
    raise LayoutError(f'Unreadable file {path} listed in {entry.where()}: {e}') from e
  return decode_image(data, flags, f'{path} listed in {entry.where()}')


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
  digest = hashlib.sha256()
  root = epath.Path(manual_dir)
  for split in sorted(LIST_FILES):
    path = root / LIST_FILES[split]
    if not path.exists():
      digest.update(f'{split}:missing'.encode())
      continue
    digest.update(path.read_bytes())
    for entry in read_list(root, split):
      for relative in (entry.rgb, entry.mask, entry.depth):
        file = root / relative
        size = file.stat().length if file.exists() else -1
        digest.update(f'{relative}:{size};'.encode())
  return digest.hexdigest()


def write_png(path: os.PathLike | str, image: np.ndarray) -> None:
  """Writes a uint8 or uint16 PNG (colour images given in RGB order)."""
  if image.ndim == 3:
    image = image[..., ::-1]
  ok, encoded = cv2.imencode('.png', np.ascontiguousarray(image))
  if not ok:
    raise OSError(f'Could not encode {path} as PNG.')
  epath.Path(path).write_bytes(encoded.tobytes())


def write_example(manual_dir: os.PathLike | str, stem: str, rgb: np.ndarray, depth: np.ndarray,
                  label: np.ndarray) -> str:
  """Writes one example's three PNGs and returns its list-file line (without newline)."""
  root = epath.Path(manual_dir)
  relative = {folder: f'{folder}/{stem}.png' for folder in FOLDERS}
  for folder, image in zip(FOLDERS, (rgb, label, depth)):
    (root / folder).mkdir(parents=True, exist_ok=True)
    write_png(root / relative[folder], image)
  return '\t'.join(relative[folder] for folder in FOLDERS)


def write_list(manual_dir: os.PathLike | str, split: str, lines: list[str]) -> None:
  """Writes the list file of `split`."""
  (epath.Path(manual_dir) / LIST_FILES[split]).write_text(''.join(line + '\n' for line in lines))
