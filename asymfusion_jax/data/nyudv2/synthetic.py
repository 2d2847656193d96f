"""A small synthetic RGB-D segmentation dataset in the NYUDv2 layout.

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
"""

import argparse
import os

import cv2
import numpy as np

from asymfusion_jax.data import layout
from asymfusion_jax.data.nyudv2 import layout as nyudv2_layout

CLASS_NAMES = ('background', 'warm_near', 'warm_far', 'cool_near', 'cool_far')
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255
# What the synthetic CLI (asymfusion_jax.data.synthetic) says of --kind=nyudv2, its default height.
DESCRIPTION = 'RGB-D segmentation in the NYUDv2 layout'
DEFAULT_HEIGHT = 96

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
    lines[split].append(nyudv2_layout.write_example(out_dir, f'{i + 1:06d}', rgb, depth, label))
  for split, split_lines in lines.items():
    layout.write_list(out_dir, split, split_lines)


def write_from_flags(args: argparse.Namespace) -> str:
  """Writes the set that the CLI's flags describe; returns the line it prints."""
  write_dataset(args.out, args.num_train, args.num_val, args.height, args.width, args.seed)
  return (f'Wrote {args.num_train} train and {args.num_val} val images of '
          f'{args.height}x{args.width} ({NUM_CLASSES} classes) to {args.out}')
