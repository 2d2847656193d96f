"""predict's output folder: where each file goes, atomic writes, and the run record.

  OUT/predict.json                      the settings of the predictions in OUT (the record)
  OUT/<branch>/<kind>/<stem>.<ext>      one file per image, branch and kind

<branch> is 'ensemble' (and, with --branches, each modality's branch), <kind> what the task
writes ('labels', 'colour', 'logits' for segmentation; the target domain, e.g. 'rgb', for
translation) and <stem> the image's relative path without extension. Every file is written to a
temporary name beside it and renamed, so a file that exists is complete: an image is finished
when all its files exist, and a rerun skips it unless --overwrite.

The record lists what decides the predictions' values (the model and the passes). A rerun into
a folder whose record differs is refused, so that one folder never mixes two models' predictions,
unless --overwrite, which predicts every image again and replaces the record.
"""

import json
import os
import tempfile

import cv2
import numpy as np

RECORD = 'predict.json'


def _atomic(path: str, write) -> None:
  """Calls write(file object) on a temporary file beside `path`, then renames it to `path`."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, temp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(temp, 0o666 & ~mask)  # mkstemp's 0600 would outlive the rename.
    os.replace(temp, path)
  except BaseException:
    if os.path.exists(temp):
      os.remove(temp)
    raise


def write_png(path: str, image: np.ndarray) -> None:
  """A uint8 or uint16 PNG; (H, W, 3) images are given in RGB order."""
  if image.ndim == 3:
    image = image[..., ::-1]
  ok, encoded = cv2.imencode('.png', np.ascontiguousarray(image))
  if not ok:
    raise OSError(f'could not encode {path} as PNG')
  _atomic(path, lambda f: f.write(encoded.tobytes()))


def write_npy(path: str, array: np.ndarray) -> None:
  _atomic(path, lambda f: np.save(f, np.ascontiguousarray(array)))


WRITERS = {'.png': write_png, '.npy': write_npy}


class Outputs:
  """The files of each image in `out_dir`, for `branches` (names) and `kinds` ((kind, ext))."""

  def __init__(self, out_dir: str, branches, kinds):
    self.out_dir, self.branches, self.kinds = out_dir, list(branches), list(kinds)

  def path(self, stem: str, branch: str, kind: str, ext: str) -> str:
    return os.path.join(self.out_dir, branch, kind, stem + ext)

  def paths(self, stem: str) -> list[str]:
    return [self.path(stem, b, k, e) for b in self.branches for k, e in self.kinds]

  def done(self, stem: str) -> bool:
    return all(os.path.isfile(p) for p in self.paths(stem))

  def write(self, stem: str, arrays: dict, row: int) -> None:
    """Writes arrays[kind][r, row] for every branch r of self.branches and kind."""
    for r, branch in enumerate(self.branches):
      for kind, ext in self.kinds:
        WRITERS[ext](self.path(stem, branch, kind, ext), arrays[kind][r, row])


def check_record(out_dir: str, record: dict, overwrite: bool) -> None:
  """Writes OUT/predict.json, or fails if OUT holds predictions of other settings."""
  path = os.path.join(out_dir, RECORD)
  if os.path.isfile(path) and not overwrite:
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f'{path} is unreadable ({e}); pass --overwrite to predict every image '
                       'again') from e
    changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    if changed:
      what = ', '.join(f'{k}: {old.get(k)!r} now {record.get(k)!r}' for k in changed)
      raise ValueError(f'{out_dir} holds predictions made with other settings ({what}); choose '
                       'another --out, or pass --overwrite to replace them')
    return
  os.makedirs(out_dir, exist_ok=True)
  _atomic(path, lambda f: f.write(json.dumps(record, indent=2).encode()))
