"""The RGB-X folder layout (DFormer's, CMX's), read without TensorFlow.

  DATASET/
    RGB/<name>.<jpg|png>          one folder per modality, named by config.data.modality_folders
    Depth/<name>.<png|jpg|npy>    (Depth/, HHA/, Thermal/, Modal/, ...)
    Label/<name>.png              config.data.label_folder
    train.txt, test.txt           config.data.list_files: one sample a line

A list line names one sample. Its first token is a file of one of the layout's folders,
`RGB/<name>.<ext>` (DFormer), or the bare `<name>` (CMX; a bare name ending in an image or .npy
extension loses it). Every other folder holds the sample's file as `<folder>/<name>.<ext>` with
one of EXTENSIONS; further tokens on the line may name those files explicitly
(`RGB/a.jpg Label/a.png`). Names are sample names with any sub-folders, so paths hold no
whitespace.

Files are read as they are, without loss: PNGs of 8 or 16 bits, JPEGs, one or three channels
(three-channel images in RGB order, as a viewer shows them), `.npy` arrays of (H, W), (H, W, 1) or
(H, W, 3) numbers. Every problem raises data.layout.LayoutError naming the file and the list line.
"""

import dataclasses
import hashlib
import io
import os
import re

import cv2
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data.layout import LayoutError
from asymfusion_jax.data.layout import ListLine
from asymfusion_jax.data.layout import decode_image

SPLITS = ('train', 'val')
# The file extensions a sample's file may have, in the order they are looked for.
EXTENSIONS = ('.png', '.jpg', '.jpeg', '.npy', '.bmp', '.tif', '.tiff')
NPY_MAGIC = b'\x93NUMPY'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
LABEL = 'label'  # The label's key among a sample's files.


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a config's dataset lives and which folders it reads.

  Attributes:
    root: the dataset folder (config.data.manual_dir), absolute.
    folders: (modality name, folder) pairs, sorted by name: the build's order.
    label_folder: the folder of the labels.
    list_files: (('train', file), ('val', file)).
  """
  root: str
  folders: tuple[tuple[str, str], ...]
  label_folder: str
  list_files: tuple[tuple[str, str], ...]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'Layout':
    data = config.data
    if not data.manual_dir:
      raise LayoutError('config.data.manual_dir is empty: set it to the dataset folder (RGB/, '
                        'one folder per modality, Label/, train.txt, test.txt).')
    return cls(os.path.abspath(os.path.expanduser(data.manual_dir)),
               tuple(sorted((str(k), str(v)) for k, v in data.modality_folders.items())),
               str(data.label_folder),
               tuple((split, str(data.list_files[split])) for split in SPLITS))

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.folders)

  def list_file(self, split: str) -> str:
    return dict(self.list_files)[split]

  def build_name(self) -> str:
    """The name of this dataset's TFDS build: the folder's name and a hash of the layout, so
    that datasets and folder settings sharing a TFDS folder keep one build each."""
    digest = hashlib.sha256(repr(dataclasses.astuple(self)).encode()).hexdigest()[:10]
    stem = re.sub(r'[^a-z0-9]+', '_', os.path.basename(self.root).lower()).strip('_')
    return f'{stem or "dataset"}_{digest}'


@dataclasses.dataclass(frozen=True)
class Sample(ListLine):
  """One list line: the sample's name and its files, relative to the dataset folder."""
  name: str
  files: tuple[tuple[str, str], ...]  # (modality name or LABEL, relative path), build order.

  def file(self, key: str) -> str:
    return dict(self.files)[key]


class _Folder:
  """The files of one folder, indexed by (name without extension, lower-case extension)."""

  def __init__(self, root: str, folder: str, what: str):
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
      raise LayoutError(f'Missing folder {path}: {what}.')
    self.folder = folder
    self.files = {}
    for parent, _, names in os.walk(path):
      for file in names:
        relative = os.path.relpath(os.path.join(parent, file), path).replace(os.sep, '/')
        stem, ext = os.path.splitext(relative)
        if ext.lower() in EXTENSIONS:
          self.files.setdefault(stem, []).append(relative)

  def find(self, name: str, where: str) -> str:
    found = sorted(self.files.get(name, ()),
                   key=lambda f: EXTENSIONS.index(os.path.splitext(f)[1].lower()))
    if not found:
      raise LayoutError(f'Missing file {self.folder}/{name}.<{"|".join(e[1:] for e in EXTENSIONS)}>'
                        f' for {where}.')
    if len(found) > 1:
      raise LayoutError(f'Ambiguous files for {where}: {", ".join(f"{self.folder}/{f}" for f in found)}'
                        '; keep one per sample and folder.')
    return f'{self.folder}/{found[0]}'


def _folders(layout: Layout) -> dict[str, tuple[str, str]]:
  """folder -> (key, what) for every folder of the layout."""
  out = {folder: (name, f'the folder of modality {name!r} (config.data.modality_folders)')
         for name, folder in layout.folders}
  out[layout.label_folder] = (LABEL, 'the labels (config.data.label_folder)')
  return out


def read_lists(layout: Layout) -> dict[str, list[Sample]]:
  """Both splits' samples, every file found; a LayoutError names the first problem."""
  folders = _folders(layout)
  indexed = {folder: _Folder(layout.root, folder, what) for folder, (_, what) in folders.items()}
  return {split: _read_list(layout, split, folders, indexed) for split in SPLITS}


def list_lines(layout: Layout, split: str) -> list[tuple[int, str]]:
  """The non-blank lines of a split's list file, stripped, with their 1-based numbers."""
  path = epath.Path(layout.root) / layout.list_file(split)
  if not path.exists():
    key = 'train' if split == 'train' else 'val'
    raise LayoutError(f'Missing list file {path} (config.data.list_files.{key}): one sample a '
                      'line, as "RGB/<name>.<ext>" or "<name>".')
  lines = [(number, raw.strip())
           for number, raw in enumerate(path.read_text().splitlines(), start=1) if raw.strip()]
  if not lines:
    raise LayoutError(f'List file {path} is empty.')
  return lines


def _strip_extension(token: str) -> str:
  stem, ext = os.path.splitext(token)
  return stem if ext.lower() in EXTENSIONS else token


def _read_list(layout: Layout, split: str, folders: dict, indexed: dict) -> list[Sample]:
  list_file = layout.list_file(split)
  samples, seen = [], {}
  for number, line in list_lines(layout, split):
    where = f'{list_file} line {number} ({line!r})'
    explicit = {}
    name = None
    for position, token in enumerate(line.split()):
      folder, slash, rest = token.partition('/')
      if position == 0 and not slash:
        name = _strip_extension(token)
        continue
      # The first token may name a file of a folder this config does not read (RGB/ of a
      # depth-only config): it still gives the sample's name.
      if not slash or not rest or (folder not in folders and position > 0):
        raise LayoutError(f'{where}: {token!r} names no file of this layout\'s folders '
                          f'({", ".join(sorted(folders))}); a line is "RGB/<name>.<ext>" or '
                          '"<name>".')
      if not os.path.isfile(os.path.join(layout.root, token)):
        raise LayoutError(f'{where} names {token}, which is not a file in {layout.root}.')
      if folder in folders:
        explicit[folders[folder][0]] = token
      if position == 0:
        name = _strip_extension(rest)
    if name in seen:
      raise LayoutError(f'{where} repeats the sample {name!r} of line {seen[name]}.')
    seen[name] = number
    files = [(key, explicit.get(key) or indexed[folder].find(name, where))
             for folder, (key, _) in folders.items()]
    order = {key: i for i, key in enumerate(layout.modalities + (LABEL,))}
    samples.append(Sample(list_file, number, line, name,
                          tuple(sorted(files, key=lambda kv: order[kv[0]]))))
  return samples


def fingerprint(layout: Layout, samples: dict[str, list[Sample]] | None = None) -> str:
  """A hash of the layout, the list files and the size of every listed file, so that a build
  made from other files is noticed (file sizes, not times, keep it stable across copies)."""
  samples = read_lists(layout) if samples is None else samples
  digest = hashlib.sha256(repr(dataclasses.astuple(layout)).encode())
  for split in SPLITS:
    digest.update((epath.Path(layout.root) / layout.list_file(split)).read_bytes())
    for sample in samples[split]:
      for _, relative in sample.files:
        digest.update(f'{relative}:{os.path.getsize(os.path.join(layout.root, relative))};'.encode())
  return digest.hexdigest()


# Files.


def read_bytes(layout: Layout, relative: str, sample: Sample) -> bytes:
  try:
    return (epath.Path(layout.root) / relative).read_bytes()
  except OSError as e:  # Removed since listing, no permission, an I/O error.
    raise LayoutError(f'Unreadable file {relative} listed in {sample.where()}: {e}') from e


def _palette_indices(data: bytes, where: str) -> np.ndarray:
  """The indices of an indexed-colour PNG (OpenCV decodes only its colours): each pixel's colour
  looked up in the PLTE chunk, the first entry of a colour winning (palettes are often padded
  with repeated black)."""
  palette, position = None, 8
  while position + 8 <= len(data) and palette is None:
    length = int.from_bytes(data[position:position + 4], 'big')
    kind = data[position + 4:position + 8]
    if kind == b'PLTE':
      palette = np.frombuffer(data[position + 8:position + 8 + length], np.uint8).reshape(-1, 3)
    elif kind == b'IDAT':
      break
    position += 12 + length
  if palette is None:
    raise LayoutError(f'Unreadable image {where}: an indexed-colour PNG without a palette.')
  weights = np.array([65536, 256, 1], np.int64)
  index = {}
  for i, key in enumerate(palette.astype(np.int64) @ weights):
    index.setdefault(int(key), i)
  rgb = decode_image(data, cv2.IMREAD_COLOR, where)[..., ::-1]
  keys, inverse = np.unique(rgb.astype(np.int64) @ weights, return_inverse=True)
  return np.array([index[int(k)] for k in keys], np.uint8)[inverse].reshape(rgb.shape[:2])


def decode(data: bytes, where: str, label: bool = False) -> np.ndarray:
  """A file's array, as stored: (H, W) or (H, W, C); colour images in RGB order. A label that
  is an indexed-colour PNG gives its indices (the class ids), not its colours."""
  if label and data[:8] == PNG_SIGNATURE and data[25:26] == b'\x03':  # IHDR colour type 3.
    return _palette_indices(data, where)
  if data[:len(NPY_MAGIC)] == NPY_MAGIC:
    try:
      array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
      raise LayoutError(f'Unreadable array {where}: {e}') from e
  else:
    array = decode_image(data, cv2.IMREAD_UNCHANGED, where)
    if array.ndim == 3 and array.shape[-1] == 3:
      array = array[..., ::-1]
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return np.ascontiguousarray(array)


def check_modality(array: np.ndarray, where: str) -> None:
  """A modality's array must be (H, W) or (H, W, 3) of finite numbers."""
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
    raise LayoutError(f'{where} has shape {array.shape}; a modality has one or three channels, '
                      '(H, W), (H, W, 1) or (H, W, 3).')
  if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
    raise LayoutError(f'{where} holds {array.dtype} values; expected numbers.')
  if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
    raise LayoutError(f'{where} holds NaN or infinite values; replace missing values by a '
                      'number (e.g. 0).')


def check_label(array: np.ndarray, where: str) -> None:
  """A label must be a single-channel integer image of values below 65536."""
  if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
    raise LayoutError(f'Label {where} must be a single-channel integer image (8- or 16-bit PNG); '
                      f'it has shape {array.shape} and type {array.dtype}.')
  if array.size and (array.min() < 0 or array.max() > 65535):
    raise LayoutError(f'Label {where} has values outside 0..65535.')


def as_float(array: np.ndarray) -> np.ndarray:
  """8- and 16-bit images as they are (OpenCV resizes them natively), anything else float32."""
  return array if array.dtype in (np.uint8, np.uint16) else array.astype(np.float32)


# Writing (the synthetic generator, tests).


def write_image(path: os.PathLike | str, array: np.ndarray) -> None:
  """Writes an (H, W) or RGB (H, W, 3) array as PNG or JPEG by the path's extension, or .npy."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == '.npy':
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path.write_bytes(buffer.getvalue())
    return
  image = array[..., ::-1] if array.ndim == 3 else array
  params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix in ('.jpg', '.jpeg') else []
  ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(image), params)
  if not ok:
    raise OSError(f'Could not encode {path}.')
  path.write_bytes(encoded.tobytes())
