"""The on-disk layout of Taskonomy domains and their decoding to 8-bit, 3-channel images.

The layout is the one of Taskonomy's "sample model" release: one folder per domain, files
`{domain}/point_{P}_view_{V}_domain_{domain}.png`, and the list files `train.txt` and `val.txt`
(the same names as the NYUDv2 layout, `layout.LIST_FILES`) whose lines name one example each with
the literal placeholder `{domain}` standing for the domain, e.g.

  {domain}/point_407_view_2_domain_{domain}.png

so that one line serves every domain. Every problem with an example raises `layout.LayoutError`
naming the file and the list line.

Decoding (docs/method.md section 11) turns each domain into uint8 (H, W, 3):
- 8-bit domains (rgb, normal, reshading, principal_curvature, segment_unsup2d, ...) are used as
  they are; a single-channel image is repeated to 3 channels;
- depth_euclidean and depth_zbuffer (16-bit, 1/512 m units): `log(1 + raw) * 255 / 11.1`;
- edge_texture: `raw * 255 / 11355`; edge_occlusion: `raw * 255 / 11584`;
the scaled domains computed in float64 (no uint16 overflow of `1 + raw`), clipped to [0, 255] and
truncated to uint8, then repeated to 3 channels. 16-bit PNGs are read losslessly
(cv2.IMREAD_UNCHANGED); a 16-bit file of a domain without a scale rule is refused rather than
squashed to 8 bits in some arbitrary way.
"""

import dataclasses
import hashlib
import os
from typing import Sequence

import cv2
import numpy as np
from etils import epath

from asymfusion_jax.data import layout

LIST_FILES = layout.LIST_FILES
PLACEHOLDER = '{domain}'

# Domain -> the divisor d of the 16-bit scale rule `f(raw) * 255 / d` (f = log(1 + .) for depth,
# the identity for edges). Domains not named here are 8-bit images used as they are.
LOG_SCALED = {'depth_euclidean': 11.1, 'depth_zbuffer': 11.1}
LINEAR_SCALED = {'edge_texture': 11355.0, 'edge_occlusion': 11584.0}
DOMAINS = ('rgb', 'reshading', 'depth_euclidean', 'depth_zbuffer', 'normal', 'edge_texture',
           'edge_occlusion', 'principal_curvature', 'segment_unsup2d', 'segment_unsup25d')


def check_domain(name: str) -> str:
  """Returns `name` if it is a known domain, else raises ValueError listing the known ones."""
  if name not in DOMAINS:
    raise ValueError(f'Unknown Taskonomy domain {name!r}; known: {", ".join(DOMAINS)}.')
  return name


def file_name(domain: str, point: int, view: int) -> str:
  """The path of one domain image relative to the manual folder."""
  return f'{domain}/point_{point}_view_{view}_domain_{domain}.png'


@dataclasses.dataclass(frozen=True)
class Entry(layout.ListLine):
  """One line of a list file: a path template (the line) with the `{domain}` placeholder."""

  def path(self, domain: str) -> str:
    return self.line.replace(PLACEHOLDER, domain)


def read_list(manual_dir: os.PathLike | str, split: str) -> list[Entry]:
  """Parses the list file of `split` ('train' or 'val'); blank lines are skipped."""
  path, lines = layout.list_lines(
      manual_dir, split,
      f'one folder per domain, with lines like {file_name(PLACEHOLDER, 407, 2)!r}.')
  entries = []
  for number, line in lines:
    if PLACEHOLDER not in line or len(line.split()) != 1:
      raise layout.LayoutError(
          f'{path.name} line {number} ({line!r}): expected one path with the {PLACEHOLDER} '
          f'placeholder, e.g. {file_name(PLACEHOLDER, 407, 2)!r}.')
    entries.append(Entry(path.name, number, line))
  return entries


def decode(domain: str, raw: np.ndarray) -> np.ndarray:
  """Decodes one domain image as read from its PNG (colour in RGB order) to uint8 (H, W, 3).

  Raises ValueError (read_example turns it into a LayoutError naming the file) when the image
  does not fit the domain: a colour image of a scaled domain, or 16 bits where no rule says how
  to reduce them.
  """
  check_domain(domain)
  if raw.ndim == 3 and raw.shape[-1] == 1:
    raw = raw[..., 0]
  scaled = domain in LOG_SCALED or domain in LINEAR_SCALED
  if scaled:
    if raw.ndim != 2 or raw.dtype not in (np.uint8, np.uint16):
      raise ValueError(f'a {domain} image must be a single-channel 8- or 16-bit PNG; this one has '
                       f'shape {raw.shape} and type {raw.dtype}')
    value = raw.astype(np.float64)
    if domain in LOG_SCALED:
      value = np.log(1.0 + value) * 255.0 / LOG_SCALED[domain]
    else:
      value = value * 255.0 / LINEAR_SCALED[domain]
    image = np.clip(value, 0.0, 255.0).astype(np.uint8)  # Truncates, as the reference's cast.
  else:
    if raw.dtype != np.uint8 or not (raw.ndim == 2 or (raw.ndim == 3 and raw.shape[-1] == 3)):
      raise ValueError(f'a {domain} image must be an 8-bit grey or RGB PNG; this one has shape '
                       f'{raw.shape} and type {raw.dtype}')
    image = raw
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image)


def _read_png(manual_dir, relative: str, entry: Entry) -> np.ndarray:
  path = epath.Path(manual_dir) / relative
  if not path.exists():
    raise layout.LayoutError(f'Missing file {path} listed in {entry.where()}.')
  try:
    data = path.read_bytes()
  except OSError as e:  # No permission, a folder, an I/O error.
    raise layout.LayoutError(f'Unreadable file {path} listed in {entry.where()}: {e}') from e
  # IMREAD_UNCHANGED keeps 16 bits and the channel count.
  image = layout.decode_image(data, cv2.IMREAD_UNCHANGED, f'{path} listed in {entry.where()}')
  if image.ndim == 3 and image.shape[-1] == 3:
    image = image[..., ::-1]  # OpenCV decodes BGR.
  return image


def read_example(manual_dir: os.PathLike | str, entry: Entry,
                 domains: Sequence[str]) -> dict[str, np.ndarray]:
  """Reads and decodes the `domains` of one example: {domain: uint8 (H, W, 3)}.

  All domains of an example must have the same size: the train crop and flip are shared by all
  of them, so a mis-sized one would silently pair different pixels.
  """
  images = {}
  for domain in domains:
    relative = entry.path(domain)
    raw = _read_png(manual_dir, relative, entry)
    try:
      images[domain] = decode(domain, raw)
    except ValueError as e:
      raise layout.LayoutError(f'Unusable image {relative} listed in {entry.where()}: {e}.') from e
  first = domains[0]
  for domain in domains[1:]:
    if images[domain].shape != images[first].shape:
      h, w = images[domain].shape[:2]
      raise layout.LayoutError(
          f'Mis-sized image {entry.path(domain)} listed in {entry.where()}: it is {h}x{w} but '
          f'{entry.path(first)} is {images[first].shape[0]}x{images[first].shape[1]}.')
  return images


def fingerprint(manual_dir: os.PathLike | str, domains: Sequence[str]) -> str:
  """A hash of the list files and the sizes of every listed file of `domains`.

  A prepared dataset records it, so that preparing again notices a changed manual folder (for
  example regenerated with another seed) and rebuilds instead of serving stale data.
  """
  digest = hashlib.sha256(','.join(sorted(domains)).encode())
  return layout.folder_fingerprint(
      manual_dir, LIST_FILES,
      lambda root, split: [entry.path(domain) for entry in read_list(root, split)
                           for domain in sorted(domains)],
      digest)


def encode_depth(metres: np.ndarray) -> np.ndarray:
  """Metric depth -> Taskonomy's 16-bit depth code (1/512 m units, saturating at 128 m)."""
  return np.clip(np.rint(np.asarray(metres, np.float64) * 512.0), 0, 65535).astype(np.uint16)
