"""Small synthetic datasets: RGB-D segmentation (NYUDv2 or Cityscapes layout), Taskonomy scenes.

It exists so that tests and the demo exercise the real builder and pipeline in minutes on a CPU,
and so that fusion has something to win: object classes are the product of a colour group
(warm / cool) and a depth relation to the background (nearer / farther). Two classes of one colour
differ only in depth, two classes of one depth relation differ only in colour, so an RGB-only or a
depth-only model cannot separate all five classes, while a fused one can. Object shapes
(ellipses, rotated rectangles, triangles, polygons), sizes, colours, textures, the tilt of the
background plane and the lighting all vary, with pixel noise on colour and on depth and a few
missing (zero) depth readings as with a Kinect. Object boundaries are labelled with the ignore
label 255, as NYUDv2 leaves many boundaries unlabelled.

Depth is written as 16-bit PNG in millimetres (about 1000..5000), so the pipeline's x/5000 gives
values of order one, as it does for NYUDv2.

  python -m asymfusion_jax.data.synthetic --out /tmp/synthetic_rgbd --num_train 200 --num_val 50

With --kind=taskonomy it writes instead a synthetic Taskonomy set for image translation, every
domain rendered from one 3D scene (see `synthetic_taskonomy` for what each domain encodes):

  python -m asymfusion_jax.data.synthetic --kind=taskonomy --out /tmp/synthetic_taskonomy \
      --num_train 200 --num_val 50 --size 96

With --kind=cityscapes it writes street scenes in the Cityscapes layout (leftImg8bit/,
disparity/, gtFine/; see `synthetic_cityscapes`), 64x128 by default:

  python -m asymfusion_jax.data.synthetic --kind=cityscapes --out /tmp/synthetic_cityscapes

With --kind=rgbx it writes any modalities in the RGB-X layout (RGB/, Depth/, Thermal/, Label/,
train.txt, test.txt), classes that need every modality (see `rgbx.synthetic`):

  python -m asymfusion_jax.data.synthetic --kind=rgbx --modalities=rgb,depth,thermal --out DIR
"""

import argparse
import os

import cv2
import numpy as np

from asymfusion_jax.data import layout
from asymfusion_jax.data import synthetic_cityscapes
from asymfusion_jax.data import synthetic_taskonomy
from asymfusion_jax.data import taskonomy

CLASS_NAMES = ('background', 'warm_near', 'warm_far', 'cool_near', 'cool_far')
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255

# Object class -> (RGB colour of its group, sign of its depth offset from the background plane).
_WARM = (205.0, 80.0, 55.0)
_COOL = (55.0, 95.0, 205.0)
OBJECT_CLASSES = {1: (_WARM, -1), 2: (_WARM, 1), 3: (_COOL, -1), 4: (_COOL, 1)}

_SHAPES = ('ellipse', 'rectangle', 'triangle', 'polygon')


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A zero-mean float (H, W) pattern: stripes or smooth blotches, of random strength."""
  if rng.random() < 0.5:
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    yy, xx = np.mgrid[:height, :width]
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period)
    return rng.uniform(5, 20) * np.sin(phase + rng.uniform(0, 2 * np.pi))
  noise = cv2.GaussianBlur(rng.normal(size=(height, width)), (0, 0), rng.uniform(1.5, 4))
  return rng.uniform(10, 25) * noise / max(float(noise.std()), 1e-6)


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A bool (H, W) mask of one randomly placed object of random shape and size."""
  mask = np.zeros((height, width), np.uint8)
  cx, cy = rng.uniform(0, width), rng.uniform(0, height)
  radius = rng.uniform(0.12, 0.35) * min(height, width)
  shape = _SHAPES[rng.integers(len(_SHAPES))]
  if shape == 'ellipse':
    axes = (max(2, round(radius)), max(2, round(radius * rng.uniform(0.4, 1.0))))
    cv2.ellipse(mask, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
  elif shape == 'rectangle':
    box = ((cx, cy), (2 * radius, 2 * radius * rng.uniform(0.3, 1.0)), rng.uniform(0, 180))
    cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
  else:
    count = 3 if shape == 'triangle' else rng.integers(5, 8)
    # Evenly spread corners with jitter: no slivers too thin to learn at this image size.
    angles = rng.uniform(0, 2 * np.pi) + (np.arange(count) + rng.uniform(-0.25, 0.25, count)) * (
        2 * np.pi / count)
    radii = radius * rng.uniform(0.6, 1.0, count)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
  return mask.astype(bool)


def render_example(rng: np.random.Generator, height: int,
                   width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One example: (rgb uint8 (H, W, 3), depth uint16 (H, W) in mm, label uint8 (H, W))."""
  yy, xx = np.mgrid[:height, :width]
  v, u = yy / height - 0.5, xx / width - 0.5

  # Background: a tilted plane of muted, textured colour.
  plane = rng.uniform(1800, 3500) - rng.uniform(0, 1500) * v + rng.uniform(-600, 600) * u
  depth = plane.copy()
  grey = rng.uniform(90, 180) + rng.uniform(-15, 15, 3)
  rgb = grey + _texture(rng, height, width)[..., None]
  label = np.zeros((height, width), np.uint8)
  instance = np.zeros((height, width), np.int32)

  # Objects, later ones occluding earlier ones.
  for k in range(1, rng.integers(2, 6) + 1):
    mask = _shape_mask(rng, height, width)
    cls = int(rng.integers(1, NUM_CLASSES))
    colour, sign = OBJECT_CLASSES[cls]
    colour = np.asarray(colour) * rng.uniform(0.65, 1.15) + rng.uniform(-20, 20, 3)
    texture = _texture(rng, height, width)[..., None]
    rgb[mask] = (colour + texture)[mask]
    offset = sign * rng.uniform(350, 700) + rng.uniform(-100, 100) * u + rng.uniform(-100, 100) * v
    depth[mask] = (plane + offset)[mask]
    label[mask] = cls
    instance[mask] = k

  # Unlabelled one-pixel rims on the object side of every object boundary.
  padded = np.pad(instance, 1, mode='edge')
  rim = np.zeros_like(instance, bool)
  for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
    rim |= padded[dy:dy + height, dx:dx + width] != instance
  label[rim & (instance > 0)] = IGNORE_LABEL

  # Lighting, sensor noise and missing depth.
  light = 1 + rng.uniform(-0.2, 0.2) * u + rng.uniform(-0.2, 0.2) * v
  rgb = rgb * light[..., None] + rng.normal(0, 6, rgb.shape)
  depth = depth + rng.normal(0, 12, depth.shape)
  depth[rng.random(depth.shape) < 0.005] = 0
  return (np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
          np.clip(np.rint(depth), 0, 65535).astype(np.uint16), label)


def write_dataset(out_dir: os.PathLike | str, num_train: int = 200, num_val: int = 50,
                  height: int = 96, width: int = 128, seed: int = 0) -> None:
  """Writes rgb/, depth/, masks/, train.txt and val.txt to `out_dir`.

  Image i (train first, then val) is drawn from np.random.default_rng([seed, i]), so an image
  does not depend on how many others are written.
  """
  if num_train < 1 or num_val < 1:
    raise ValueError(f'Need at least one train and one val image, got {num_train}, {num_val}.')
  os.makedirs(out_dir, exist_ok=True)
  lines = {'train': [], 'val': []}
  for i in range(num_train + num_val):
    rgb, depth, label = render_example(np.random.default_rng([seed, i]), height, width)
    split = 'train' if i < num_train else 'val'
    lines[split].append(layout.write_example(out_dir, f'{i + 1:06d}', rgb, depth, label))
  for split, split_lines in lines.items():
    layout.write_list(out_dir, split, split_lines)


def write_taskonomy(out_dir: os.PathLike | str, num_train: int = 200, num_val: int = 50,
                    size: int = 96, seed: int = 0) -> None:
  """Writes a synthetic Taskonomy set of size x size scenes to `out_dir`.

  One folder per domain of `synthetic_taskonomy.DOMAINS` with
  `{domain}/point_{i}_view_0_domain_{domain}.png`, and train.txt / val.txt whose lines carry the
  `{domain}` placeholder. Scene i (train first, then val) is drawn from
  np.random.default_rng([seed, i]), so a scene does not depend on how many others are written.
  """
  if num_train < 1 or num_val < 1:
    raise ValueError(f'Need at least one train and one val image, got {num_train}, {num_val}.')
  if size < 8:
    raise ValueError(f'Synthetic Taskonomy images need a side of at least 8 pixels, got {size}.')
  os.makedirs(out_dir, exist_ok=True)
  for domain in synthetic_taskonomy.DOMAINS:
    os.makedirs(os.path.join(out_dir, domain), exist_ok=True)
  lines = {'train': [], 'val': []}
  for i in range(num_train + num_val):
    images = synthetic_taskonomy.render_taskonomy(np.random.default_rng([seed, i]), size)
    for domain, image in images.items():
      layout.write_png(os.path.join(out_dir, taskonomy.file_name(domain, i, 0)), image)
    lines['train' if i < num_train else 'val'].append(
        taskonomy.file_name(taskonomy.PLACEHOLDER, i, 0))
  for split, split_lines in lines.items():  # Last, so a list file means a complete set.
    layout.write_list(out_dir, split, split_lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kind', choices=('nyudv2', 'taskonomy', 'cityscapes', 'rgbx'),
                      default='nyudv2',
                      help='nyudv2 (default): RGB-D segmentation in the NYUDv2 layout; taskonomy: '
                      'rendered scenes in the Taskonomy layout, for image translation; '
                      'cityscapes: street scenes in the Cityscapes layout; rgbx: any modalities '
                      '(--modalities) in the RGB-X layout of DFormer (data/rgbx/synthetic.py).')
  parser.add_argument('--modalities', default='rgb,depth,thermal',
                      help='--kind=rgbx: comma-separated modality names, each written to its '
                      'folder (RGB/, Depth/, Thermal/, ...); default rgb,depth,thermal.')
  parser.add_argument('--out', required=True, help='Folder to write the dataset to.')
  # Underscores, as every other CLI here spells its flags; the dashed spellings still work.
  parser.add_argument('--num_train', '--num-train', type=int, default=200,
                      help='Training images (default 200).')
  parser.add_argument('--num_val', '--num-val', type=int, default=50,
                      help='Validation images (default 50).')
  parser.add_argument('--height', type=int, default=None,
                      help='Image height (default 96, or 64 for --kind=cityscapes).')
  parser.add_argument('--width', type=int, default=128,
                      help='Image width (default 128).')
  parser.add_argument('--size', type=int, default=96,
                      help='Side of the square Taskonomy images (default 96; --kind=taskonomy).')
  parser.add_argument('--seed', type=int, default=0, help='Random seed (default 0).')
  args = parser.parse_args(argv)
  if args.kind == 'rgbx':
    from asymfusion_jax.data.rgbx import synthetic as rgbx  # pylint: disable=g-import-not-at-top
    names = [n.strip() for n in args.modalities.split(',') if n.strip()]
    if not names or len(set(names)) != len(names):
      parser.error(f'--modalities={args.modalities!r}: give distinct names, e.g. rgb,depth,thermal')
    height = 96 if args.height is None else args.height
    rgbx.write_dataset(args.out, {n: rgbx.default_folder(n) for n in names}, args.num_train,
                       args.num_val, height, args.width, args.seed)
    print(f'Wrote {args.num_train} train and {args.num_val} val RGB-X samples of {height}x'
          f'{args.width} ({", ".join(names)}; {rgbx.num_classes(names)} classes, label offset '
          f'{rgbx.LABEL_OFFSET}: {", ".join(rgbx.class_names(names))}) to {args.out}')
    return
  if args.kind == 'taskonomy':
    write_taskonomy(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f'Wrote {args.num_train} train and {args.num_val} val Taskonomy scenes of '
          f'{args.size}x{args.size} ({", ".join(synthetic_taskonomy.DOMAINS)}) to {args.out}')
    return
  if args.kind == 'cityscapes':
    height = 64 if args.height is None else args.height
    synthetic_cityscapes.write_cityscapes(args.out, args.num_train, args.num_val, height,
                                          args.width, args.seed)
    print(f'Wrote {args.num_train} train and {args.num_val} val Cityscapes-layout scenes of '
          f'{height}x{args.width} to {args.out}')
    return
  args.height = 96 if args.height is None else args.height
  write_dataset(args.out, args.num_train, args.num_val, args.height, args.width, args.seed)
  print(f'Wrote {args.num_train} train and {args.num_val} val images of {args.height}x{args.width} '
        f'({NUM_CLASSES} classes) to {args.out}')


if __name__ == '__main__':
  main()
