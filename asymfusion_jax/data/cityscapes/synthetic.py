"""Synthetic street scenes in the Cityscapes layout, for the Cityscapes demo and tests.

Each scene is a street seen from a car: sky on top (no disparity, as in Cityscapes), a band of
buildings at a far, constant disparity, and a road whose disparity grows towards the bottom of
the image (a ground plane). Objects stand on the road, nearer than the buildings: their
disparity is that of the road where they stand, so near objects are large and low in the image.
As in the NYUDv2-style synthetic set, object classes are the product of a colour group and a
depth relation, so neither modality alone separates all of them: car (warm, near) and truck
(warm, far), person (cool, near) and rider (cool, far), where 'far' objects stand further up the
road. Object rims and a band of void ('ego vehicle', label id 1) at the bottom are unlabelled.

Files are written with Cityscapes names (`cityscapes.Entry.path`), in two synthetic cities per
split; labels are Cityscapes label ids, disparity is 16-bit with d = 256 p + 1 for a disparity of
p pixels and 0 where there is none.

  python -m asymfusion_jax.data.synthetic --kind=cityscapes --out /tmp/synthetic_cityscapes
"""

import argparse
import os

import cv2
import numpy as np

from asymfusion_jax.data import layout
from asymfusion_jax.data.cityscapes import layout as cityscapes

# Label ids (cityscapesScripts' labels.py).
SKY, BUILDING, ROAD, EGO_VEHICLE = 23, 11, 7, 1
# Object label id -> (RGB colour of its group, whether it stands near).
OBJECTS = {26: ((205.0, 80.0, 55.0), True),    # car
           27: ((205.0, 80.0, 55.0), False),   # truck
           24: ((55.0, 95.0, 205.0), True),    # person
           25: ((55.0, 95.0, 205.0), False)}   # rider
CITIES = ('synthville', 'fakeburg')
# What the synthetic CLI (asymfusion_jax.data.synthetic) says of --kind=cityscapes, its default
# height.
DESCRIPTION = 'street scenes in the Cityscapes layout'
DEFAULT_HEIGHT = 64


def render_scene(rng: np.random.Generator, height: int,
                 width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rgb uint8 (H, W, 3), disparity uint16 (H, W), label ids uint8 (H, W)) of one scene."""
  rows = np.arange(height, dtype=np.float64)[:, None] * np.ones((1, width))
  horizon = int(height * rng.uniform(0.35, 0.5))
  skyline = horizon - (rng.uniform(0.1, 0.25, size=width // 8 + 2) * height).astype(int)
  skyline = np.repeat(skyline, 8)[:width]
  # Disparity in pixels: buildings far and flat; the road grows linearly below the horizon.
  max_disparity = rng.uniform(40, 100)
  road = max_disparity * np.clip((rows - horizon) / max(height - horizon, 1), 0, 1) + 2.0
  building_disparity = rng.uniform(1.0, 2.0)
  label = np.full((height, width), ROAD, np.uint8)
  disparity = road.copy()
  building = rows < horizon
  label[building] = BUILDING
  disparity[building] = building_disparity
  sky = rows < skyline[None, :]
  label[sky] = SKY
  disparity[sky] = 0
  rgb = np.empty((height, width, 3))
  rgb[...] = (85, 85, 90) + rng.uniform(-10, 10, 3)
  rgb[building] = (130, 120, 110) + rng.uniform(-20, 20, 3)
  rgb[sky] = (120, 160, 215) + rng.uniform(-15, 15, 3)
  instance = np.zeros((height, width), np.int32)
  for k in range(1, rng.integers(2, 6) + 1):
    cls = int(rng.choice(list(OBJECTS)))
    colour, near = OBJECTS[cls]
    # Feet on the road: near objects low in the image, far ones just below the horizon.
    lo, hi = (0.6, 0.95) if near else (0.1, 0.35)
    foot = horizon + int(rng.uniform(lo, hi) * (height - horizon))
    disp = road[min(foot, height - 1), 0]
    size = disp / max_disparity * height * rng.uniform(0.35, 0.6) + 3
    box_h, box_w = int(size), int(size * rng.uniform(0.5, 1.6))
    x0 = int(rng.uniform(-box_w / 2, width - box_w / 2))
    mask = np.zeros((height, width), np.uint8)
    cv2.rectangle(mask, (x0, foot - box_h), (x0 + box_w, foot), 1, -1)
    mask = mask.astype(bool)
    label[mask] = cls
    disparity[mask] = disp
    rgb[mask] = np.asarray(colour) * rng.uniform(0.7, 1.1) + rng.uniform(-20, 20, 3)
    instance[mask] = k
  padded = np.pad(instance, 1, mode='edge')
  rim = np.zeros_like(instance, bool)
  for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
    rim |= padded[dy:dy + height, dx:dx + width] != instance
  label[rim & (instance > 0)] = 0  # 'unlabeled'
  label[int(height * 0.95):] = EGO_VEHICLE
  rgb = rgb + rng.normal(0, 6, rgb.shape)
  disparity = np.where(disparity > 0, disparity + rng.normal(0, 0.3, disparity.shape), 0)
  encoded = np.where(disparity > 0, np.rint(np.maximum(disparity, 0) * 256) + 1, 0)
  return (np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
          np.clip(encoded, 0, 65535).astype(np.uint16), label)


def write_cityscapes(out_dir: os.PathLike | str, num_train: int = 40, num_val: int = 10,
                     height: int = 64, width: int = 128, seed: int = 0) -> None:
  """Writes leftImg8bit/, disparity/ and gtFine/ of num_train + num_val scenes to `out_dir`.

  Scene i (train first, then val) is drawn from np.random.default_rng([seed, i]), its RGB file
  written first, so an interrupted write leaves an image whose partner files are missing, which
  `cityscapes.list_examples` reports.
  """
  if num_train < 1 or num_val < 1:
    raise ValueError(f'Need at least one train and one val image, got {num_train}, {num_val}.')
  if height < 16 or width < 16:
    raise ValueError(f'Synthetic Cityscapes images need at least 16x16 pixels, got '
                     f'{height}x{width}.')
  for i in range(num_train + num_val):
    split = 'train' if i < num_train else 'val'
    city = CITIES[i % len(CITIES)]
    entry = cityscapes.Entry(split, city, f'{city}_000000_{i:06d}')
    rgb, disparity, label = render_scene(np.random.default_rng([seed, i]), height, width)
    for folder, image in zip(cityscapes.FOLDERS, (rgb, disparity, label)):
      path = os.path.join(out_dir, entry.path(folder))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      layout.write_png(path, image)


def write_from_flags(args: argparse.Namespace) -> str:
  """Writes the set that the CLI's flags describe; returns the line it prints."""
  write_cityscapes(args.out, args.num_train, args.num_val, args.height, args.width, args.seed)
  return (f'Wrote {args.num_train} train and {args.num_val} val Cityscapes-layout scenes of '
          f'{args.height}x{args.width} to {args.out}')
