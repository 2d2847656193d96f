"""Tests of the data package on real pipeline output: builder, synthetic data, train and eval.

A hand-made "marker" dataset makes the train geometry checkable pixel by pixel: its depth holds
a unique id per source pixel (so every output depth value names the source pixel it came from),
its colour is a linear ramp in row and column (so bicubic output reveals the sub-pixel source
position), and its label is background with one marker pixel, a class block and an ignore block.
The expected position of every output pixel is computed here from the documented transform,
independently of the implementation.
"""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from asymfusion_jax import config_lib
from asymfusion_jax.data import augment
from asymfusion_jax.data import batching
from asymfusion_jax.data import modalities
from asymfusion_jax.data import synthetic as synthetic_cli
from asymfusion_jax.data.nyudv2 import layout
from asymfusion_jax.data.nyudv2 import pipeline
from asymfusion_jax.data.nyudv2 import synthetic

CROP = 48
TRAIN_SIZES = [(40, 56), (40, 56), (44, 40), (36, 60)]
VAL_SIZES = [(40, 56), (40, 56), (36, 60), (40, 56), (40, 56)]
MARKER_CLASS = 3
PAD = np.asarray(modalities.RAW_PAD_VALUE, np.float32)
MEAN = np.asarray(modalities.IMAGENET_MEAN, np.float32)
STD = np.asarray(modalities.IMAGENET_STD, np.float32)


def _config(manual_dir, tfds_dir, **overrides):
  c = config_lib.nyudv2_paper()
  c.seed = 3
  c.data.manual_dir = str(manual_dir)
  c.data.tfds_data_dir = str(tfds_dir)
  c.data.synthetic = False
  c.data.num_train, c.data.num_val = len(TRAIN_SIZES), len(VAL_SIZES)
  c.data.scale_range = (0.5, 2.0)
  c.data.min_short_side = 30
  c.data.num_workers = 2
  c.data.synthetic_image_size = (48, 64)
  c.batch_size = 2
  c.eval_batch_size = 2
  c.crop_size = CROP
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return c


def _write_png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  assert cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image)


def _write_layout(root, splits):
  """Writes {'train': [(rgb, depth, label)], 'val': [...]} in the NYUDv2 layout."""
  number = 0
  for split, examples in splits.items():
    lines = []
    for rgb, depth, label in examples:
      number += 1
      stem = f'{number:06d}'
      _write_png(f'{root}/rgb/{stem}.png', rgb)
      _write_png(f'{root}/masks/{stem}.png', label)
      _write_png(f'{root}/depth/{stem}.png', depth)
      lines.append(f'rgb/{stem}.png\tmasks/{stem}.png\tdepth/{stem}.png\n')
    with open(f'{root}/{split}.txt', 'w') as f:
      f.writelines(lines)


def _marker_example(k, h, w):
  rows, cols = np.mgrid[:h, :w]
  rgb = np.stack([4 * rows + 20, 4 * cols + 10, np.full_like(rows, 128)], -1).astype(np.uint8)
  depth = (rows * w + cols + 1).astype(np.uint16)  # A unique id per source pixel.
  label = np.zeros((h, w), np.uint8)
  label[h // 2:, w // 2:] = 1
  label[:4, :6] = 255
  label[8 + 4 * k, 12 + 6 * k] = MARKER_CLASS
  return rgb, depth, label


def _val_example(k, h, w):
  rng = np.random.default_rng(100 + k)
  rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  if k == 1:  # 8-bit depth PNG.
    depth = rng.integers(0, 256, (h, w), dtype=np.uint8)
  else:  # 16-bit, over the whole range.
    depth = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    depth[0, :2] = (0, 65535)
  label = rng.choice(np.r_[np.arange(40), 255].astype(np.uint8), (h, w))
  return rgb, depth, label


@pytest.fixture(scope='module')
def marker(tmp_path_factory):
  """The marker dataset, built through TFDS: (config, {'train': [...], 'val': [...]})."""
  root = tmp_path_factory.mktemp('marker')
  raw = {'train': [_marker_example(k, *s) for k, s in enumerate(TRAIN_SIZES)],
         'val': [_val_example(k, *s) for k, s in enumerate(VAL_SIZES)]}
  _write_layout(root / 'manual', raw)
  config = _config(root / 'manual', root / 'tfds')
  pipeline.prepare(config)
  return config, raw


@pytest.fixture(scope='module')
def synthetic_config(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  config = _config(root / 'manual', root / 'tfds', **{
      'data.synthetic': True, 'data.num_train': 6, 'data.num_val': 3,
      'data.min_short_side': 40, 'batch_size': 3, 'eval_batch_size': 2})
  pipeline.prepare(config)  # Writes the synthetic data, then builds it.
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ----------------------------------------------------------------------------- builder / layout


def test_import_does_not_load_tensorflow():
  code = ('import sys; import asymfusion_jax.data.nyudv2, asymfusion_jax.data.synthetic; '
          'sys.exit("tensorflow" in sys.modules)')
  assert subprocess.run([sys.executable, '-c', code], check=False).returncode == 0


def test_builder_reads_back_every_file_exactly(marker):
  config, raw = marker
  for split in ('train', 'val'):
    assert pipeline.num_examples(config, split) == len(raw[split])
    for i, (rgb, depth, label) in enumerate(raw[split]):
      example = pipeline.read(config, split, i)  # By index, from disk, in list order.
      assert example['rgb'].dtype == np.uint8 and example['depth'].dtype == np.uint16
      np.testing.assert_array_equal(example['rgb'], rgb)
      np.testing.assert_array_equal(example['depth'], depth)  # 8- and 16-bit lossless.
      np.testing.assert_array_equal(example['label'], label)
      number = i + 1 + (len(raw['train']) if split == 'val' else 0)  # As _write_layout numbers.
      assert example['name'] == f'rgb/{number:06d}.png' and example['index'] == i
  assert pipeline.read(config, 'val', 0)['depth'].max() == 65535
  assert pipeline.steps_per_epoch(config) == len(TRAIN_SIZES) // config.batch_size
  info = next(pathlib.Path(config.data.tfds_data_dir).rglob('dataset_info.json'))
  metadata = json.loads(info.read_text())
  assert metadata['fileFormat'] == 'array_record'  # What reading by index needs.


def test_a_config_of_another_dataset_is_refused(marker):
  config, _ = marker
  other = config.copy_and_resolve_references()
  other.data.name = 'cityscapes'
  with pytest.raises(ValueError, match=r"config\.data\.name='cityscapes', but "
                                       r"asymfusion_jax\.data\.nyudv2\.pipeline reads 'nyudv2'"):
    pipeline.train_batches(other)


def test_an_indexed_builder_must_keep_the_list_order(tmp_path):
  from asymfusion_jax.data import manual_builder  # pylint: disable=g-import-not-at-top
  from asymfusion_jax.data.nyudv2 import builder  # pylint: disable=g-import-not-at-top

  class Shuffled(builder.Nyudv2, skip_registration=True):
    def _info(self):
      info = super()._info()
      info.as_proto.disable_shuffling = False
      return info

  assert issubclass(Shuffled, manual_builder.IndexedBuilder)
  with pytest.raises(TypeError, match=r'Shuffled\._info must set disable_shuffling=True'):
    Shuffled(data_dir=str(tmp_path))


def _broken_layout(root, kind):
  examples = [_marker_example(0, 20, 24), _marker_example(1, 20, 24)]
  _write_layout(root, {'train': examples, 'val': examples[:1]})
  target = root / 'depth' / '000002.png'
  if kind == 'missing':
    target.unlink()
  elif kind == 'unreadable':
    target.write_bytes(b'this is not a png')
  elif kind == 'a-directory':  # The OS refuses to read it: no bare OSError may escape.
    target.unlink()
    target.mkdir()
  elif kind == 'mis-sized':
    _write_png(target, np.zeros((20, 23), np.uint16))
  elif kind == 'bad-label':  # 40 classes are 0..39; 1-based masks must not pass silently.
    _write_png(root / 'masks' / '000002.png', np.full((20, 24), 40, np.uint8))
    return 'masks/000002.png', r'train\.txt line 2'
  return 'depth/000002.png', r'train\.txt line 2'


@pytest.mark.parametrize('kind', ['missing', 'unreadable', 'a-directory', 'mis-sized',
                                  'bad-label'])
def test_bad_file_error_names_file_and_line(tmp_path, kind):
  file, line = _broken_layout(tmp_path / 'manual', kind)
  config = _config(tmp_path / 'manual', tmp_path / 'tfds')
  with pytest.raises(layout.LayoutError, match=line) as error:
    pipeline.prepare(config)
  assert file in str(error.value) and kind.split('-')[-1] in str(error.value).lower()


def test_list_line_with_an_empty_path_is_refused(tmp_path):
  examples = [_marker_example(0, 20, 24)]
  _write_layout(tmp_path, {'train': examples, 'val': examples})
  (tmp_path / 'val.txt').write_text('rgb/000001.png\t\tdepth/000001.png\n')
  with pytest.raises(layout.LayoutError, match=r"val\.txt line 1 .*three tab-separated paths"):
    layout.read_list(tmp_path, 'val')


def test_prepare_is_idempotent_and_rebuilds_changed_data(tmp_path):
  manual = tmp_path / 'manual'
  synthetic.write_dataset(manual, num_train=2, num_val=1, height=24, width=32, seed=0)
  config = _config(manual, tmp_path / 'tfds', **{'data.num_train': 2, 'data.num_val': 1})
  pipeline.prepare(config)
  info = next((tmp_path / 'tfds').rglob('dataset_info.json'))
  built = info.stat().st_mtime_ns
  pipeline.prepare(config)
  assert info.stat().st_mtime_ns == built
  synthetic.write_dataset(manual, num_train=2, num_val=1, height=24, width=40, seed=1)
  pipeline.prepare(config)
  assert pipeline.read(config, 'train', 0)['label'].shape == (24, 40)


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_cli_writes_the_layout(tmp_path):
  synthetic_cli.main(['--out', str(tmp_path), '--num-train', '3', '--num-val', '2', '--height', '20',
                  '--width', '28', '--seed', '5'])
  for split, count in (('train', 3), ('val', 2)):
    entries = layout.read_list(tmp_path, split)
    assert len(entries) == count
    example = layout.read_example(tmp_path, entries[0], synthetic.NUM_CLASSES, 255)
    assert example['rgb'].shape == (20, 28, 3) and example['depth'].shape == (20, 28)
  raw = cv2.imread(str(tmp_path / entries[0].depth), cv2.IMREAD_UNCHANGED)
  assert raw.dtype == np.uint16


def test_synthetic_classes_need_both_modalities():
  # Each object class shares its colour with one class and its depth relation with another.
  table = synthetic.OBJECT_CLASSES
  for a in table:
    assert sum(table[b][0] == table[a][0] for b in table) == 2
    assert sum(table[b][1] == table[a][1] for b in table) == 2
    assert sum(table[b] == table[a] for b in table) == 1
  # And the rendered images show it: colour follows the colour group, depth the offset sign.
  redness, offset = {k: [] for k in table}, {k: [] for k in table}
  for i in range(40):
    rgb, depth, label = synthetic.render_example(np.random.default_rng([9, i]), 48, 64)
    background = depth[(label == 0) & (depth > 0)].astype(float).mean()
    for k in table:
      pixels = (label == k) & (depth > 0)
      if pixels.sum() > 20:
        redness[k].append(rgb[pixels][:, 0].mean() - rgb[pixels][:, 2].mean())
        offset[k].append(depth[pixels].mean() - background)
  warm = [k for k in table if table[k][0] == synthetic.OBJECT_CLASSES[1][0]]
  near = [k for k in table if table[k][1] < 0]
  for k in table:
    assert (np.mean(redness[k]) > 50) == (k in warm)
    assert (np.mean(offset[k]) < -150) == (k in near)
    assert (np.mean(offset[k]) > 150) == (k not in near)


# ----------------------------------------------------------------------------- train pipeline


def _expected_transform(key, h, w, config):
  """The transform of docs/method.md section 8 re-derived from the documented draw protocol.

  Returns (scale, flip, source row / column index of every output pixel (-1 = padding), and the
  sub-pixel source coordinate that bicubic resampling centres on).
  """
  rng = np.random.default_rng(key)
  s = rng.uniform(*config.data.scale_range)
  if min(h, w) * s < config.data.min_short_side:
    s = config.data.min_short_side / min(h, w)
  sh, sw = int(np.rint(h * s)), int(np.rint(w * s))
  ph, pw = max((CROP - sh + 1) // 2, 0), max((CROP - sw + 1) // 2, 0)
  flip = bool(rng.integers(2))
  top = rng.integers(0, sh + 2 * ph - CROP + 1)
  left = rng.integers(0, sw + 2 * pw - CROP + 1)
  y = top + np.arange(CROP) - ph  # Row in the rescaled image.
  canvas_x = left + np.arange(CROP)
  if flip:
    canvas_x = (sw + 2 * pw - 1) - canvas_x
  x = canvas_x - pw

  def nearest(z, n, scaled):
    if (sh, sw) == (h, w):  # OpenCV copies when the size does not change.
      src = z
    else:
      src = np.minimum(np.floor(z * (1.0 / s)).astype(int), n - 1)
    return np.where((z >= 0) & (z < scaled), src, -1)

  def centre(z):
    return z.astype(float) if (sh, sw) == (h, w) else (z + 0.5) / s - 0.5

  return s, flip, (sh, sw), nearest(y, h, sh), nearest(x, w, sw), centre(y), centre(x)


def test_train_geometry_is_exact_and_modalities_stay_aligned(marker):
  config, raw = marker
  batches = _take(pipeline.train_batches(config), 16)
  n = len(TRAIN_SIZES)
  seen = {'flip': set(), 'padded': set(), 'marker': 0}
  for step, batch in enumerate(batches):
    assert batch['image'].shape == (2, 2, CROP, CROP, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (2, CROP, CROP) and batch['label'].dtype == np.int32
    for row, (index, key) in enumerate(batching.train_schedule(config.seed, step, 2, n)):
      rgb, ids, label = raw['train'][index]
      h, w = label.shape
      s, flip, scaled, src_r, src_c, cy, cx = _expected_transform(key, h, w, config)
      draw = augment.draw_augmentation(np.random.default_rng(key), h, w, CROP,
                                       config.data.scale_range, config.data.min_short_side)
      assert (draw.scale, draw.flip, draw.scaled_size) == (s, flip, scaled)
      seen['flip'].add(flip)
      seen['padded'].add(min(scaled) < CROP)
      valid = (src_r[:, None] >= 0) & (src_c[None, :] >= 0)
      rr, cc = np.ix_(np.maximum(src_r, 0), np.maximum(src_c, 0))

      # Label: every pixel from its source pixel, padding 255; the marker lands where predicted.
      out_label = batch['label'][row]
      np.testing.assert_array_equal(out_label, np.where(valid, label[rr, cc], 255))
      expected_marker = valid & (label[rr, cc] == MARKER_CLASS)
      np.testing.assert_array_equal(out_label == MARKER_CLASS, expected_marker)
      seen['marker'] += int(expected_marker.any())

      # Depth: each output value is the id of its source pixel, / 5000, on all three channels.
      depth = batch['image'][1, row]
      np.testing.assert_allclose(depth[valid], np.repeat(ids[rr, cc][valid, None] / 5000, 3, 1),
                                 rtol=1e-6)
      np.testing.assert_allclose(depth[~valid], np.broadcast_to(PAD / 5000, depth[~valid].shape),
                                 rtol=1e-6)

      # Colour: the ramp values reveal the bicubic source position, 1 grey level of tolerance.
      colour = batch['image'][0, row] * STD + MEAN
      np.testing.assert_allclose(colour[~valid], np.broadcast_to(PAD / 255, colour[~valid].shape),
                                 atol=1e-6)
      interior = valid & ((cy[:, None] > 2) & (cy[:, None] < h - 3)) & (
          (cx[None, :] > 2) & (cx[None, :] < w - 3))
      assert interior.sum() > 100
      red = np.broadcast_to((4 * cy + 20)[:, None], interior.shape)[interior]
      green = np.broadcast_to((4 * cx + 10)[None, :], interior.shape)[interior]
      np.testing.assert_allclose(colour[..., 0][interior] * 255, red, atol=1.0)
      np.testing.assert_allclose(colour[..., 1][interior] * 255, green, atol=1.0)
      np.testing.assert_allclose(colour[..., 2][valid] * 255, 128, atol=0.01)
  assert seen['flip'] == {True, False} and seen['padded'] == {True, False} and seen['marker'] > 3


def test_train_is_deterministic_and_resumable(marker):
  config, _ = marker
  first = _take(pipeline.train_batches(config), 6)
  again = _take(pipeline.train_batches(config), 6)
  resumed = _take(pipeline.train_batches(config, start_step=4), 2)
  config_sync = _config(config.data.manual_dir, config.data.tfds_data_dir,
                        **{'data.num_workers': 0})
  sync = _take(pipeline.train_batches(config_sync), 6)
  for a, b, c in zip(first, again, sync):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
      np.testing.assert_array_equal(a[k], c[k])
  for a, b in zip(first[4:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(first[0]['image'], first[1]['image'])
  other_seed = _config(config.data.manual_dir, config.data.tfds_data_dir, seed=4)
  assert not np.array_equal(next(pipeline.train_batches(other_seed))['image'], first[0]['image'])


def _worker_config(config, kind, **overrides):
  out = config.copy_and_resolve_references()
  out.data.worker_kind = kind
  for key, value in overrides.items():
    out.data[key] = value
  return out


def test_process_workers_give_the_thread_workers_batches_bit_for_bit(marker):
  """config.data.worker_kind='process': 2 spawned workers that open the build themselves give
  the train batches (from step 0 and resumed from step 2) and the eval batches of the thread
  workers, and are gone when each loop ends."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  config, _ = marker
  threads, procs = _worker_config(config, 'thread'), _worker_config(config, 'process')
  for start, steps in ((0, 4), (2, 2)):
    batches = pipeline.train_batches(procs, start_step=start)
    for a, b in zip(_take(pipeline.train_batches(threads, start), steps), _take(batches, steps)):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert len(multiprocessing.active_children()) == 2
    batches.close()  # The end of training (or a SIGTERM the run turned into a stop).
    assert not multiprocessing.active_children()
  for a, b in zip(pipeline.eval_batches(threads), pipeline.eval_batches(procs), strict=True):
    assert a['name'] == b['name'] and a.keys() == b.keys()
    for k in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[k], b[k])
  assert not multiprocessing.active_children()


def _shared_dirs():
  return set(pathlib.Path('/dev/shm').glob('asymfusion_data_*'))


def test_process_worker_errors_are_the_thread_workers_and_stop_the_workers(marker,
                                                                           monkeypatch):
  """A worker's exception reaches the consumer when its batch is due, as the same one-line error
  for both kinds; the worker processes and their shared files are gone after it."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(data.DATASETS, 'toy', 'tests.toy_dataset')
  config = marker[0].copy_and_resolve_references()
  config.data.name = 'toy'
  before, seen = _shared_dirs(), {}
  for kind in ('thread', 'process'):
    batches = data.get('toy').train_batches(
        _worker_config(config, kind, unreadable=('toy/train_5.png',)), start_step=1)
    done = 0
    with pytest.raises(ValueError) as error:
      for done, _ in enumerate(batches):
        pass
    seen[kind] = (done, error.type, str(error.value))
    assert not multiprocessing.active_children()
  assert seen['thread'] == seen['process']
  assert seen['thread'][2] == 'Unreadable image toy/train_5.png.'
  assert _shared_dirs() == before
  # A dataset that worker processes cannot import is refused before any starts.
  monkeypatch.setitem(data.DATASETS, 'toy', data.get('toy'))
  with pytest.raises(ValueError, match=r"registered in asymfusion_jax\.data\.DATASETS by its "
                                       r"module path"):
    data.get('toy').train_batches(_worker_config(config, 'process'))


_KILLED_SCRIPT = """
import multiprocessing, os, signal
from asymfusion_jax import config_lib, data
data.DATASETS['toy'] = 'tests.toy_dataset'
if __name__ == '__main__':
  config = config_lib.nyudv2_paper()
  config.data.name, config.data.worker_kind, config.data.num_workers = 'toy', 'process', 2
  config.batch_size, config.crop_size = 2, 32
  batches = data.get(config).train_batches(config)
  next(batches)
  print(*[p.pid for p in multiprocessing.active_children()], flush=True)
  os.kill(os.getpid(), signal.SIGTERM)
"""


def test_process_workers_exit_when_the_consumer_is_killed():
  """A consumer killed by SIGTERM, which it does not handle (no clean-up runs: as SIGKILL),
  takes its worker processes and their shared files with it."""
  import time  # pylint: disable=g-import-not-at-top
  before = _shared_dirs()
  out = subprocess.run([sys.executable, '-c', _KILLED_SCRIPT], capture_output=True,
                       text=True, timeout=120, check=False,
                       env={**os.environ, 'PYTHONPATH': str(pathlib.Path(__file__).parent.parent)})
  assert out.returncode < 0, out.stderr[-3000:]
  pids = [int(pid) for pid in out.stdout.split()]
  assert len(pids) == 2, out.stderr[-3000:]

  def alive(pid):
    try:
      with open(f'/proc/{pid}/stat') as f:
        return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
      return False

  deadline = time.monotonic() + 30
  while any(map(alive, pids)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not any(map(alive, pids))
  assert _shared_dirs() == before


def test_train_epochs_visit_every_example(marker):
  config, _ = marker
  n = len(TRAIN_SIZES)
  for epoch in range(3):
    indices = [i for step in range(2 * epoch, 2 * epoch + 2)
               for i, _ in batching.train_schedule(config.seed, step, 2, n)]
    assert sorted(indices) == list(range(n))


def test_train_multi_process_shards_the_global_batch(marker):
  config, _ = marker
  whole = _take(pipeline.train_batches(config, start_step=1), 3)
  parts = [_take(pipeline.train_batches(config, 1, process_index=p, process_count=2), 3)
           for p in range(2)]
  for step, batch in enumerate(whole):
    np.testing.assert_array_equal(
        batch['image'], np.concatenate([parts[0][step]['image'], parts[1][step]['image']], 1))
    np.testing.assert_array_equal(
        batch['label'], np.concatenate([parts[0][step]['label'], parts[1][step]['label']], 0))
  with pytest.raises(ValueError, match='divisible'):
    pipeline.train_batches(config, process_index=0, process_count=3)


def test_modalities_are_selected_and_ordered_by_config(marker):
  config, _ = marker
  fused = next(pipeline.train_batches(config, start_step=2))
  args = (config.data.manual_dir, config.data.tfds_data_dir)
  depth_only = next(pipeline.train_batches(_config(*args, modalities=('depth',)), start_step=2))
  swapped = next(pipeline.train_batches(_config(*args, modalities=('depth', 'rgb')),
                                        start_step=2))
  assert depth_only['image'].shape == (1, 2, CROP, CROP, 3)
  np.testing.assert_array_equal(depth_only['image'][0], fused['image'][1])
  np.testing.assert_array_equal(swapped['image'], fused['image'][::-1])
  np.testing.assert_array_equal(depth_only['label'], fused['label'])


def test_synthetic_train_values_are_in_range(synthetic_config):
  config = synthetic_config
  low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
  for batch in _take(pipeline.train_batches(config), 4):
    assert batch['image'].shape == (2, 3, CROP, CROP, 3)
    rgb, depth = batch['image']
    assert np.all(rgb >= low - 1e-5) and np.all(rgb <= high + 1e-5)
    assert np.all(depth >= 0) and np.all(depth < 2.0) and depth.max() > 0.2
    # Depth is repeated to 3 channels; only padding (labelled 255) has per-channel values.
    assert np.all((depth[..., 0] == depth[..., 2]) | (batch['label'] == 255))
    labels = set(np.unique(batch['label']).tolist())
    assert labels <= set(range(synthetic.NUM_CLASSES)) | {255} and len(labels) > 2
  batches = list(pipeline.eval_batches(config))
  assert [b['mask'].tolist() for b in batches] == [[True, True], [True, False]]
  assert all(b['image'].shape == (2, 2, 48, 64, 3) for b in batches)


def test_normalisation_registry_is_json_ready():
  sidecar = json.loads(json.dumps(modalities.to_json(('rgb', 'depth'))))
  assert sidecar['normalisation']['depth']['scale'] == 1 / 5000
  assert sidecar['normalisation']['rgb']['mean'] == list(modalities.IMAGENET_MEAN)
  np.testing.assert_allclose(modalities.normalised_pad_value('rgb'), 0, atol=1e-6)


# ----------------------------------------------------------------------------- eval pipeline


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_sees_every_image_once_at_full_resolution(marker, process_count):
  config, raw = marker
  config = _config(config.data.manual_dir, config.data.tfds_data_dir, eval_batch_size=4)
  height, width = max(s[0] for s in VAL_SIZES), max(s[1] for s in VAL_SIZES)
  local = 4 // process_count
  pads = [modalities.normalised_pad_value(n) for n in ('rgb', 'depth')]
  seen = []
  for process in range(process_count):
    batches = list(pipeline.eval_batches(config, process, process_count))
    assert len(batches) == 2  # ceil(5 / 4), the same on every process.
    for k, batch in enumerate(batches):
      assert batch['image'].shape == (2, local, height, width, 3)
      assert batch['label'].shape == (local, height, width) and batch['label'].dtype == np.int32
      assert batch['mask'].shape == (local,) and batch['mask'].dtype == bool
      for row in range(local):
        index = k * 4 + process * local + row
        if not batch['mask'][row]:
          assert index >= len(VAL_SIZES)
          assert np.all(batch['label'][row] == 255)
          continue
        seen.append(index)
        rgb, depth, label = raw['val'][index]
        h, w = label.shape
        np.testing.assert_array_equal(batch['label'][row, :h, :w], label)
        assert np.all(batch['label'][row, h:] == 255) and np.all(batch['label'][row, :, w:] == 255)
        np.testing.assert_allclose(batch['image'][0, row, :h, :w], (rgb / 255 - MEAN) / STD,
                                   atol=1e-5)
        recovered = np.rint(batch['image'][1, row, :h, :w] * 5000).astype(np.int64)
        np.testing.assert_array_equal(recovered, np.repeat(depth[..., None], 3, -1))
        padding = np.ones((height, width), bool)
        padding[:h, :w] = False
        for m in range(2):
          np.testing.assert_array_equal(batch['image'][m, row][padding],
                                        np.broadcast_to(pads[m], (padding.sum(), 3)))
  assert sorted(seen) == list(range(len(VAL_SIZES)))


_PREFETCH_SCRIPT = '''
import jax, numpy as np, pytest
from asymfusion_jax import sharding
assert jax.device_count() == 2
mesh = sharding.make_mesh()
rng = np.random.default_rng(0)
local = [{'image': rng.random((2, 4, 3, 3, 3), np.float32),
          'label': rng.integers(0, 5, (4, 3, 3)).astype(np.int32)} for _ in range(5)]
taken, closed = [], []

def source(fail_at=None):
  try:
    for i, batch in enumerate(local):
      if i == fail_at:
        raise ValueError(f'a bad example in batch {i}')
      taken.append(i)
      yield batch
  finally:
    closed.append(True)

for size in (0, 1, 2):
  taken.clear()
  batches = sharding.prefetch_to_device(source(), mesh, size)
  for t, expected in enumerate(local):
    batch = next(batches)
    assert len(taken) == min(t + 1 + size, len(local)), (size, t, taken)  # size ahead, no more
    for key, value in expected.items():
      assert batch[key].sharding == sharding.batch_shardings(mesh, expected)[key]
      np.testing.assert_array_equal(batch[key], value)
      axis = sharding.batch_axis(key)
      for shard in batch[key].addressable_shards:  # Each device holds its half of the rows.
        rows = shard.index[axis]
        assert (rows.stop - rows.start) == 2
        np.testing.assert_array_equal(shard.data, value[shard.index])
  with pytest.raises(StopIteration):
    next(batches)
  assert closed.pop()
# An error of the source comes when its batch is due, after the batches before it.
batches = sharding.prefetch_to_device(source(fail_at=3), mesh, 2)
for expected in local[:3]:
  np.testing.assert_array_equal(next(batches)['label'], expected['label'])
with pytest.raises(ValueError, match='batch 3'):
  next(batches)
# Closing it early (a run stopped by SIGTERM) closes the source and its workers.
closed.clear()
batches = sharding.prefetch_to_device(source(), mesh, 2)
next(batches)
batches.close()
assert closed == [True]
print('prefetched')
'''


def test_prefetch_to_device_yields_the_same_batches_sharded_and_stops_cleanly():
  """sharding.prefetch_to_device on 2 simulated devices: the global batches of the source, in
  order, sharded along the batch, `size` ahead and no more; errors when due; close closes."""
  flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2'
  env = {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': str(pathlib.Path(__file__).resolve().parent.parent)}
  out = subprocess.run([sys.executable, '-c', _PREFETCH_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0 and 'prefetched' in out.stdout, out.stderr[-3000:]
