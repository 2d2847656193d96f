"""What the datasets' on-disk layouts share, read and written without TensorFlow.

Every dataset package has its own `layout` module (data/nyudv2/layout.py, ...) for its folder
structure; this one holds what they have in common: `LayoutError`, the list files `train.txt`
and `val.txt` (`LIST_FILES`, `list_lines`, `write_list`), decoding a file with an error that
names it (`decode_image`), writing PNGs (`write_png`), and one list line as a record that says where it
is (`ListLine`). Every problem with an example raises
`LayoutError` naming the file and the list line, because a dataset of thousands of images is
repaired one bad file at a time.
"""

import dataclasses
import hashlib
import os
from typing import Callable, Iterable

import cv2
import numpy as np
from etils import epath

LIST_FILES = {'train': 'train.txt', 'val': 'val.txt'}


@dataclasses.dataclass(frozen=True)
class ListLine:
  """One line of a list file; the datasets' entries add what the line names."""
  list_file: str
  line_number: int  # 1-based, as an editor shows it.
  line: str

  def where(self) -> str:
    return f'{self.list_file} line {self.line_number} ({self.line!r})'


class LayoutError(ValueError):
  """A list file or an image of the manual folder is missing, unreadable or inconsistent."""


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


def write_png(path: os.PathLike | str, image: np.ndarray) -> None:
  """Writes a uint8 or uint16 PNG (colour images given in RGB order)."""
  if image.ndim == 3:
    image = image[..., ::-1]
  ok, encoded = cv2.imencode('.png', np.ascontiguousarray(image))
  if not ok:
    raise OSError(f'Could not encode {path} as PNG.')
  epath.Path(path).write_bytes(encoded.tobytes())


def write_list(manual_dir: os.PathLike | str, split: str, lines: list[str]) -> None:
  """Writes the list file of `split`."""
  (epath.Path(manual_dir) / LIST_FILES[split]).write_text(''.join(line + '\n' for line in lines))


def folder_fingerprint(manual_dir: os.PathLike | str, list_files: dict[str, str],
                       listed_files: Callable[[epath.Path, str], Iterable[str]],
                       digest=None) -> str:
  """A hash of a manual folder's list files and the size of every file they list.

  listed_files(root, split) gives the listed files' paths relative to the folder; a missing list
  file or listed file is hashed as missing. `digest` may hold what else the build depends on.
  Builds record it, so that preparing again notices a changed folder (for example regenerated
  with another seed) and rebuilds instead of serving stale data; file sizes rather than
  modification times keep it stable when the folder is copied.
  """
  digest = hashlib.sha256() if digest is None else digest
  root = epath.Path(manual_dir)
  for split in sorted(list_files):
    path = root / list_files[split]
    if not path.exists():
      digest.update(f'{split}:missing'.encode())
      continue
    digest.update(path.read_bytes())
    for relative in listed_files(root, split):
      file = root / relative
      size = file.stat().length if file.exists() else -1
      digest.update(f'{relative}:{size};'.encode())
  return digest.hexdigest()
