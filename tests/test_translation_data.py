"""Tests of the Taskonomy data path: layout and decoding, PIL's resize, the TFDS build, the
translation pipeline's batches and the synthetic scenes.

The pipeline tests use a hand-made dataset whose three 8-bit domains hold one random image with
its colour channels permuted differently per domain. Resizing works per channel, so every
domain's batch must be the same permutation of one expected array, computed here from the
documented transform (resize, crop offsets and flip drawn from the example's rng, x / 127.5 - 1).
"""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import ml_collections
import numpy as np
import pytest

from asymfusion_jax.data import batching
from asymfusion_jax.data import layout
from asymfusion_jax.data import pil_resize
from asymfusion_jax.data import synthetic as synthetic_cli
from asymfusion_jax.data.nyudv2 import layout as nyudv2_layout
from asymfusion_jax.data.taskonomy import layout as taskonomy
from asymfusion_jax.data.taskonomy import pipeline as tp
from asymfusion_jax.data.taskonomy import synthetic as synthetic_taskonomy
from tests import tiny

LOAD, CROP = 40, 32
TRAIN_SIZES = [(48, 48), (36, 44), (40, 40), (50, 30), (45, 45)]
VAL_SIZES = [(48, 48), (30, 30), (40, 52), (32, 32), (60, 40)]
# Domain -> the colour-channel permutation of the shared image it holds.
PERMUTATIONS = {'rgb': (0, 1, 2), 'normal': (2, 0, 1), 'principal_curvature': (1, 2, 0)}


def _image(split, k, h, w):
  rng = np.random.default_rng([0 if split == 'train' else 1, k])
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_manual(root, sizes=None):
  sizes = sizes or {'train': TRAIN_SIZES, 'val': VAL_SIZES}
  point = 0
  for split, split_sizes in sizes.items():
    lines = []
    for k, (h, w) in enumerate(split_sizes):
      image = _image(split, k, h, w)
      for domain, perm in PERMUTATIONS.items():
        path = os.path.join(root, taskonomy.file_name(domain, point, k % 3))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        layout.write_png(path, image[..., perm])
      lines.append(taskonomy.file_name(taskonomy.PLACEHOLDER, point, k % 3))
      point += 1
    layout.write_list(root, split, lines)


def _config(root, **overrides):
  c = tiny.translation_config(root, **{
      'modalities': ('normal', 'principal_curvature'), 'target': 'rgb', 'seed': 5,
      'data__synthetic': False, 'data__num_train': len(TRAIN_SIZES),
      'data__num_val': len(VAL_SIZES), 'data__load_size': LOAD, 'crop_size': CROP,
      'batch_size': 2, 'eval_batch_size': 2, **overrides})
  return c


@pytest.fixture(scope='module')
def hand(tmp_path_factory):
  root = tmp_path_factory.mktemp('taskonomy_hand')
  _write_manual(str(root / 'synthetic'))
  config = _config(str(root))
  tp.prepare(config)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ----------------------------------------------------------------------------- decoding


def test_import_does_not_load_tensorflow():
  code = ('import sys; import asymfusion_jax.data.taskonomy; '
          'sys.exit("tensorflow" in sys.modules)')
  assert subprocess.run([sys.executable, '-c', code], check=False, cwd=tiny.REPO).returncode == 0


def test_decode_matches_hand_computed_values():
  depth = np.array([[0, 1, 100, 65535]], np.uint16)
  # log(1 + raw) * 255 / 11.1 = 0, 15.92, 106.02, 254.78: truncated, not rounded; no overflow
  # of 1 + 65535.
  expected_depth = [0, 15, 106, 254]
  for domain in ('depth_euclidean', 'depth_zbuffer'):
    out = taskonomy.decode(domain, depth)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], expected_depth)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
  # raw * 255 / 11355 = 255, 112.29, 1471.7 (clipped), 1.01, 0.99.
  texture = taskonomy.decode('edge_texture', np.array([[11355, 5000, 65535, 45, 44]], np.uint16))
  np.testing.assert_array_equal(texture[0, :, 1], [255, 112, 255, 1, 0])
  # raw * 255 / 11584 = 255, 22.01, 1.01.
  occlusion = taskonomy.decode('edge_occlusion', np.array([[11584, 1000, 46]], np.uint16))
  np.testing.assert_array_equal(occlusion[0, :, 2], [255, 22, 1])
  grey = np.array([[3, 250]], np.uint8)
  np.testing.assert_array_equal(taskonomy.decode('reshading', grey),
                                [[[3, 3, 3], [250, 250, 250]]])
  rgb = np.arange(12, dtype=np.uint8).reshape(1, 4, 3)
  np.testing.assert_array_equal(taskonomy.decode('rgb', rgb), rgb)


def test_decode_refuses_images_that_do_not_fit_the_domain():
  with pytest.raises(ValueError, match='8-bit grey or RGB'):
    taskonomy.decode('rgb', np.zeros((2, 2, 3), np.uint16))
  with pytest.raises(ValueError, match='single-channel'):
    taskonomy.decode('depth_euclidean', np.zeros((2, 2, 3), np.uint16))
  with pytest.raises(ValueError, match='Unknown Taskonomy domain'):
    taskonomy.decode('depth', np.zeros((2, 2), np.uint16))


def test_16_bit_files_are_read_losslessly(tmp_path):
  _write_manual(str(tmp_path), {'train': [(4, 4)], 'val': [(4, 4)]})
  raw = np.array([[0, 1, 100, 65535]] * 4, np.uint16)
  os.makedirs(tmp_path / 'depth_euclidean')
  layout.write_png(tmp_path / taskonomy.file_name('depth_euclidean', 0, 0), raw)
  entry = taskonomy.read_list(tmp_path, 'train')[0]
  images = taskonomy.read_example(tmp_path, entry, ('rgb', 'depth_euclidean'))
  np.testing.assert_array_equal(images['depth_euclidean'][0, :, 0], [0, 15, 106, 254])
  np.testing.assert_array_equal(images['rgb'], _image('train', 0, 4, 4))


def _broken(root, kind):
  _write_manual(str(root), {'train': [(8, 8), (8, 8)], 'val': [(8, 8)]})
  target = root / taskonomy.file_name('normal', 1, 1)
  if kind == 'missing':
    target.unlink()
  elif kind == 'unreadable':
    target.write_bytes(b'not a png')
  elif kind == 'mis-sized':
    layout.write_png(target, np.zeros((8, 7, 3), np.uint8))
  elif kind == 'unusable':
    layout.write_png(target, np.zeros((8, 8, 3), np.uint16))
  return str(target.relative_to(root))


@pytest.mark.parametrize('kind', ['missing', 'unreadable', 'mis-sized', 'unusable'])
def test_bad_file_error_names_file_and_line(tmp_path, kind):
  file = _broken(tmp_path / 'synthetic', kind)
  with pytest.raises(layout.LayoutError, match=r'train\.txt line 2') as error:
    tp.prepare(_config(str(tmp_path), data__num_train=2, data__num_val=1))
  assert file in str(error.value) and kind.split('-')[-1] in str(error.value).lower()


def test_list_line_without_the_placeholder_is_refused(tmp_path):
  (tmp_path / 'val.txt').write_text('\nrgb/point_1_view_0_domain_rgb.png\n')
  with pytest.raises(layout.LayoutError, match=r"val\.txt line 2 .*\{domain\} placeholder"):
    taskonomy.read_list(tmp_path, 'val')


# ----------------------------------------------------------------------------- resize


def test_resize_hand_computed():
  # Halving [0, 255]: one output pixel centred between them with weights 1/2, 1/2; PIL's fixed
  # point rounds 127.5 up.
  assert pil_resize.resize_bilinear(np.array([[0, 255]], np.uint8), (1, 1))[0, 0] == 128
  image = np.array([[10, 20, 30]], np.uint8)
  np.testing.assert_array_equal(pil_resize.resize_bilinear(image, (1, 3)), image)  # Identity.


@pytest.mark.parametrize('shape,size', [
    ((512, 512, 3), (286, 286)), ((512, 512, 3), (256, 256)), ((96, 96, 3), (286, 286)),
    ((37, 53), (61, 20)), ((20, 17, 3), (33, 70)), ((64, 48, 3), (64, 30)), ((9, 31), (9, 4)),
    ((50, 50, 3), (20, 30)), ((50, 50, 3), (72, 72))])
def test_resize_equals_pil_bilinear(shape, size):
  # Pillow 13 runs the vertical pass first for some shapes whose height shrinks more than their
  # width (python-pillow/Pillow#9549), which moves some pixels by one; these shapes keep the
  # horizontal-first order of every release, the order implemented.
  pil = pytest.importorskip('PIL.Image')
  image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
  expected = np.asarray(pil.fromarray(image).resize(size[::-1], pil.BILINEAR))
  np.testing.assert_array_equal(pil_resize.resize_bilinear(image, size), expected)


# ----------------------------------------------------------------------------- pipeline


def _expected_train_row(config, step, row):
  n = len(TRAIN_SIZES)
  index, key = batching.train_schedule(config.seed, step, config.batch_size, n)[row]
  x, y, flip = tp.draw_augmentation(np.random.default_rng(key), LOAD, CROP)
  image = pil_resize.resize_bilinear(_image('train', index, *TRAIN_SIZES[index]), (LOAD, LOAD))
  image = image[y:y + CROP, x:x + CROP]
  return (image[:, ::-1] if flip else image).astype(np.float32) / 127.5 - 1


def test_train_batches_are_exact_and_domains_share_crop_and_flip(hand):
  batches = _take(tp.train_batches(hand), 6)
  flips = set()
  for step, batch in enumerate(batches):
    assert batch['inputs'].shape == (2, 2, CROP, CROP, 3) and batch['inputs'].dtype == np.float32
    assert batch['target'].shape == (2, CROP, CROP, 3)
    for row in range(2):
      expected = _expected_train_row(hand, step, row)
      np.testing.assert_array_equal(batch['target'][row], expected)
      for m, domain in enumerate(hand.modalities):
        np.testing.assert_array_equal(batch['inputs'][m, row], expected[..., PERMUTATIONS[domain]])
      key = batching.train_schedule(hand.seed, step, 2, len(TRAIN_SIZES))[row][1]
      flips.add(tp.draw_augmentation(np.random.default_rng(key), LOAD, CROP)[2])
  assert flips == {True, False}  # Both branches of the flip were exercised.


def test_train_is_deterministic_and_resumable(hand):
  first = _take(tp.train_batches(hand), 5)
  again = _take(tp.train_batches(hand), 5)
  resumed = _take(tp.train_batches(hand, start_step=3), 2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
  for a, b in zip(first[3:], resumed):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['target'], b['target'])
  hand_seed = ml_collections.ConfigDict(hand.to_dict())
  hand_seed.seed = 6
  other = _take(tp.train_batches(hand_seed), 1)[0]
  assert not np.array_equal(other['target'], first[0]['target'])


def test_train_processes_share_the_global_batch(hand):
  config = ml_collections.ConfigDict(hand.to_dict())
  config.batch_size = 4
  whole = _take(tp.train_batches(config), 3)
  parts = [_take(tp.train_batches(config, process_index=i, process_count=2), 3) for i in (0, 1)]
  for step in range(3):
    for key in ('inputs', 'target'):
      axis = 1 if key == 'inputs' else 0
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]], axis=axis)
      np.testing.assert_array_equal(joined, whole[step][key])


@pytest.mark.parametrize('process_count,batch_size', [(1, 2), (2, 4), (1, 5)])
def test_eval_sees_every_val_image_once(hand, process_count, batch_size):
  rows = {}
  for p in range(process_count):
    batches = list(tp.eval_batches(hand, p, process_count, batch_size))
    assert len(batches) == -(-len(VAL_SIZES) // batch_size)
    for k, batch in enumerate(batches):
      local = batch_size // process_count
      assert batch['inputs'].shape == (2, local, CROP, CROP, 3) and batch['mask'].shape == (local,)
      for row in range(local):
        index = k * batch_size + p * local + row
        if batch['mask'][row]:
          rows[index] = (batch['inputs'][:, row], batch['target'][row])
        else:
          assert index >= len(VAL_SIZES) and not batch['target'][row].any()
  assert sorted(rows) == list(range(len(VAL_SIZES)))
  for index, (inputs, target) in rows.items():
    image = pil_resize.resize_bilinear(_image('val', index, *VAL_SIZES[index]), (CROP, CROP))
    expected = image.astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(target, expected)
    for m, domain in enumerate(hand.modalities):
      np.testing.assert_array_equal(inputs[m], expected[..., PERMUTATIONS[domain]])


def test_counts_and_config_checks(hand):
  assert tp.num_examples(hand, 'train') == len(TRAIN_SIZES)
  assert tp.steps_per_epoch(hand) == len(TRAIN_SIZES) // 2
  assert tp.planned_num_examples(hand, 'val') == len(VAL_SIZES)
  bad = ml_collections.ConfigDict(hand.to_dict())
  bad.target = 'normal'
  with pytest.raises(ValueError, match='must all differ'):
    tp.domains(bad)
  bad = ml_collections.ConfigDict(hand.to_dict())
  bad.crop_size = LOAD + 1
  with pytest.raises(ValueError, match='load_size'):
    next(tp.train_batches(bad))


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_taskonomy_is_deterministic_and_geometric(tmp_path):
  synthetic_taskonomy.write_taskonomy(tmp_path / 'a', num_train=2, num_val=1, size=48, seed=3)
  synthetic_taskonomy.write_taskonomy(tmp_path / 'b', num_train=3, num_val=1, size=48, seed=3)
  entry = taskonomy.read_list(tmp_path / 'a', 'train')[1]
  for domain in synthetic_taskonomy.DOMAINS:
    a = (tmp_path / 'a' / entry.path(domain)).read_bytes()
    assert a == (tmp_path / 'b' / entry.path(domain)).read_bytes(), domain
  raw = {d: cv2.imread(str(tmp_path / 'a' / entry.path(d)), cv2.IMREAD_UNCHANGED)
         for d in synthetic_taskonomy.DOMAINS}
  for domain in ('depth_euclidean', 'depth_zbuffer', 'edge_texture', 'edge_occlusion'):
    assert raw[domain].dtype == np.uint16 and raw[domain].ndim == 2, domain
  # The z-buffer depth is the euclidean one projected on the optical axis, and every visible
  # surface faces the camera (normal B channel, towards the camera, above 127).
  assert (raw['depth_zbuffer'] <= raw['depth_euclidean']).all()
  assert (raw['normal'][..., 0] >= 127).all()  # OpenCV order: channel 0 is B.
  assert 2 * 512 < raw['depth_euclidean'].min() and raw['depth_euclidean'].max() < 20 * 512
  assert raw['edge_occlusion'].max() > 5000 and raw['edge_texture'].max() > 1000
  # rgb is albedo x shading: its ratio to reshading (the albedo) varies within the image, so
  # reshading alone does not give the colour.
  rgb = cv2.cvtColor(raw['rgb'], cv2.COLOR_BGR2RGB).astype(np.float64)
  albedo = rgb[..., 0] / np.maximum(raw['reshading'], 1)
  assert albedo.std() > 0.1
  example = taskonomy.read_example(tmp_path / 'a', entry, synthetic_taskonomy.DOMAINS)
  assert all(image.shape == (48, 48, 3) for image in example.values())


def test_synthetic_cli_taskonomy_and_default_kind(tmp_path):
  env = {**os.environ, 'PYTHONPATH': tiny.REPO}
  subprocess.run([sys.executable, '-m', 'asymfusion_jax.data.synthetic', '--kind=taskonomy',
                  '--out', str(tmp_path / 't'), '--num-train', '2', '--num-val', '1',
                  '--size', '24'], check=True, env=env, capture_output=True)
  assert len(taskonomy.read_list(tmp_path / 't', 'train')) == 2
  synthetic_cli.main(['--out', str(tmp_path / 'n'), '--num_train', '1', '--num_val', '1',
                  '--height', '16', '--width', '20'])
  assert nyudv2_layout.read_list(tmp_path / 'n', 'val')[0].rgb == 'rgb/000002.png'


def test_prepare_generates_synthetic_data_and_rebuilds_on_change(tmp_path):
  config = tiny.translation_config(tmp_path, data__num_train=4, data__num_val=2,
                                   data__synthetic_image_size=32, data__load_size=32,
                                   crop_size=32, batch_size=2)
  tp.prepare(config)
  assert tp.num_examples(config, 'train') == 4 and tp.steps_per_epoch(config) == 2
  batch = next(tp.train_batches(config))
  assert batch['inputs'].shape == (2, 2, 32, 32, 3)
  assert -1 <= batch['inputs'].min() and batch['target'].max() <= 1
  info = next((tmp_path / 'tfds').rglob('dataset_info.json'))
  built = info.stat().st_mtime_ns
  tp.prepare(config)
  assert info.stat().st_mtime_ns == built
  # Regenerated at another size: the fingerprint changes and prepare rebuilds.
  synthetic_taskonomy.write_taskonomy(config.data.manual_dir, 4, 2, size=40, seed=1)
  tp.prepare(config)
  assert info.stat().st_mtime_ns != built
  assert tp.load_split(config, 'val').images['rgb'].shape == (2, 32, 32, 3)


def test_each_domain_set_has_its_own_build(hand, caplog):
  other = ml_collections.ConfigDict(hand.to_dict())
  other.modalities, other.target = ('principal_curvature',), 'normal'
  swapped = ml_collections.ConfigDict(hand.to_dict())
  swapped.modalities = tuple(reversed(hand.modalities))
  with caplog.at_level('WARNING'):
    tp.prepare(other)
    tp.prepare(swapped)  # The same domain set as `hand`: its build is reused.
  assert 'custom data configuration' not in caplog.text
  folders = sorted(p.name for p in (Path(hand.data.tfds_data_dir) / 'taskonomy').iterdir()
                   if not p.name.startswith('.'))
  assert folders == ['normal+principal_curvature', 'normal+principal_curvature+rgb']
  batch = next(tp.eval_batches(other))
  np.testing.assert_array_equal(batch['inputs'][0][..., PERMUTATIONS['normal']],
                                batch['target'][..., PERMUTATIONS['principal_curvature']])
