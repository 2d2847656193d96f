"""The generic RGB-X dataset (data/rgbx): datasets written here by hand in DFormer's layout (JPEG
RGB, 16-bit depth PNGs, a 3-channel .npy modality, an 8-bit thermal PNG, labels with offset 1)
and in CMX's (PNG RGB, Modal/ thermal, labels as they are), read without loss, trained,
resumed, evaluated, exported and predicted on with each new config's data settings; M = 1, 2
and 3; every bad input; .npy inputs of predict; the synthetic generator.

Cost: the M = 2 runs use the tiny demo's model, recipe and shapes (tests/tiny.py), so their
programs come from the compilation cache that the tiny demo run fills; the M = 1 run (SUN RGB-D's
:rgb; its :x row's batches are checked, the same program would train them) and the M = 3 run
(MFNet's settings) are one train step and one evaluation each, without prediction images.
"""

import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from asymfusion_jax import checkpointing, config_io, config_lib, export, predict, tasks, train
from asymfusion_jax import validation
from asymfusion_jax.data import rgbx
from asymfusion_jax.data.layout import LayoutError
from asymfusion_jax.data.rgbx import layout as rgbx_layout
from asymfusion_jax.data.rgbx import synthetic as rgbx_synthetic
from asymfusion_jax.predict import inputs as predict_inputs
from asymfusion_jax.tasks.segmentation import validation as segmentation_checks
from asymfusion_jax.tasks.segmentation import visualize
from tests import tiny

HEIGHT, WIDTH = 48, 64
NUM_TRAIN, NUM_VAL = 16, 6
K = 5  # Raw labels 1..5 with offset 1; 0 is unlabelled.
# What turns a paper config into the tiny demo's model and recipe (tests/tiny.py), so that its
# M = 2 programs are those of the tiny demo run, already compiled.
SHRINK = {**tiny.OVERRIDES, 'model.depth': 26, 'model.num_classes': K, 'model.dropout_rate': 0.1,
          'frozen_bn': False, 'compute_dtype': 'float32', 'optim.clip_grad_norm': 1.0,
          'optim.weight_decay': 1e-4, 'data.scale_range': (0.75, 1.25), 'data.class_names': ()}


def _sample(rng):
  """One hand-made sample: raw files' arrays, classes in blocks, depth in millimetres."""
  label = np.ones((HEIGHT, WIDTH), np.uint8)  # Raw 1: class 0.
  for _ in range(3):
    top, left = rng.integers(0, HEIGHT - 12), rng.integers(0, WIDTH - 12)
    label[top:top + 12, left:left + 16] = rng.integers(2, K + 1)
  label[:, :2] = 0  # Unlabelled.
  colour = np.array([[90, 90, 90], [200, 60, 50], [50, 90, 200], [200, 200, 40], [40, 180, 60],
                     [160, 60, 160]], np.float64)[label]
  rgb = np.clip(colour + rng.normal(0, 8, colour.shape), 0, 255).astype(np.uint8)
  depth = (1000 + 900 * label.astype(int) + rng.integers(0, 50, label.shape)).astype(np.uint16)
  normal = rng.uniform(-1, 1, (HEIGHT, WIDTH, 3)).astype(np.float32)
  normal[..., 2] += label.astype(np.float32)  # A 3-channel float modality that sees the classes.
  thermal = np.clip(100 + 20 * (label.astype(int) % 3) + rng.normal(0, 4, label.shape), 0, 255).astype(
      np.uint8)
  return {'RGB': rgb, 'Depth': depth, 'Normal': normal, 'Modal': thermal, 'Label': label}


EXTENSIONS = {'RGB': '.jpg', 'Depth': '.png', 'Normal': '.npy', 'Modal': '.png', 'Label': '.png'}
# MFNet as CMX prepares it: PNG RGB, Modal/ thermal PNGs, labels as they are; Normal/ arrays too.
CMX_EXTENSIONS = {'RGB': '.png', 'Modal': '.png', 'Normal': '.npy', 'Label': '.png'}


def write_hand_dataset(root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0, cmx=False):
  """DFormer's layout, written file by file: train.txt lines 'RGB/<name>.jpg' (DFormer),
  test.txt bare names (CMX) and one line naming its label explicitly. With cmx, CMX's layout
  (CMX_EXTENSIONS) with bare names in both lists and labels of offset 0 (raw 0 is written as 8,
  the last of MFNet's 9 classes). Returns the arrays."""
  rng = np.random.default_rng(seed)
  arrays = {}
  lines = {'train': [], 'val': []}
  extensions = CMX_EXTENSIONS if cmx else EXTENSIONS
  for i in range(num_train + num_val):
    name = f'img{i:03d}'
    sample = _sample(rng)
    if cmx:
      sample['Label'] = np.where(sample['Label'] == 0, 8, sample['Label']).astype(np.uint8)
    arrays[name] = {folder: sample[folder] for folder in extensions}
    for folder, array in arrays[name].items():
      rgbx_layout.write_image(os.path.join(root, folder, name + extensions[folder]), array)
    if cmx:
      lines['train' if i < num_train else 'val'].append(name)
    elif i < num_train:
      lines['train'].append(f'RGB/{name}.jpg')
    else:
      lines['val'].append(name if i % 2 else f'{name} Label/{name}.png')
  for split, file in (('train', 'train.txt'), ('val', 'test.txt')):
    with open(os.path.join(root, file), 'w') as f:
      f.write('\n'.join(lines[split]) + '\n\n')  # A blank line is skipped.
  return arrays


def _set(config, values):
  tiny._set(config, values)  # pylint: disable=protected-access
  return config


def rgbx_config(spec, dirs, **extra):
  """A shrunk config of configs/<spec> on the hand-written dataset (dotted keys, '__' = '.')."""
  config = config_lib.load(f'configs/{spec}')
  return _set(config, {**SHRINK, **dirs, **{k.replace('__', '.'): v for k, v in extra.items()}})


@pytest.fixture(scope='module')
def hand(tmp_path_factory):
  """(arrays of every sample, data dirs) of the hand-written dataset, prepared."""
  root = tmp_path_factory.mktemp('hand')
  arrays = write_hand_dataset(str(root / 'dataset'))
  dirs = {'data.manual_dir': str(root / 'dataset'), 'data.tfds_data_dir': str(root / 'tfds')}
  rgbx.prepare(rgbx_config('rgbx_nyudv2_refinenet101.py', dirs))
  return arrays, dirs


@pytest.fixture(scope='module')
def cmx(tmp_path_factory):
  """(arrays of every sample, data dirs) of a hand-written dataset in CMX's layout."""
  root = tmp_path_factory.mktemp('cmx')
  arrays = write_hand_dataset(str(root / 'dataset'), seed=1, cmx=True)
  dirs = {'data.manual_dir': str(root / 'dataset'), 'data.tfds_data_dir': str(root / 'tfds')}
  return arrays, dirs


def test_import_does_not_load_tensorflow():
  code = ('import sys; import asymfusion_jax.data.rgbx, asymfusion_jax.data.rgbx.synthetic; '
          'sys.exit("tensorflow" in sys.modules)')
  assert subprocess.run([sys.executable, '-c', code], check=False).returncode == 0


def test_files_are_read_without_loss_and_statistics_are_measured(hand):
  arrays, dirs = hand
  config = rgbx_config('rgbx_nyudv2_refinenet101.py', dirs)
  config.data.modality_folders = {'rgb': 'RGB', 'depth': 'Depth', 'normal': 'Normal',
                                  'thermal': 'Modal'}  # Another layout: a build of its own.
  config.modalities = ('thermal', 'normal', 'rgb', 'depth')
  rgbx.prepare(config)
  names = sorted(arrays)
  assert [rgbx.num_examples(config, s) for s in ('train', 'val')] == [NUM_TRAIN, NUM_VAL]
  for split, first in (('train', 0), ('val', NUM_TRAIN)):
    for index in range(rgbx.num_examples(config, split)):
      got, want = rgbx.read(config, split, index), arrays[names[first + index]]
      assert got['name'] == names[first + index] and got['index'] == index
      jpeg = cv2.imread(os.path.join(dirs['data.manual_dir'], 'RGB', got['name'] + '.jpg'),
                        cv2.IMREAD_UNCHANGED)[..., ::-1]
      np.testing.assert_array_equal(got['rgb'], jpeg)  # The JPEG's own pixels, RGB order.
      assert got['depth'].dtype == np.uint16 and got['depth'].max() > 255
      np.testing.assert_array_equal(got['depth'], want['Depth'])
      np.testing.assert_array_equal(got['normal'], want['Normal'])  # float32, 3 channels.
      np.testing.assert_array_equal(got['thermal'], want['Modal'])
      # Offset 1: raw 0 is unlabelled, raw v is class v - 1.
      np.testing.assert_array_equal(got['label'], np.where(want['Label'] == 0, 255,
                                                           want['Label'].astype(int) - 1))
  norms = rgbx.normalisation(config)
  train_depth = np.stack([arrays[n]['Depth'] for n in names[:NUM_TRAIN]]).astype(np.float64)
  np.testing.assert_allclose(norms['depth'].mean, [train_depth.mean()] * 3, rtol=1e-9)
  np.testing.assert_allclose(norms['depth'].std, [train_depth.std()] * 3, rtol=1e-9)
  train_normal = np.stack([arrays[n]['Normal'] for n in names[:NUM_TRAIN]]).astype(np.float64)
  np.testing.assert_allclose(norms['normal'].mean, train_normal.mean(axis=(0, 1, 2)), rtol=1e-6)
  assert norms['rgb'].mean == (0.485, 0.456, 0.406) and norms['rgb'].interpolation == 'cubic'
  assert norms['normal'].interpolation == 'nearest'
  # Each modality normalised into its place; padding normalises to 0; one channel repeated.
  batch = next(rgbx.eval_batches(config, batch_size=4))
  assert batch['image'].shape == (4, 4, HEIGHT, WIDTH, 3)
  depth = rgbx.read(config, 'val', 0)['depth']
  np.testing.assert_allclose(batch['image'][3, 0], ((depth - norms['depth'].mean[0])
                                                    / norms['depth'].std[0])[..., None].repeat(
                                                        3, -1), rtol=1e-5, atol=1e-5)
  train = next(rgbx.train_batches(config))
  assert train['image'].shape == (4, 4, 32, 32, 3) and np.isfinite(train['image']).all()
  # predict reads new images as training does and writes the dataset's raw labels (offset 1).
  io = rgbx.predict_io(config)
  np.testing.assert_allclose(io.network_input('depth', depth), batch['image'][3, 0], rtol=1e-6)
  assert (io.pad_value('normal') == 0).all()
  assert io.label_image(np.array([[0, 4]])).tolist() == [[1, 5]]


def test_indexed_colour_labels_read_as_their_indices(tmp_path):
  """Labels saved as palette PNGs (PIL mode 'P', as VOC-style tools write them) hold class ids
  as indices; OpenCV decodes only the colours, so the palette is read back."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  indices = np.random.default_rng(0).integers(0, 6, (7, 9)).astype(np.uint8)
  indices[0, 0] = 255
  image = Image.fromarray(indices, mode='P')
  colours = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)]
  image.putpalette([v for c in colours for v in c] + [0, 0, 0] * 249 + [224, 224, 192])
  image.save(tmp_path / 'label.png')
  data = (tmp_path / 'label.png').read_bytes()
  np.testing.assert_array_equal(rgbx_layout.decode(data, 'label.png', label=True), indices)
  assert rgbx_layout.decode(data, 'label.png').shape == (7, 9, 3)  # A modality: its colours.


@pytest.mark.parametrize('case,match', [
    ('missing_file', r'Missing file Depth/img001\.<png\|jpg.*train\.txt line 2'),
    ('missing_folder', r'Missing folder .*Depth: the folder of modality \'depth\''),
    ('missing_list', r'Missing list file .*test\.txt \(config\.data\.list_files\.val\)'),
    ('no_such_file', r"test\.txt line 1 \('RGB/nope\.jpg'\) names RGB/nope\.jpg, which is not a"),
    ('unknown_folder', r"train\.txt line 1 .*'Foo/img000\.png' names no file of this layout"),
    ('ambiguous', r'Ambiguous files for train\.txt line 1 .*Depth/img000\.png, Depth/img000\.npy'),
    ('repeated', r"train\.txt line 2 .*repeats the sample 'img000' of line 1"),
    ('unreadable', r'Unreadable image Depth/img001\.png listed in train\.txt line 2'),
    ('mis_sized', r'Mis-sized Depth/img002\.png listed in train\.txt line 3 .*: it is 8x10 but '
                  r'the label Label/img002\.png is 8x12'),
    ('four_channels', r'RGB/img001\.png listed in train\.txt line 2 .* has shape \(8, 12, 4\)'),
    ('nan', r'Normal/img000\.npy listed in train\.txt line 1 .* holds NaN'),
    ('channels_change', r'Depth/img001\.png .* has 3 channel\(s\) of uint8, but Depth/img000'),
    ('colour_label', r'Label Label/img000\.png listed in train\.txt line 1 .* single-channel'),
    ('label_outside', r'Label Label/img001\.png listed in train\.txt line 2 .* has the value 9, '
                      r'class 8 with config\.data\.label_offset=1; this config has classes 0\.\.4'),
])
def test_bad_input_stops_naming_the_file_and_line(tmp_path, case, match):
  root = tmp_path / 'dataset'
  rng = np.random.default_rng(0)
  samples = {f'img{i:03d}': (rng.integers(0, 255, (8, 12, 3), np.uint8),
                             rng.integers(0, 65535, (8, 12), np.uint16),
                             rng.normal(size=(8, 12)).astype(np.float32),
                             rng.integers(1, K + 1, (8, 12), np.uint8)) for i in range(4)}
  for name, (rgb, depth, normal, label) in samples.items():
    for folder, array, ext in (('RGB', rgb, '.png'), ('Depth', depth, '.png'),
                               ('Normal', normal, '.npy'), ('Label', label, '.png')):
      rgbx_layout.write_image(root / folder / (name + ext), array)
  train, val = ['RGB/img000.png', 'RGB/img001.png', 'RGB/img002.png'], ['img003']
  config = rgbx_config('rgbx_nyudv2_refinenet101.py', {
      'data.manual_dir': str(root), 'data.tfds_data_dir': str(tmp_path / 'tfds')},
                       data__num_train=3, data__num_val=1, batch_size=1)
  config.data.modality_folders = {'rgb': 'RGB', 'depth': 'Depth', 'normal': 'Normal'}
  w = rgbx_layout.write_image
  if case == 'missing_file':
    os.remove(root / 'Depth/img001.png')
  elif case == 'missing_folder':
    shutil.rmtree(root / 'Depth')
  elif case == 'no_such_file':
    val = ['RGB/nope.jpg']
  elif case == 'unknown_folder':
    train[0] = 'RGB/img000.png Foo/img000.png'
  elif case == 'ambiguous':
    w(root / 'Depth/img000.npy', np.zeros((8, 12), np.float32))
  elif case == 'repeated':
    train[1] = 'img000'
  elif case == 'unreadable':
    (root / 'Depth/img001.png').write_bytes(b'not a png')
  elif case == 'mis_sized':
    w(root / 'Depth/img002.png', np.zeros((8, 10), np.uint16))
  elif case == 'four_channels':
    w(root / 'RGB/img001.png', np.zeros((8, 12, 4), np.uint8))
  elif case == 'nan':
    w(root / 'Normal/img000.npy', np.full((8, 12), np.nan, np.float32))
  elif case == 'channels_change':
    w(root / 'Depth/img001.png', np.zeros((8, 12, 3), np.uint8))
  elif case == 'colour_label':
    w(root / 'Label/img000.png', np.ones((8, 12, 3), np.uint8))
  elif case == 'label_outside':
    w(root / 'Label/img001.png', np.full((8, 12), 9, np.uint8))
  (root / 'train.txt').write_text('\n'.join(train) + '\n')
  if case != 'missing_list':
    (root / 'test.txt').write_text('\n'.join(val) + '\n')
  with pytest.raises(LayoutError, match=match):
    rgbx.prepare(config)


def test_a_changed_folder_is_rebuilt_and_a_failed_rebuild_keeps_the_build(tmp_path):
  root = tmp_path / 'dataset'
  arrays = write_hand_dataset(str(root), num_train=2, num_val=1)
  dirs = {'data.manual_dir': str(root), 'data.tfds_data_dir': str(tmp_path / 'tfds')}
  config = rgbx_config('mfnet_rgbt_refinenet101.py', dirs, data__num_train=2, data__num_val=1,
                       batch_size=1, model__num_classes=9,
                       data__class_names=rgbx_config('mfnet_rgbt_refinenet101.py',
                                                     {}).data.class_names)
  rgbx.prepare(config)  # Offset 0: raw labels 0..5 are classes 0..5 of MFNet's 9.
  np.testing.assert_array_equal(rgbx.read(config, 'train', 0)['label'], arrays['img000']['Label'])
  thermal = arrays['img001']['Modal'].astype(np.float64)
  both = np.stack([arrays['img000']['Modal'], thermal]).astype(np.float64)
  assert rgbx.normalisation(config)['thermal'].mean[0] == pytest.approx(both.mean())
  assert rgbx.normalisation(config)['thermal'].interpolation == 'linear'
  brighter = np.minimum(arrays['img001']['Modal'].astype(int) + 7, 255).astype(np.uint8)
  rgbx_layout.write_image(root / 'Modal' / 'img001.png', np.pad(brighter, ((0, 0), (0, 1))))
  with pytest.raises(LayoutError, match=r'Mis-sized Modal/img001\.png'):
    rgbx.prepare(config)
  # The failed rebuild wrote nothing over the build: it still reads, as before.
  np.testing.assert_array_equal(rgbx.read(config, 'train', 1)['thermal'],
                                arrays['img001']['Modal'])
  rgbx_layout.write_image(root / 'Modal' / 'img001.png', brighter)
  rgbx.prepare(config)
  np.testing.assert_array_equal(rgbx.read(config, 'train', 1)['thermal'], brighter)


@pytest.mark.parametrize('key,value,match', [
    ('modalities', ('rgb', 'hha'), r"config\.modalities=\('rgb', 'hha'\) must be a sequence of "
                                   r"known modalities, among \['depth', 'rgb'\]"),
    ('data.modality_folders', {}, r'config\.data\.modality_folders=.* non-empty mapping'),
    ('data.modality_folders', {'rgb': 'RGB', 'depth': 'Label'}, r'distinct folders'),
    ('data.modality_folders', {'rgb': '../RGB', 'depth': 'D'}, r'modality_folders\.rgb=\'\.\./RGB'),
    ('data.label_offset', -1, r'config\.data\.label_offset=-1 must be an integer >= 0'),
    ('data.list_files', {'train': 'train.txt'}, r'config\.data\.list_files\.val=None'),
    ('data.normalisation', {'hha': {'mean': 0, 'std': 1}}, r'normalisation\.hha=.*a modality of'),
    ('data.normalisation', {'depth': {'mean': 0}}, r'mean and std together'),
    ('data.normalisation', {'depth': {'mean': 0, 'std': 0}}, r'normalisation\.depth\.std=0 must'),
    ('data.normalisation', {'depth': {'mean': (1, 2), 'std': 1}}, r'depth\.mean=\(1, 2\) must'),
    ('data.normalisation', {'depth': {'interpolation': 'area'}}, r"interpolation='area' must be"),
    ('data.normalisation', {'depth': {'offset': 1}}, r'a mapping with some of the keys'),
    ('data.class_names', ('a', 'b'), r'config\.data\.class_names=.* must be empty, or 5 names'),
    ('data.palette', ((0, 0, 0),) * 4 + ((0, 0, 256),), r'config\.data\.palette=.* 5 RGB'),
])
def test_config_errors_name_the_key(key, value, match):
  config = rgbx_config('rgbx_nyudv2_refinenet101.py', {'data.manual_dir': '/nowhere'})
  _set(config, {key: value})
  with pytest.raises(validation.ConfigError, match=match):
    segmentation_checks.check_config(config)


def test_an_empty_dataset_folder_is_one_line_before_any_workdir(tmp_path):
  config = rgbx_config('mfnet_rgbt_refinenet101.py', {'data.manual_dir': ''},
                       model__num_classes=9, data__class_names=())
  with pytest.raises(LayoutError, match=r'config\.data\.manual_dir is empty: set it to the '
                                        r'dataset folder'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _check_trained_run(workdir, results, step):
  """metrics.jsonl of a run that trained to `step` and evaluated there: finite train losses, and
  the evaluation's scores as train_and_evaluate returned them."""
  records = _metrics(workdir)
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert losses and np.isfinite(losses).all()
  evaluated, = [r for r in records if 'eval/ensemble/miou' in r and r['step'] == step]
  assert {k: v for k, v in evaluated.items() if k.startswith('eval/')} == pytest.approx(
      {f'eval/{b}/{m}': v for b, r in results.items() for m, v in r.items()})


def _sidecar(workdir, step=None):
  """The export sidecar of a workdir's checkpoint, as written (through JSON)."""
  source = export.from_workdir(workdir, step=step)
  exported = export.export_forward(source, HEIGHT, WIDTH, platforms=('cpu',))
  return json.loads(json.dumps(export.sidecar(source, exported, 'model.jax')))


def _check_sidecar(meta, config, train_arrays):
  """The sidecar describes config's inputs: each modality's normalisation, a measured one with
  the mean and standard deviation of `train_arrays` ({modality: the train split's raw arrays})."""
  names, k = list(config.modalities), config.model.num_classes
  assert meta['modalities'] == names and meta['num_classes'] == k
  assert meta['label_offset'] == config.data.label_offset
  assert meta['class_names'] == list(config.data.class_names)
  assert len(meta['class_names']) in (0, k)
  assert meta['palette'] == [list(c) for c in config.data.palette]
  for name in names:
    n = meta['normalisation'][name]
    if name == 'rgb':
      assert (n['source'], n['interpolation']) == ('imagenet', 'cubic')
      continue
    raw = np.stack(train_arrays[name]).astype(np.float64)
    channels = 3 if raw.ndim == 4 else 1
    flat = raw.reshape(-1, channels)
    assert (n['source'], n['channels']) == ('measured', channels)
    assert n['interpolation'] == ('linear' if name == 'thermal' else 'nearest')
    np.testing.assert_allclose(n['mean'], np.broadcast_to(flat.mean(axis=0), (3,)), rtol=1e-6)
    np.testing.assert_allclose(n['std'], np.broadcast_to(flat.std(axis=0), (3,)), rtol=1e-6)


def test_main_trains_resumes_evaluates_and_exports(hand, tmp_path):
  """M = 2 with the NYUDv2 config's data settings, shrunk: main trains to step 6, the same
  config resumes to step 12 with the parameters of an uninterrupted run, --mode=eval reproduces
  the last evaluation (with the prediction images), the export's sidecar describes the rgbx
  inputs, and predict writes labels in the dataset's convention, from images and .npy arrays.
  Evaluations only at the end of each run: the programs are the tiny demo's.

  Resuming is checked with this config only: it restores the checkpoint's TrainState and data
  position, and the batch of step t is a function of (config.seed, t) alone (batching.
  train_batches, which every rgbx config and NYUDv2 share); no data setting enters it."""
  arrays, dirs = hand
  workdir, straight = str(tmp_path / 'run'), str(tmp_path / 'straight')
  once = {'eval_every_epochs': 100, 'num_prediction_images': 1}
  result = subprocess.run(
      [sys.executable, '-m', 'asymfusion_jax.main', '--config=configs/rgbx_nyudv2_refinenet101.py',
       f'--workdir={workdir}', '--config.max_steps=6'] + tiny.flags(dirs, **{**SHRINK, **once}),
      cwd=tiny.REPO, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'validation at step 6' in result.stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    recorded = json.load(f)
  assert recorded['data']['name'] == 'rgbx' and recorded['data']['label_offset'] == 1
  config = rgbx_config('rgbx_nyudv2_refinenet101.py', dirs, **once)
  results = train.train_and_evaluate(config, workdir)  # Resumed from step 6.
  _check_trained_run(workdir, results, 12)
  train.train_and_evaluate(config, straight)
  params = {}
  for name in (workdir, straight):
    ckpts = checkpointing.Checkpoints(name)
    params[name] = ckpts.periodic.restore(12)['variables']['params']
    ckpts.close()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               params[workdir], params[straight])
  evaluated = train.evaluate_checkpoint(config, workdir, step=12)
  assert {b: pytest.approx(r) for b, r in results.items()} == evaluated
  assert os.listdir(os.path.join(workdir, 'eval', 'step_12', 'predictions')) == ['0000.png']

  meta = _sidecar(workdir, step=12)
  assert meta['outputs'] == ['rgb', 'depth', 'ensemble']
  assert meta['input_shape'] == [2, 'b', HEIGHT, WIDTH, 3]
  assert meta['output_shape'][0] == 3 and meta['output_shape'][-1] == K
  _check_sidecar(meta, config, {'depth': [arrays[n]['Depth'] for n in sorted(arrays)[:NUM_TRAIN]]})
  # What the sidecar says turns a raw val sample into the batch that evaluation fed the model.
  sample, batch = rgbx.read(config, 'val', 0), next(rgbx.eval_batches(config, batch_size=2))
  for m, name in enumerate(meta['modalities']):
    n = meta['normalisation'][name]
    raw = np.float32(sample[name])
    raw = raw[..., None] if raw.ndim == 2 else raw
    np.testing.assert_allclose(batch['image'][m, 0], (raw * n['scale'] - n['mean']) / n['std'],
                               rtol=1e-5, atol=1e-5)

  # predict on a file of the dataset, and on the same image with its depth as a .npy array of
  # floats (batch 2 at 48x64: tests/test_predict.py's program): the same outputs, and labels in
  # the dataset's convention, class c as c + 1.
  folders = {}
  for name, folder, ext in (('rgb', 'RGB', '.jpg'), ('depth', 'Depth', '.png')):
    folders[name] = str(tmp_path / 'new' / folder)
    os.makedirs(folders[name])
    shutil.copy(os.path.join(dirs['data.manual_dir'], folder, 'img016' + ext), folders[name])
  shutil.copy(os.path.join(folders['rgb'], 'img016.jpg'), os.path.join(folders['rgb'], 'array.jpg'))
  np.save(os.path.join(folders['depth'], 'array.npy'), arrays['img016']['Depth'].astype(np.float32))
  model = predict.from_workdir(workdir, step=12)
  out = tmp_path / 'predicted'
  predict.predict(model, predict.images(model.config, folders), str(out),
                  predict.Options(batch_size=2, logits=True))
  labels = {s: cv2.imread(str(out / 'ensemble' / 'labels' / f'{s}.png'), cv2.IMREAD_UNCHANGED)
            for s in ('img016', 'array')}
  logits = {s: np.load(out / 'ensemble' / 'logits' / f'{s}.npy') for s in ('img016', 'array')}
  assert labels['img016'].shape == (HEIGHT, WIDTH)
  np.testing.assert_array_equal(labels['img016'], logits['img016'].argmax(-1) + 1)
  np.testing.assert_array_equal(labels['array'], labels['img016'])
  np.testing.assert_allclose(logits['array'], logits['img016'], rtol=1e-6)


# Each new config's data settings, shrunk (the tiny model, one train step, one evaluation), with
# its own recipe (frozen BatchNorm, no clipping; the M = 2 run above takes the tiny demo's to
# share its programs, and checks resuming), trained for real: each M compiles its own model.
@pytest.mark.parametrize('spec', ['sunrgbd_refinenet101.py:rgb', 'mfnet_rgbt_refinenet101.py'])
def test_each_config_trains_evaluates_and_exports(hand, cmx, tmp_path, spec):
  """SUN RGB-D: DFormer's layout (the hand-written dataset), 37 classes, offset 1, RGB only
  (M = 1; its depth-only row :x reads depth alone into the same shapes, so the same program
  trains it). MFNet: CMX's layout (RGB/, Modal/ thermal, Label/, bare names in the lists), 9
  classes, offset 0, thermal normalised with its measured statistics and resized bilinearly,
  and a third modality of .npy arrays (Normal/): M = 3."""
  arrays, dirs = cmx if spec.startswith('mfnet') else hand
  base = config_lib.load(f'configs/{spec}')
  config = rgbx_config(spec, dirs, model__num_classes=base.model.num_classes,
                       data__class_names=base.data.class_names, max_steps=1,
                       eval_every_epochs=100, num_prediction_images=0, frozen_bn=True,
                       optim__clip_grad_norm=0.0)
  if spec.startswith('mfnet'):
    config.data.modality_folders = {'rgb': 'RGB', 'thermal': 'Modal', 'normal': 'Normal'}
    config.modalities = ('rgb', 'thermal', 'normal')
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert list(results) == list(config.modalities) + ['ensemble']
  _check_trained_run(workdir, results, 1)
  # The export sidecar's description of the inputs (export.sidecar takes it from the task, for
  # the workdir's config; the M = 2 run above checks the whole sidecar of an artifact).
  recorded = config_io.load_workdir_config(workdir)
  folders = dict(config.data.modality_folders)
  train_names = sorted(arrays)[:NUM_TRAIN]
  described = json.loads(json.dumps(tasks.get(recorded).export_sidecar(recorded)))
  _check_sidecar(described, config,
                 {m: [arrays[n][folders[m]] for n in train_names] for m in config.modalities})
  if spec.endswith(':rgb'):  # The depth-only row: depth, normalised as measured, alone.
    x = rgbx_config('sunrgbd_refinenet101.py:x', dirs, model__num_classes=base.model.num_classes)
    depth = rgbx.read(x, 'val', 0)['depth']
    norm = rgbx.normalisation(x)['depth']
    batch = next(rgbx.eval_batches(x, batch_size=1))
    assert x.modalities == ('depth',) and batch['image'].shape == (1, 1, HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(batch['image'][0, 0], ((depth - norm.mean[0]) / norm.std[0])[
        ..., None].repeat(3, -1), rtol=1e-5, atol=1e-5)


def test_predict_reads_npy_arrays_with_the_builds_checks(hand, tmp_path):
  """predict --input normal=DIR of .npy arrays (an rgbx dataset's modality): read as the build
  reads them, and each problem the build stops on a one-line error naming the file."""
  _, dirs = hand
  config = rgbx_config('rgbx_nyudv2_refinenet101.py', dirs)
  config.data.modality_folders = {'rgb': 'RGB', 'depth': 'Depth', 'normal': 'Normal'}
  config.modalities = ('rgb', 'normal')
  config.data.normalisation = {'normal': {'mean': (0.5, 0, 1), 'std': 2}}
  folders = {m: str(tmp_path / m) for m in config.modalities}
  rng = np.random.default_rng(0)
  normal = rng.normal(size=(8, 12, 3)).astype(np.float32)
  nan = normal.copy()
  nan[3, 4, 1] = np.nan
  for stem, array in (('a', normal), ('b', nan), ('c', np.zeros((8, 12, 2), np.float32)),
                      ('d', np.zeros((8, 10), np.float32))):
    rgbx_layout.write_image(os.path.join(folders['rgb'], stem + '.png'),
                            rng.integers(0, 256, (8, 12, 3), np.uint8))
    rgbx_layout.write_image(os.path.join(folders['normal'], stem + '.npy'), array)
  images = predict.images(config, folders)
  assert [(im.stem, os.path.basename(im.files['normal'])) for im in images] == [
      ('a', 'a.npy'), ('b', 'b.npy'), ('c', 'c.npy'), ('d', 'd.npy')]
  io = rgbx.predict_io(config)
  np.testing.assert_allclose(predict_inputs.read(images[0], io)['normal'],
                             (normal - (0.5, 0, 1)) / 2, rtol=1e-6)
  for image, match in zip(images[1:], (
      r'/normal/b\.npy holds NaN or infinite values; replace',
      r'/normal/c\.npy has shape \(8, 12, 2\); a modality has one or three channels',
      r'/normal/d\.npy is 8x10 but .*/rgb/d\.png is 8x12: the modalities of an image')):
    with pytest.raises(predict.InputError, match=match) as error:
      predict_inputs.read(image, io)
    assert '\n' not in str(error.value) and str(error.value).count('.npy') == 1


def test_class_names_and_palette_reach_the_prediction_images():
  config = config_lib.load('configs/mfnet_rgbt_refinenet101.py')
  assert rgbx.class_names(config)[:2] == ('unlabeled', 'car')
  colours = rgbx.palette(config)
  assert colours.shape == (256, 3) and colours[1].tolist() == [64, 0, 128]
  assert (colours[9:] == visualize.PALETTE[9:]).all()
  label = np.array([[0, 1], [8, 255]])
  assert visualize.colorize(label, colours).tolist() == [[[0, 0, 0], [64, 0, 128]],
                                                         [[192, 64, 0], [0, 0, 0]]]
  assert rgbx.class_names(config_lib.load('configs/sunrgbd_refinenet101.py'))[-1] == 'bag'
  assert rgbx.palette(config_lib.load('configs/sunrgbd_refinenet101.py')) is None


def test_synthetic_cli_writes_classes_that_need_every_modality(tmp_path):
  from asymfusion_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.main(['--kind=rgbx', '--modalities=rgb,depth,thermal', f'--out={tmp_path}',
                  '--num_train=12', '--num_val=2', '--height=48', '--width=64'])
  assert sorted(os.listdir(tmp_path)) == ['Depth', 'Label', 'RGB', 'Thermal', 'test.txt',
                                          'train.txt']
  lines = (tmp_path / 'train.txt').read_text().split()
  assert len(lines) == 12 and lines[0] == 'RGB/000001.jpg'
  names = rgbx_synthetic.class_names(('rgb', 'depth', 'thermal'))
  assert len(names) == rgbx_synthetic.num_classes(('rgb', 'depth', 'thermal')) == 9
  # Per object class, each modality's attribute against the background: bit m of the class
  # (modalities sorted: depth, rgb, thermal) decides its sign, and nothing else does, so
  # classes that differ only in other modalities' bits look alike in this one.
  scores = {c: {m: [] for m in ('depth', 'rgb', 'thermal')} for c in range(8)}
  for line in lines:
    stem = line[4:-4]
    read = lambda folder, ext: cv2.imread(str(tmp_path / folder / (stem + ext)),  # pylint: disable=cell-var-from-loop
                                          cv2.IMREAD_UNCHANGED).astype(np.float64)
    label, depth = read('Label', '.png'), read('Depth', '.png')
    rgb, thermal = read('RGB', '.jpg')[..., ::-1], read('Thermal', '.png')
    background = label == 1
    for c in range(8):
      inside = label == c + 2
      # Depth against the background plane around the object (the plane is tilted).
      ring = (cv2.dilate(inside.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0) & background
      if inside.sum() < 20 or ring.sum() < 10:
        continue
      scores[c]['depth'].append(np.median(depth[inside]) - np.median(depth[ring]))
      scores[c]['rgb'].append(np.mean(rgb[inside][:, 2] - rgb[inside][:, 0]))
      scores[c]['thermal'].append(np.mean(thermal[inside]) - np.mean(thermal[background]))
  signs = {'depth': 1, 'rgb': 1, 'thermal': -1}  # far, cool, cold are bit 1.
  for c, per in scores.items():
    for m, (bit, modality) in enumerate(zip((c & 1, c >> 1 & 1, c >> 2 & 1),
                                            ('depth', 'rgb', 'thermal'))):
      del m
      assert per[modality], (c, modality)
      expected = signs[modality] * (1 if bit else -1)
      assert all(np.sign(s) == expected for s in per[modality]), (names[c + 1], modality)
