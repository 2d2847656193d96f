"""A synthetic RGB-X dataset in the DFormer layout, any modalities, that needs all of them.

Each modality carries one binary attribute of every object, and an object's class is the
combination of all of them: with k modalities there are 2**k object classes plus the
background, so no single modality (nor any k - 1 of them) separates the classes, while all k
together do. The modalities, sorted by name (the order of the classes' bits):
- 'rgb': colour, warm or cool (8-bit JPEG, textured, lit, noisy), as in data.synthetic;
- 'depth': nearer or farther than a tilted background plane, in millimetres (16-bit PNG, about
  1000..5000, sensor noise, a few missing zero readings);
- any other name (thermal, ...): hotter or colder than a smooth background (8-bit PNG).
Object shapes, sizes and textures vary and occlude one another; object rims are unlabelled.

Labels follow DFormer's convention (config.data.label_offset = 1): 0 unlabelled, 1 background,
2.. the object classes (`class_names`). List lines are "RGB/<name>.jpg", or the bare name when
there is no 'rgb'.

  python -m asymfusion_jax.data.synthetic --kind=rgbx --modalities=rgb,depth,thermal --out DIR
"""

import argparse
import os

import numpy as np

# The shapes and textures of the NYUDv2-layout synthetic set.
from asymfusion_jax.data.nyudv2.synthetic import _shape_mask, _texture  # pylint: disable=protected-access
from asymfusion_jax.data.rgbx import layout as layout_lib

DESCRIPTION = ('any modalities (--modalities) in the RGB-X layout of DFormer and CMX, classes '
               'that need every modality')
DEFAULT_HEIGHT = 96
LABEL_OFFSET = 1
# Per modality, the names of its attribute's two values (bit 0, bit 1).
_ATTRIBUTES = {'rgb': ('warm', 'cool'), 'depth': ('near', 'far'), 'thermal': ('hot', 'cold')}
_WARM, _COOL = np.array([205.0, 80.0, 55.0]), np.array([55.0, 95.0, 205.0])


def default_folder(name: str) -> str:
  """The folder a modality gets by default: RGB/ for 'rgb', else the capitalised name."""
  return 'RGB' if name == 'rgb' else name.capitalize()


def _attributes(name: str) -> tuple[str, str]:
  return _ATTRIBUTES.get(name, (f'{name}_high', f'{name}_low'))


def class_names(modalities) -> tuple[str, ...]:
  """The num_classes(modalities) class names: 'background', then one per object class."""
  names = sorted(modalities)
  objects = ['_'.join(_attributes(n)[(c >> m) & 1] for m, n in enumerate(names))
             for c in range(2 ** len(names))]
  return ('background', *objects)


def num_classes(modalities) -> int:
  return 2 ** len(tuple(modalities)) + 1


def render(rng: np.random.Generator, modalities, height: int, width: int) -> dict:
  """One sample: {modality: its raw array, 'label': uint8 raw labels (offset 1)}."""
  names = sorted(modalities)
  yy, xx = np.mgrid[:height, :width]
  v, u = yy / height - 0.5, xx / width - 0.5
  plane = rng.uniform(1800, 3500) - rng.uniform(0, 1500) * v + rng.uniform(-600, 600) * u
  out = {'rgb': rng.uniform(90, 180) + rng.uniform(-15, 15, 3) +
                _texture(rng, height, width)[..., None],
         'depth': plane.copy()}
  backgrounds = {n: rng.uniform(100, 150) + 0.6 * _texture(rng, height, width)
                 for n in names if n not in out}
  out.update({n: b.copy() for n, b in backgrounds.items()})
  label = np.full((height, width), LABEL_OFFSET, np.uint8)  # Background: class 0.
  instance = np.zeros((height, width), np.int32)
  for k in range(1, int(rng.integers(2, 6)) + 1):
    mask = _shape_mask(rng, height, width)
    cls = int(rng.integers(2 ** len(names)))
    for m, name in enumerate(names):
      bit = (cls >> m) & 1
      if name == 'rgb':
        colour = (_COOL if bit else _WARM) * rng.uniform(0.65, 1.15) + rng.uniform(-20, 20, 3)
        out['rgb'][mask] = (colour + _texture(rng, height, width)[..., None])[mask]
      elif name == 'depth':
        offset = (1 if bit else -1) * rng.uniform(350, 700) + rng.uniform(-100, 100) * u
        out['depth'][mask] = (plane + offset)[mask]
      else:
        offset = (-1 if bit else 1) * rng.uniform(35, 60)
        out[name][mask] = (backgrounds[name] + offset)[mask]
    label[mask] = LABEL_OFFSET + 1 + cls
    instance[mask] = k
  padded = np.pad(instance, 1, mode='edge')
  rim = np.zeros_like(instance, bool)
  for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
    rim |= padded[dy:dy + height, dx:dx + width] != instance
  label[rim & (instance > 0)] = 0
  light = 1 + rng.uniform(-0.2, 0.2) * u + rng.uniform(-0.2, 0.2) * v
  arrays = {'label': label}
  for name in names:
    if name == 'rgb':
      rgb = out['rgb'] * light[..., None] + rng.normal(0, 6, out['rgb'].shape)
      arrays['rgb'] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    elif name == 'depth':
      depth = out['depth'] + rng.normal(0, 12, (height, width))
      depth[rng.random((height, width)) < 0.005] = 0
      arrays['depth'] = np.clip(np.rint(depth), 0, 65535).astype(np.uint16)
    else:
      arrays[name] = np.clip(np.rint(out[name] + rng.normal(0, 3, (height, width))), 0,
                             255).astype(np.uint8)
  return arrays


def write_dataset(out_dir: os.PathLike | str, modality_folders: dict, num_train: int = 200,
                  num_val: int = 50, height: int = 96, width: int = 128, seed: int = 0,
                  label_folder: str = 'Label', list_files: dict | None = None) -> None:
  """Writes the modality folders, the label folder and the list files to `out_dir`.

  Sample i (train first, then val) is drawn from np.random.default_rng([seed, i]), so a sample
  does not depend on how many others are written. The list files come last, so a train list
  means a complete dataset.
  """
  if num_train < 1 or num_val < 1:
    raise ValueError(f'Need at least one train and one val image, got {num_train}, {num_val}.')
  if not modality_folders:
    raise ValueError('Need at least one modality.')
  list_files = list_files or {'train': 'train.txt', 'val': 'test.txt'}
  lines = {'train': [], 'val': []}
  for i in range(num_train + num_val):
    stem = f'{i + 1:06d}'
    arrays = render(np.random.default_rng([seed, i]), modality_folders, height, width)
    for name, folder in modality_folders.items():
      ext = {'rgb': '.jpg'}.get(name, '.png')
      layout_lib.write_image(os.path.join(out_dir, folder, stem + ext), arrays[name])
    layout_lib.write_image(os.path.join(out_dir, label_folder, stem + '.png'), arrays['label'])
    line = f'{modality_folders["rgb"]}/{stem}.jpg' if 'rgb' in modality_folders else stem
    lines['train' if i < num_train else 'val'].append(line)
  for split, split_lines in lines.items():
    with open(os.path.join(out_dir, list_files[split]), 'w') as f:
      f.write(''.join(line + '\n' for line in split_lines))


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--modalities', default='rgb,depth,thermal',
                      help='--kind=rgbx: comma-separated modality names, each written to its '
                      'folder (RGB/, Depth/, Thermal/, ...); default rgb,depth,thermal.')


def write_from_flags(args: argparse.Namespace) -> str:
  """Writes the set that the CLI's flags describe; returns the line it prints."""
  names = [n.strip() for n in args.modalities.split(',') if n.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f'--modalities={args.modalities!r}: give distinct names, e.g. '
                     'rgb,depth,thermal')
  write_dataset(args.out, {n: default_folder(n) for n in names}, args.num_train, args.num_val,
                args.height, args.width, args.seed)
  return (f'Wrote {args.num_train} train and {args.num_val} val RGB-X samples of {args.height}x'
          f'{args.width} ({", ".join(names)}; {num_classes(names)} classes, label offset '
          f'{LABEL_OFFSET}: {", ".join(class_names(names))}) to {args.out}')
