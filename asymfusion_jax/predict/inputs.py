"""predict's inputs: which files make up each image, and reading them into network input.

Two ways to name them:
- one folder per modality (`--input rgb=DIR --input depth=DIR`): every file of the dataset's
  extensions under each folder (images; rgbx: .npy arrays too; recursively, hidden files and
  other extensions ignored), paired across the folders by their path relative to the folder,
  without the extension and without the dataset's per-modality suffix (Cityscapes'
  _leftImg8bit / _disparity, Taskonomy's _domain_<domain>);
- a list file (`--list=FILE`): one image per line, its files' paths separated by tabs or
  spaces, in the order of the model's modalities, relative to the list file's folder; blank lines
  and lines starting with # are skipped.
Outputs are named after the pairing key (the first column's path, for a list), so they mirror
the input folder's tree.

Everything wrong with the inputs is an InputError whose one-line message names the file (or
folder, or list line) at fault: a folder without images, an image without the file of one of the
modalities, an unreadable file, a file whose content does not fit its modality, and modalities of
one image that differ in size.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np

from asymfusion_jax.data import predict_io


class InputError(ValueError):
  """An input folder, list file or image that predict cannot use; the message names it."""


@dataclasses.dataclass(frozen=True)
class Image:
  """One image to predict: its output stem (relative path without extension) and its files."""
  stem: str
  files: dict  # modality -> path, in the order of the model's modalities.


def _image_files(folder: str, extensions: Sequence[str]) -> list[str]:
  """Relative paths of the files under `folder` with one of `extensions`, sorted."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if not name.startswith('.') and name.lower().endswith(tuple(extensions)):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  return found


def _stem(relative: str) -> str:
  return os.path.splitext(relative)[0].replace(os.sep, '/')


def from_folders(folders: dict, dataset, names: Sequence[str]) -> list[Image]:
  """The images of one folder per modality ({modality: folder}), paired by name."""
  missing = [n for n in names if n not in folders]
  extra = [n for n in folders if n not in names]
  if missing or extra:
    raise InputError(f'the model takes --input for {", ".join(names)}; '
                     + (f'missing: {", ".join(missing)}' if missing else
                        f'not a modality of the model: {", ".join(extra)}'))
  keyed, extensions = {}, predict_io.extensions(dataset)
  for name in names:
    folder = folders[name]
    if not os.path.isdir(folder):
      raise InputError(f'--input {name}={folder}: no such folder')
    files = {}
    for relative in _image_files(folder, extensions):
      key = dataset.pairing_key(name, _stem(relative))
      if key in files:
        raise InputError(f'{os.path.join(folder, files[key])} and {os.path.join(folder, relative)}'
                         f' are both the {name} file of image {key!r}; keep one')
      files[key] = relative
    if not files:
      raise InputError(f'nothing to predict: no image files ({", ".join(extensions)}) in '
                       f'{folder} (--input {name})')
    keyed[name] = files
  keys = list(keyed[names[0]])
  keys += sorted(set().union(*keyed.values()) - set(keys))
  images = []
  for key in keys:
    have = [n for n in names if key in keyed[n]]
    lacking = [n for n in names if key not in keyed[n]]
    if lacking:
      there = os.path.join(folders[have[0]], keyed[have[0]][key])
      raise InputError(f'{there} has no {lacking[0]} file in {folders[lacking[0]]} (an image '
                       f'needs every modality: {", ".join(names)})')
    images.append(Image(dataset.output_stem(key),
                        {n: os.path.join(folders[n], keyed[n][key]) for n in names}))
  return images


def from_list(list_file: str, dataset, names: Sequence[str]) -> list[Image]:
  """The images of a list file (see the module doc)."""
  try:
    with open(list_file) as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f'cannot read the list file {list_file}: {e}') from e
  base = os.path.dirname(os.path.abspath(list_file))
  images, seen = [], {}
  for number, line in enumerate(lines, start=1):
    fields = line.split('\t') if '\t' in line else line.split()
    fields = [f.strip() for f in fields if f.strip()]
    if not fields or fields[0].startswith('#'):
      continue
    where = f'{list_file} line {number}'
    if len(fields) != len(names):
      raise InputError(f'{where} has {len(fields)} paths; expected {len(names)}, one per '
                       f'modality in the order {", ".join(names)}')
    paths = [os.path.join(base, p) for p in fields]
    for path in paths:
      if not os.path.isfile(path):
        raise InputError(f'{where}: no file {path}')
    first = os.path.normpath(fields[0])
    if os.path.isabs(first) or first.startswith('..'):
      first = os.path.basename(first)
    stem = dataset.output_stem(dataset.pairing_key(names[0], _stem(first)))
    if stem in seen:
      raise InputError(f'{where} names the image of line {seen[stem]} again ({stem!r})')
    seen[stem] = number
    images.append(Image(stem, dict(zip(names, paths))))
  if not images:
    raise InputError(f'nothing to predict: the list file {list_file} names no image')
  return images


def images(config, folders: dict | None = None, list_file: str | None = None,
           missing: Sequence[str] = ()) -> list[Image]:
  """The images of `folders` ({modality: folder}) or of `list_file` for a model of `config`;
  the `missing` modalities are not read (predict fills them)."""
  dataset = predict_io.get(config)
  names = tuple(n for n in config.modalities if n not in missing)
  if folders:
    return from_folders(folders, dataset, names)
  return from_list(list_file, dataset, names)


def read(image: Image, dataset) -> dict[str, np.ndarray]:
  """{modality: float32 (H, W, 3) network input} of one image, every modality the same size."""
  out, first = {}, None
  for name, path in image.files.items():
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise InputError(f'unreadable file {path}: {e.strerror or e}') from e
    try:
      out[name] = dataset.network_input(name, predict_io.read_file(dataset, data, path))
    except ValueError as e:
      raise InputError(str(e) if path in str(e) else f'{path}: {e}') from e
    if first is None:
      first = path
    elif out[name].shape != out[next(iter(out))].shape:
      (h, w), (fh, fw) = out[name].shape[:2], out[next(iter(out))].shape[:2]
      raise InputError(f'{path} is {h}x{w} but {first} is {fh}x{fw}: the modalities of an '
                       'image must have one size')
  return out
