"""The Cityscapes RGB-D layout, read without TensorFlow: files, label ids, input encoding, colours.

docs/method.md section 13. The official release is three folders (or their `*_trainvaltest.zip`
archives) under one root:

  leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png   RGB, 8-bit
  disparity/{split}/{city}/{city}_{seq}_{frame}_disparity.png       16-bit: d > 0 is a disparity
                                                                    of (d - 1) / 256 pixels,
                                                                    d = 0 invalid
  gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png    8-bit label ids (0..33)

Examples are the RGB files of a split in sorted path order; each must have its disparity and
label file, of the same size, or `layout.LayoutError` names the file at fault. Label ids become
the 19 train ids (`LABEL_TO_TRAIN_ID`); every other id becomes the ignore label 255.
"""

import dataclasses
import hashlib
import os
import zipfile

import cv2
from etils import epath
import numpy as np

from asymfusion_jax.data import layout
from asymfusion_jax.data.layout import LayoutError

SPLITS = ('train', 'val')
FOLDERS = ('leftImg8bit', 'disparity', 'gtFine')
SUFFIXES = {'leftImg8bit': '_leftImg8bit.png', 'disparity': '_disparity.png',
            'gtFine': '_gtFine_labelIds.png'}
# The official archive of each folder (train, val and test in one zip each).
ARCHIVES = {folder: f'{folder}_trainvaltest.zip' for folder in FOLDERS}
IGNORE_LABEL = 255

# The 19 evaluated classes in train-id order, their label ids and colours (cityscapesScripts'
# labels.py).
CLASS_NAMES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
               'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
               'bus', 'train', 'motorcycle', 'bicycle')
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = np.asarray([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32)], np.uint8)

LABEL_TO_TRAIN_ID = np.full((256,), IGNORE_LABEL, np.uint8)
LABEL_TO_TRAIN_ID[list(TRAIN_LABEL_IDS)] = np.arange(NUM_CLASSES, dtype=np.uint8)

# Disparity (pixels) that maps to the top of the depth input range; nearer points saturate.
MAX_DISPARITY = 128.0
# Raw values of padded pixels: the RGB mean pixel of TF-DeepLab (normalised to 0), and depth
# as an invalid reading (normalised to -1, as every pixel without a disparity).
PAD_RGB = 127.5
PAD_DISPARITY = 0


@dataclasses.dataclass(frozen=True)
class Entry:
  """One example: its split, city and file stem ('aachen_000000_000019')."""
  split: str
  city: str
  stem: str

  def path(self, folder: str) -> str:
    """The example's file in `folder` (one of FOLDERS), relative to the dataset root."""
    return f'{folder}/{self.split}/{self.city}/{self.stem}{SUFFIXES[folder]}'


class Files:
  """Reads the three folders of a Cityscapes root, each extracted or as its official zip.

  A folder is read where it is extracted (ROOT/leftImg8bit/...), else from its archive
  (ROOT/leftImg8bit_trainvaltest.zip, whose members start with leftImg8bit/). Not thread-safe:
  one instance per reading thread.
  """

  def __init__(self, root: os.PathLike | str):
    self.root = epath.Path(root)
    self._zips = {}
    for folder in FOLDERS:
      if (self.root / folder).is_dir():
        continue
      archive = self.root / ARCHIVES[folder]
      if not archive.exists():
        raise LayoutError(f'Missing {self.root / folder}/ (or its archive {archive}): a '
                          f'Cityscapes root holds {", ".join(FOLDERS)} (folders or '
                          f'*_trainvaltest.zip archives).')
      self._zips[folder] = zipfile.ZipFile(os.fspath(archive))

  def where(self, relative: str) -> str:
    folder = relative.split('/', 1)[0]
    if folder in self._zips:
      return f'{relative} in {self.root / ARCHIVES[folder]}'
    return os.fspath(self.root / relative)

  def list(self, split: str, folder: str = 'leftImg8bit') -> list[str]:
    """Sorted relative paths of `folder`'s files of `split` with the folder's suffix."""
    suffix = SUFFIXES[folder]
    if folder in self._zips:
      names = [n for n in self._zips[folder].namelist()
               if n.startswith(f'{folder}/{split}/') and n.endswith(suffix)]
    else:
      base = self.root / folder / split
      names = ([f'{folder}/{split}/{p.parent.name}/{p.name}' for p in base.glob(f'*/*{suffix}')]
               if base.is_dir() else [])
    return sorted(names)

  def exists(self, relative: str) -> bool:
    folder = relative.split('/', 1)[0]
    if folder in self._zips:
      try:
        self._zips[folder].getinfo(relative)
        return True
      except KeyError:
        return False
    return (self.root / relative).exists()

  def size(self, relative: str) -> int:
    folder = relative.split('/', 1)[0]
    if folder in self._zips:
      return self._zips[folder].getinfo(relative).file_size
    return (self.root / relative).stat().length

  def read(self, relative: str) -> bytes:
    if not self.exists(relative):
      raise LayoutError(f'Missing file {self.where(relative)}.')
    folder = relative.split('/', 1)[0]
    try:
      if folder in self._zips:
        return self._zips[folder].read(relative)
      return (self.root / relative).read_bytes()
    except (OSError, zipfile.BadZipFile) as e:
      raise LayoutError(f'Unreadable file {self.where(relative)}: {e}') from e


def list_examples(files: Files, split: str) -> list[Entry]:
  """The examples of `split`, in sorted order; a missing partner file raises LayoutError."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  entries = []
  for relative in files.list(split):
    _, _, city, name = relative.split('/')
    entry = Entry(split, city, name[:-len(SUFFIXES['leftImg8bit'])])
    for folder in FOLDERS[1:]:
      if not files.exists(entry.path(folder)):
        raise LayoutError(f'Missing file {files.where(entry.path(folder))}, the {folder} file '
                          f'of {files.where(relative)}.')
    entries.append(entry)
  if not entries:
    raise LayoutError(f'No {split} images in {files.where(f"leftImg8bit/{split}")}: expected '
                      f'leftImg8bit/{split}/CITY/*{SUFFIXES["leftImg8bit"]}.')
  return entries


def _decode(files: Files, relative: str, flags: int) -> np.ndarray:
  return layout.decode_image(files.read(relative), flags, files.where(relative))


def read_example(files: Files, entry: Entry) -> dict[str, np.ndarray]:
  """Decodes and checks one example.

  Returns:
    {'rgb': uint8 (H, W, 3) in RGB order, 'disparity': uint16 (H, W) as stored (lossless),
     'label': uint8 (H, W) train ids, 255 elsewhere}.
  """
  bgr = _decode(files, entry.path('leftImg8bit'), cv2.IMREAD_COLOR)
  disparity = _decode(files, entry.path('disparity'), cv2.IMREAD_UNCHANGED)
  label_ids = _decode(files, entry.path('gtFine'), cv2.IMREAD_UNCHANGED)
  for folder, image, dtype in (('disparity', disparity, np.uint16),
                               ('gtFine', label_ids, np.uint8)):
    if image.ndim != 2 or image.dtype != dtype:
      raise LayoutError(f'{files.where(entry.path(folder))} must be a single-channel '
                        f'{np.dtype(dtype).name} PNG; it has shape {image.shape} and type '
                        f'{image.dtype}.')
    if image.shape != bgr.shape[:2]:
      raise LayoutError(f'Mis-sized file {files.where(entry.path(folder))}: it is '
                        f'{image.shape[0]}x{image.shape[1]} but its image '
                        f'{entry.path("leftImg8bit")} is {bgr.shape[0]}x{bgr.shape[1]}.')
  return {'rgb': np.ascontiguousarray(bgr[..., ::-1]), 'disparity': disparity,
          'label': LABEL_TO_TRAIN_ID[label_ids]}


def fingerprint(root: os.PathLike | str) -> str:
  """A hash of every example's three paths and file sizes, so a changed root is rebuilt."""
  files = Files(root)
  digest = hashlib.sha256()
  for split in SPLITS:
    for entry in list_examples(files, split):
      for folder in FOLDERS:
        digest.update(f'{entry.path(folder)}:{files.size(entry.path(folder))};'.encode())
  return digest.hexdigest()


def rgb_input(rgb: np.ndarray) -> np.ndarray:
  """uint8 RGB (H, W, 3) -> float32 in [-1, 1]: x / 127.5 - 1 (TF-DeepLab's)."""
  return rgb.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def depth_input(disparity: np.ndarray) -> np.ndarray:
  """uint16 disparity (H, W) -> float32 (H, W, 3) in [-1, 1] (ours, docs/method.md section 13).

  p = max(d - 1, 0) / 256 pixels of disparity, clip(p / 128, 0, 1) * 2 - 1, repeated to the 3
  channels of the shared stem; invalid pixels (d = 0) read as -1, the farthest value.
  """
  p = np.maximum(disparity.astype(np.float32) - 1, 0) / np.float32(256)
  x = np.clip(p / np.float32(MAX_DISPARITY), 0, 1) * np.float32(2) - np.float32(1)
  return np.repeat(x[..., None], 3, axis=-1)


# How each modality's input is made from the raw files, as the export sidecar states it.
INPUT_FORMULAS = {
    'rgb': 'uint8 RGB x -> x / 127.5 - 1',
    'depth': ('uint16 disparity d -> clip(max(d - 1, 0) / 256 / 128, 0, 1) * 2 - 1, repeated '
              'to 3 channels (d = 0, invalid, reads as -1)'),
}


def network_input(name: str, raw: np.ndarray) -> np.ndarray:
  """The float32 (H, W, 3) input of modality 'rgb' (raw uint8 RGB) or 'depth' (raw disparity)."""
  if name == 'rgb':
    return rgb_input(raw)
  if name == 'depth':
    return depth_input(raw)
  raise ValueError(f'Cityscapes has the modalities rgb and depth, not {name!r}.')


def pad_value(name: str) -> float:
  """The normalised value of a padded pixel of modality `name` (PAD_RGB or PAD_DISPARITY)."""
  raw = (np.full((1, 1, 3), PAD_RGB, np.float32) if name == 'rgb'
         else np.full((1, 1), PAD_DISPARITY, np.uint16))
  return float(network_input(name, raw)[0, 0, 0])


def raw_key(name: str) -> str:
  """The example key holding modality `name`'s raw pixels."""
  return 'disparity' if name == 'depth' else name
