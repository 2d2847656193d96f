"""Synthetic Taskonomy-like scenes: every domain rendered from one ray-cast 3D scene.

Each scene is a room corner seen by a pinhole camera (60 degree field of view, 1.2 to 1.8 m high,
pitched 3 to 12 degrees down): a textured ground plane, a back wall 10 to 14 m away, and two to
five objects standing on the ground (spheres and boxes turned about the vertical axis), lit by a
directional light that varies per scene. Rays are cast analytically (no meshes), so a 96x96 scene
renders in milliseconds. The domains, each a function of that one scene:

- depth_euclidean: distance from the camera centre to the surface; depth_zbuffer: distance along
  the optical axis. 16-bit PNG in Taskonomy's units of 1/512 m.
- normal: the surface normal in camera coordinates (R: right, G: up, B: towards the camera),
  8-bit RGB centred at 127 (`127 + 127 * n`).
- reshading: the diffuse shading of the scene's light, `0.25 + 0.75 * max(0, n . l)`, as 8-bit
  grey (`255 * shading`). Geometry and light only: no colour, no texture.
- rgb: albedo x shading (rounded to 8 bits). The albedo of an object is its colour, which runs
  from warm (near, 3 m) to cool (far, 10 m) with the object's distance, times a stripe texture of
  random period and direction; the ground has a checkerboard, the wall horizontal bands.
- edge_texture: the gradient magnitude (Sobel, after a 1-pixel Gaussian blur) of the rgb image's
  grey level, 16-bit at the scale of Taskonomy's (11355 for a unit gradient).
- edge_occlusion: depth discontinuities, where the log-depth gradient exceeds 0.1 per pixel,
  blurred by one pixel, 16-bit at Taskonomy's scale (about 11584 along a sharp edge).

So no single input domain determines rgb: reshading carries the shading but not the colour or
the texture; depth carries the distance that sets the colour and (through its derivatives) the
normals, but not the light or the texture; normal carries the shading up to the unknown light;
edge_texture carries the texture and the outlines but no colour. Combining domains helps, which
is what the fusion models are for.
"""

import argparse
import os

import cv2
import numpy as np

from asymfusion_jax.data import layout
from asymfusion_jax.data.taskonomy import layout as taskonomy

AMBIENT = 0.25
NEAR_COLOUR = np.array((220.0, 95.0, 60.0))  # Albedo of objects 3 m away...
FAR_COLOUR = np.array((60.0, 115.0, 215.0))  # ... and 10 m away, linear in between.
EDGE_TEXTURE_SCALE = 11355.0
EDGE_OCCLUSION_SCALE = 11584.0
# What the synthetic CLI (asymfusion_jax.data.synthetic) says of --kind=taskonomy.
DESCRIPTION = 'rendered scenes in the Taskonomy layout, for image translation'


def _normalise(v: np.ndarray) -> np.ndarray:
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotation_y(angle: float) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _objects(rng: np.random.Generator) -> list[dict]:
  objects = []
  for _ in range(rng.integers(2, 6)):
    z = rng.uniform(3.0, 9.0)
    x = rng.uniform(-0.45, 0.45) * z
    stripe = _normalise(rng.normal(size=3))
    common = {'colour': np.clip(
        NEAR_COLOUR + (FAR_COLOUR - NEAR_COLOUR) * np.clip((z - 3.0) / 7.0, 0, 1)
        + rng.uniform(-12, 12, 3), 0, 255),
              'stripe': stripe, 'period': rng.uniform(0.15, 0.4), 'phase': rng.uniform(0, 1)}
    if rng.random() < 0.5:
      r = rng.uniform(0.3, 0.9)
      objects.append({'kind': 'sphere', 'centre': np.array([x, r, z]), 'radius': r, **common})
    else:
      half = np.array([rng.uniform(0.25, 0.8), rng.uniform(0.3, 1.2), rng.uniform(0.25, 0.8)])
      objects.append({'kind': 'box', 'centre': np.array([x, half[1], z]), 'half': half,
                      'rotation': _rotation_y(rng.uniform(0, np.pi / 2)), **common})
  return objects


def _hit_sphere(origin, dirs, obj):
  oc = origin - obj['centre']
  b = dirs @ oc
  disc = b * b - (oc @ oc - obj['radius'] ** 2)
  t = -b - np.sqrt(np.maximum(disc, 0.0))
  hit = (disc > 0) & (t > 1e-6)
  normal = _normalise(origin + np.where(hit, t, 1.0)[..., None] * dirs - obj['centre'])
  return np.where(hit, t, np.inf), normal  # Normals of missed rays are never used.


def _hit_box(origin, dirs, obj):
  rot = obj['rotation']  # Local -> world; rows of rot.T map world -> local.
  o = rot.T @ (origin - obj['centre'])
  d = dirs @ rot  # Each row: rot.T @ dir.
  with np.errstate(divide='ignore', invalid='ignore'):
    t1 = (-obj['half'] - o) / d
    t2 = (obj['half'] - o) / d
  near, far = np.minimum(t1, t2), np.maximum(t1, t2)
  t_near, t_far = near.max(-1), far.min(-1)
  t = np.where((t_far >= t_near) & (t_near > 1e-6), t_near, np.inf)
  axis = near.argmax(-1)
  local = np.zeros_like(dirs)
  np.put_along_axis(local, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)),
                    -1)
  return t, local @ rot.T


def render_taskonomy(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
  """One scene's raw domain images, as their PNG files hold them (see the module docstring)."""
  height = rng.uniform(1.2, 1.8)
  pitch = np.deg2rad(rng.uniform(3, 12))
  wall = rng.uniform(10.0, 14.0)
  forward = np.array([0.0, -np.sin(pitch), np.cos(pitch)])
  up = np.array([0.0, np.cos(pitch), np.sin(pitch)])
  right = np.array([1.0, 0.0, 0.0])
  focal = (size / 2) / np.tan(np.deg2rad(30))
  coords = (np.arange(size) + 0.5 - size / 2) / focal
  xn, yn = np.meshgrid(coords, coords)
  dirs = _normalise(xn[..., None] * right - yn[..., None] * up + forward)
  origin = np.array([0.0, height, 0.0])

  # Ground (y = 0) and back wall (z = wall): every ray hits one of them.
  with np.errstate(divide='ignore'):
    t_ground = np.where(dirs[..., 1] < 0, -height / dirs[..., 1], np.inf)
  t_wall = wall / dirs[..., 2]
  t = np.minimum(t_ground, t_wall)
  surface = np.where(t_ground < t_wall, -1, -2)
  normal = np.where((t_ground < t_wall)[..., None], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0])
  objects = _objects(rng)
  for k, obj in enumerate(objects):
    t_obj, n_obj = (_hit_sphere if obj['kind'] == 'sphere' else _hit_box)(origin, dirs, obj)
    closer = t_obj < t
    t = np.where(closer, t_obj, t)
    surface = np.where(closer, k, surface)
    normal = np.where(closer[..., None], n_obj, normal)
  point = origin + t[..., None] * dirs

  # Albedo: checkerboard ground, banded wall, objects' distance colour times stripes.
  ground_colour = rng.uniform(110, 190) + rng.uniform(-15, 15, 3)
  period = rng.uniform(0.6, 1.2)
  checker = (np.floor(point[..., 0] / period) + np.floor(point[..., 2] / period)) % 2
  albedo = np.where((surface == -1)[..., None],
                    ground_colour * (0.85 + 0.3 * checker[..., None]), 0.0)
  wall_colour = rng.uniform(150, 230) + rng.uniform(-10, 10, 3)
  bands = (np.floor(point[..., 1] / rng.uniform(0.4, 0.9)) % 2)[..., None]
  albedo = np.where((surface == -2)[..., None], wall_colour * (0.9 + 0.2 * bands), albedo)
  for k, obj in enumerate(objects):
    phase = (point - obj['centre']) @ obj['stripe'] / obj['period'] + obj['phase']
    stripes = (0.8 + 0.4 * (np.floor(phase) % 2))[..., None]
    albedo = np.where((surface == k)[..., None], obj['colour'] * stripes, albedo)

  light = _normalise(np.array([rng.uniform(-1, 1), rng.uniform(0.8, 1.5), rng.uniform(-1, -0.2)]))
  shading = AMBIENT + (1 - AMBIENT) * np.maximum(normal @ light, 0.0)
  rgb = np.clip(np.rint(albedo * shading[..., None]), 0, 255).astype(np.uint8)
  reshading = np.clip(np.rint(255 * shading), 0, 255).astype(np.uint8)
  camera_normal = np.stack([normal @ right, normal @ up, -(normal @ forward)], -1)
  normal_png = np.clip(np.rint(127 + 127 * camera_normal), 0, 255).astype(np.uint8)

  grey = cv2.GaussianBlur(rgb.astype(np.float64).mean(-1) / 255, (0, 0), 1.0)
  texture = np.hypot(cv2.Sobel(grey, cv2.CV_64F, 1, 0), cv2.Sobel(grey, cv2.CV_64F, 0, 1))
  log_depth = np.log(t)
  jump = np.hypot(cv2.Sobel(log_depth, cv2.CV_64F, 1, 0, ksize=1),
                  cv2.Sobel(log_depth, cv2.CV_64F, 0, 1, ksize=1))
  # The blurred two-pixel-wide edge peaks at about 0.5; doubled, a sharp edge reaches the scale.
  occlusion = 2 * cv2.GaussianBlur((jump > 0.1).astype(np.float64), (0, 0), 1.0)
  to16 = lambda x: np.clip(np.rint(x), 0, 65535).astype(np.uint16)
  return {
      'rgb': rgb,
      'reshading': reshading,
      'normal': normal_png,
      'depth_euclidean': taskonomy.encode_depth(t),
      'depth_zbuffer': taskonomy.encode_depth(t * (dirs @ forward)),
      'edge_texture': to16(texture * EDGE_TEXTURE_SCALE),
      'edge_occlusion': to16(np.clip(occlusion, 0, 1) * EDGE_OCCLUSION_SCALE),
  }


DOMAINS = ('rgb', 'reshading', 'normal', 'depth_euclidean', 'depth_zbuffer', 'edge_texture',
           'edge_occlusion')


def write_taskonomy(out_dir: os.PathLike | str, num_train: int = 200, num_val: int = 50,
                    size: int = 96, seed: int = 0) -> None:
  """Writes a synthetic Taskonomy set of size x size scenes to `out_dir`.

  One folder per domain of `DOMAINS` with
  `{domain}/point_{i}_view_0_domain_{domain}.png`, and train.txt / val.txt whose lines carry the
  `{domain}` placeholder. Scene i (train first, then val) is drawn from
  np.random.default_rng([seed, i]), so a scene does not depend on how many others are written.
  """
  if num_train < 1 or num_val < 1:
    raise ValueError(f'Need at least one train and one val image, got {num_train}, {num_val}.')
  if size < 8:
    raise ValueError(f'Synthetic Taskonomy images need a side of at least 8 pixels, got {size}.')
  os.makedirs(out_dir, exist_ok=True)
  for domain in DOMAINS:
    os.makedirs(os.path.join(out_dir, domain), exist_ok=True)
  lines = {'train': [], 'val': []}
  for i in range(num_train + num_val):
    images = render_taskonomy(np.random.default_rng([seed, i]), size)
    for domain, image in images.items():
      layout.write_png(os.path.join(out_dir, taskonomy.file_name(domain, i, 0)), image)
    lines['train' if i < num_train else 'val'].append(
        taskonomy.file_name(taskonomy.PLACEHOLDER, i, 0))
  for split, split_lines in lines.items():  # Last, so a list file means a complete set.
    layout.write_list(out_dir, split, split_lines)


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--size', type=int, default=96,
                      help='Side of the square Taskonomy images (default 96; --kind=taskonomy).')


def write_from_flags(args: argparse.Namespace) -> str:
  """Writes the set that the CLI's flags describe; returns the line it prints."""
  write_taskonomy(args.out, args.num_train, args.num_val, args.size, args.seed)
  return (f'Wrote {args.num_train} train and {args.num_val} val Taskonomy scenes of '
          f'{args.size}x{args.size} ({", ".join(DOMAINS)}) to {args.out}')
