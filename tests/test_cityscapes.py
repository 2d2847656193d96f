"""Cityscapes RGB-D: layout and builder, the streaming pipeline, the poly recipe, training that
resumes exactly, and evaluation at other strides and scales, on tiny synthetic scenes."""

import fnmatch
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import cv2
import jax
import numpy as np
import pytest

from asymfusion_jax import data, missing, models, running_sums, sharding, train, validation
from asymfusion_jax.data import layout
from asymfusion_jax.data.cityscapes import layout as cityscapes
from asymfusion_jax.data.cityscapes import pipeline as cityscapes_pipeline
from asymfusion_jax.data.cityscapes import synthetic as synthetic_cityscapes
from asymfusion_jax.tasks.segmentation import evaluation, optim
from asymfusion_jax.tasks.segmentation import validation as segmentation_validation
from tests import tiny

# configs/demo_cityscapes.py made tinier: 8 train scenes of 32x64, 2 steps per epoch, 4 steps.
OVERRIDES = {
    'model.middle_flow_units': 1,
    'data.synthetic_image_size': (32, 64),
    'data.num_train': 8,
    'data.num_val': 3,
    'batch_size': 4,
    'crop_size': 33,
    'eval_batch_size': 2,
    'optim.total_steps': 4,
    'log_every_steps': 2,
    'eval_every_epochs': 100,
    'checkpoint_every_steps': 2,
    'num_prediction_images': 2,
}


def tiny_config(tmp_dir, **extra):
  from configs import demo_cityscapes  # pylint: disable=g-import-not-at-top
  c = demo_cityscapes.get_config()
  tiny._set(c, {**OVERRIDES, 'data.manual_dir': os.path.join(str(tmp_dir), 'synthetic'),
                'data.tfds_data_dir': os.path.join(str(tmp_dir), 'tfds'),
                **{k.replace('__', '.'): v for k, v in extra.items()}})
  return c


@pytest.fixture(scope='module')
def cs_data(tmp_path_factory):
  """A prepared tiny synthetic Cityscapes set; returns its folder (synthetic/, tfds/ inside)."""
  folder = tmp_path_factory.mktemp('cityscapes')
  cityscapes_pipeline.prepare(tiny_config(folder))
  return folder


@pytest.fixture(scope='module')
def cs_run(tmp_path_factory, cs_data):
  """(workdir, results) of a complete 4-step run: checkpoints at steps 2 and 4, eval at 4."""
  workdir = str(tmp_path_factory.mktemp('cs_run') / 'run')
  return workdir, train.train_and_evaluate(tiny_config(cs_data), workdir)


def test_label_ids_map_to_train_ids():
  ids = np.asarray([[7, 8, 26, 33], [0, 1, 6, 34]], np.uint8)
  np.testing.assert_array_equal(cityscapes.LABEL_TO_TRAIN_ID[ids],
                                [[0, 1, 13, 18], [255, 255, 255, 255]])
  assert len(cityscapes.PALETTE) == cityscapes.NUM_CLASSES == 19


def test_depth_and_rgb_inputs():
  d = np.asarray([[0, 1, 257, 256 * 64 + 1, 256 * 200 + 1]], np.uint16)
  np.testing.assert_allclose(cityscapes.depth_input(d)[0, :, 0], [-1, -1, -1 + 2 / 128, 0, 1])
  assert cityscapes.depth_input(d).shape == (1, 5, 3)
  np.testing.assert_allclose(cityscapes.rgb_input(np.asarray([0, 255], np.uint8)), [-1, 1])
  assert cityscapes.pad_value('rgb') == 0.0 and cityscapes.pad_value('depth') == -1.0


def test_zip_archives_read_like_folders_and_bad_files_are_named(tmp_path):
  folder = tmp_path / 'folders'
  synthetic_cityscapes.write_cityscapes(folder, 2, 1, 16, 32)
  archives = tmp_path / 'archives'
  archives.mkdir()
  for name in cityscapes.FOLDERS:
    with zipfile.ZipFile(archives / cityscapes.ARCHIVES[name], 'w') as z:
      for path in sorted((folder / name).rglob('*.png')):
        z.write(path, str(path.relative_to(folder)))
  from_folders, from_zips = cityscapes.Files(folder), cityscapes.Files(archives)
  entries = cityscapes.list_examples(from_folders, 'train')
  assert entries == cityscapes.list_examples(from_zips, 'train') and len(entries) == 2
  a, b = (cityscapes.read_example(f, entries[0]) for f in (from_folders, from_zips))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert a['disparity'].dtype == np.uint16 and a['disparity'].max() > 255

  label = entries[1].path('gtFine')
  layout.write_png(folder / label, np.zeros((16, 31), np.uint8))
  with pytest.raises(layout.LayoutError, match=f'Mis-sized file .*{label}.*16x31'):
    cityscapes.read_example(from_folders, entries[1])
  os.remove(folder / entries[0].path('disparity'))
  with pytest.raises(layout.LayoutError, match=f'Missing file .*{entries[0].path("disparity")}'):
    cityscapes.list_examples(from_folders, 'train')


def test_build_is_lossless_and_in_list_order(cs_data):
  config = tiny_config(cs_data)
  files = cityscapes.Files(config.data.manual_dir)
  for i, entry in enumerate(cityscapes.list_examples(files, 'train')):
    raw, built = cityscapes.read_example(files, entry), cityscapes_pipeline.read(config, 'train', i)
    assert built['name'] == entry.path('leftImg8bit')
    for key in ('rgb', 'disparity', 'label'):
      np.testing.assert_array_equal(built[key], raw[key])
  assert built['disparity'].dtype == np.uint16 and built['disparity'].max() > 255


def test_augmentation_geometry():
  choices = cityscapes_pipeline.scales((0.5, 2.0), 0.25)
  np.testing.assert_allclose(choices, [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2])
  example = {'rgb': np.full((4, 6, 3), 255, np.uint8),
             'disparity': np.full((4, 6), 256 * 128 + 1, np.uint16),
             'label': np.arange(24, dtype=np.uint8).reshape(4, 6)}
  images, label = cityscapes_pipeline.apply_augmentation(
      (1.0, (4, 6), 0, 0, True), example, ('rgb', 'depth'), 8, 255)
  # Padded at the bottom and right, then mirrored: the image sits in the top-right corner.
  np.testing.assert_array_equal(label[:4, 2:], example['label'][:, ::-1])
  assert (label[4:] == 255).all() and (label[:, :2] == 255).all()
  assert (images['rgb'][:4, 2:] == 1).all() and (images['rgb'][4:] == 0).all()
  assert (images['depth'][:4, 2:] == 1).all() and (images['depth'][:, :2] == -1).all()
  # Sampling the crop directly matches resizing the whole image, then cropping.
  rng = np.random.default_rng(0)
  example = {'rgb': cv2.GaussianBlur(rng.integers(0, 256, (20, 30, 3), np.uint8), (5, 5), 2),
             'disparity': rng.integers(1, 60000, (20, 30), np.uint16),
             'label': rng.integers(0, 19, (20, 30), np.uint8)}
  images, label = cityscapes_pipeline.apply_augmentation(
      (2.0, (40, 60), 3, 5, False), example, ('rgb', 'depth'), 16, 255)
  window = (slice(3, 19), slice(5, 21))
  resized = {k: cv2.resize(v, (60, 40), interpolation=cv2.INTER_NEAREST if k != 'rgb' else
                           cv2.INTER_LINEAR)[window] for k, v in example.items()}
  np.testing.assert_array_equal(label, resized['label'])
  np.testing.assert_array_equal(images['depth'], cityscapes.depth_input(resized['disparity']))
  np.testing.assert_allclose(images['rgb'], cityscapes.rgb_input(resized['rgb']), atol=2 / 127.5)
  draw = cityscapes_pipeline.draw_augmentation(np.random.default_rng(0), 40, 80, 33, choices)
  scale, scaled, top, left, _ = draw
  assert scaled == (int(40 * scale), int(80 * scale))
  assert 0 <= top <= max(scaled[0], 33) - 33 and 0 <= left <= max(scaled[1], 33) - 33


def test_train_batches_depend_on_seed_and_step_only_and_shard_by_process(cs_data):
  config = tiny_config(cs_data)
  first = [next(b) for b in [cityscapes_pipeline.train_batches(config)] for _ in range(3)]
  resumed = next(cityscapes_pipeline.train_batches(config, start_step=2))
  config.data.num_workers = 0
  halves = [next(cityscapes_pipeline.train_batches(config, 2, i, 2)) for i in range(2)]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(resumed[key], first[2][key])
    axis = 1 if key == 'image' else 0
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves], axis), first[2][key])
  assert not np.array_equal(first[0]['label'], first[1]['label'])
  assert first[0]['image'].shape == (2, 4, 33, 33, 3)
  assert set(np.unique(first[0]['label'])) <= {0, 2, 10, 11, 12, 13, 14, 255}


def test_poly_schedule_and_weight_decay_mask():
  config = tiny_config('/unused')
  lr = optim.learning_rate_schedules(config, 2)['all']
  base = config.optim.lr
  np.testing.assert_allclose([lr(0), lr(2), lr(4)], [base, base * 0.5 ** 0.9, 0], rtol=1e-6)
  assert optim.total_steps(config, 2) == 4
  model = models.build_model(config)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((2, 1, 33, 33, 3))))
  mask = {'/'.join(getattr(k, 'key', '') for k in path): v for path, v in
          jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params['params']))[0]}
  unit = 'backbone/entry_flow_block1_unit_1/separable_conv1'
  assert mask[f'{unit}/pointwise/conv/kernel'] and mask['logits_semantic/kernel']
  assert mask['aspp0/conv/kernel'] and mask[f'{unit.rsplit("/", 1)[0]}/shortcut/conv/kernel']
  assert not mask[f'{unit}/depthwise/conv/kernel'] and not mask['aspp1/depthwise/conv/kernel']
  assert not mask[f'{unit}/pointwise/BatchNorm/scale'] and not mask['logits_semantic/bias']
  assert not mask['alpha']


def test_deeplab_configs_check_their_keys():
  config = tiny_config('/unused')
  segmentation_validation.check_config(config)
  for key, value, message in (('model.width_divisor', 3, 'model.width_divisor=3'),
                              ('eval.output_stride', 4, 'eval.output_stride=4'),
                              ('model.num_classes', 20, 'model.num_classes=20'),
                              ('data.name', 'nyudv2', "data.name='nyudv2'")):
    bad = tiny_config('/unused', **{key: value})
    with pytest.raises(validation.ConfigError, match=message.replace('.', r'\.')):
      segmentation_validation.check_config(bad)


def test_a_crop_larger_than_the_scenes_is_refused(cs_data, tmp_path):
  """Against the build's image size (32x64 at the largest scale 2: 64), and against the
  configured size of synthetic scenes still to generate (the demo's 64x128: 128)."""
  segmentation_validation.check_crop(tiny_config(cs_data, crop_size=64))
  with pytest.raises(validation.ConfigError, match=r'crop_size=65 .* 32x64 .* at most 64$'):
    segmentation_validation.check_crop(tiny_config(cs_data, crop_size=65))
  planned = tiny_config(tmp_path, crop_size=1000, data__synthetic_image_size=(64, 128))
  with pytest.raises(validation.ConfigError, match=r'crop_size=1000 .* 64x128 .* at most 128$'):
    segmentation_validation.check_training(planned)
  assert os.listdir(tmp_path) == []


_BN_SCRIPT = textwrap.dedent('''
  import jax, jax.numpy as jnp, numpy as np
  from asymfusion_jax import sharding
  from asymfusion_jax.models.layers import ModalBatchNorm
  assert jax.device_count() == 2
  bn = ModalBatchNorm(use_running_average=False, momentum=0.5)
  x = np.random.default_rng(0).normal(size=(2, 4, 3, 3, 5)).astype(np.float32)
  x[:, 2:] += 3.0  # The second device's rows differ: per-device statistics would show it.
  variables = bn.init(jax.random.key(0), x)
  apply = lambda v, x: bn.apply(v, x, mutable=['batch_stats'])
  mesh = sharding.make_mesh()
  sharded = jax.jit(apply, in_shardings=(sharding.replicated(mesh),
                                         sharding.batch_shardings(mesh, {'image': x})['image']))
  (y, s), (y1, s1) = sharded(variables, x), jax.jit(apply)(variables, x)
  np.testing.assert_allclose(y, y1, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s, s1)
  mean = x.mean(axis=(1, 2, 3))
  np.testing.assert_allclose(s1['batch_stats']['mean'], 0.5 * mean, rtol=1e-5, atol=1e-6)
  print('global')
''')


def test_batch_norm_statistics_are_those_of_the_global_batch():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': tiny.REPO, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', _BN_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0 and 'global' in out.stdout, out.stderr[-3000:]


def read_params(workdir, step):
  from asymfusion_jax import checkpointing  # pylint: disable=g-import-not-at-top
  config = tiny_config('/unused')
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  ckpts = checkpointing.Checkpoints(workdir, 2, create=False)
  try:
    variables, _ = ckpts.restore_variables(train.abstract_train_state(config, mesh), step)
  finally:
    ckpts.close()
  return jax.device_get(variables['params'])


def test_training_writes_evaluation_and_palette_predictions(cs_run):
  workdir, results = cs_run
  assert set(results) == {'rgb', 'depth', 'ensemble'}
  with open(os.path.join(workdir, 'eval_step_4.json')) as f:
    record = json.load(f)
  assert record['classes'][13] == 'car' and record['output_stride'] == 16
  confusion = np.asarray(record['confusion']['ensemble'])
  assert confusion.shape == (19, 19) and confusion.sum() > 0
  assert record['branches']['ensemble']['miou'] == pytest.approx(results['ensemble']['miou'])
  pngs = sorted(os.listdir(os.path.join(workdir, 'predictions')))
  assert len(pngs) == 6 and pngs[0].endswith('_depth.png'), pngs
  colours = cv2.imread(os.path.join(workdir, 'predictions', pngs[0]))[..., ::-1]
  table = {tuple(c) for c in cityscapes.PALETTE}
  assert {tuple(c) for c in colours.reshape(-1, 3)} <= table


# Runs the training CLI in a process that hangs once its step-2 checkpoint is written, so that the
# test's SIGKILL lands mid-run at a known point (data workers reading ahead, steps 3 and 4 to go).
# The marker file (environment variable HANG_MARKER) says when.
HANG_AFTER_STEP_2 = textwrap.dedent("""
    import os, time
    from absl import app
    from asymfusion_jax import checkpointing, main
    save = checkpointing.Checkpoints.save
    def save_then_hang(self, state, record, also_best=False):
      save(self, state, record, also_best)
      if int(record['step']) == 2:
        self.wait()  # Written and verified: the kill comes after the save.
        open(os.environ['HANG_MARKER'], 'w').close()
        time.sleep(600)
    checkpointing.Checkpoints.save = save_then_hang
    app.run(main.main, flags_parser=main.parse_flags)
""")


def test_resume_after_a_kill_is_exact(cs_run, cs_data, tmp_path):
  """A training process killed (SIGKILL) after its step-2 checkpoint, resumed, ends with the
  parameters of the uninterrupted run."""
  workdir = str(tmp_path / 'killed')
  overrides = {**OVERRIDES, 'data.manual_dir': str(cs_data / 'synthetic'),
               'data.tfds_data_dir': str(cs_data / 'tfds')}
  flags = [f'--config.{k}=' + ('(' + ','.join(map(str, v)) + ')' if isinstance(v, tuple)
                               else str(v)) for k, v in overrides.items()]
  tiny.kill_at_marker([sys.executable, '-c', HANG_AFTER_STEP_2,
                       '--config=configs/demo_cityscapes.py', f'--workdir={workdir}', *flags],
                      tmp_path / 'checkpoint_2_written', tmp_path / 'killed.log')
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  train.train_and_evaluate(tiny_config(cs_data), workdir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               read_params(workdir, 4), read_params(cs_run[0], 4))


def test_eval_at_output_stride_8_multiscale_and_flip_with_and_without_depth(cs_run, cs_data,
                                                                            tmp_path, monkeypatch):
  """TF-DeepLab's evaluation at output stride 8, two scales and mirrored, also without depth
  (config.eval.missing, fill 'drop'): missing.json has the rows, the ensemble is the rgb branch,
  and the missing evaluation's compiled step, the same model at stride 8, gives the same
  probabilities and predictions whatever depth's pixels are."""
  # Every Evaluator that evaluate_checkpoint runs, and the variables it runs.
  made = tiny.record_evaluator_runs(monkeypatch, evaluation)
  workdir = str(tmp_path / 'copy')
  shutil.copytree(cs_run[0], workdir)
  config = tiny_config(cs_data, eval__output_stride=8, eval__scales=(0.75, 1.25), eval__flip=True,
                       eval__missing=('depth',), eval__missing_fill='drop')
  results = train.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval', 'step_4', 'eval_step_4.json')) as f:
    record = json.load(f)
  assert record['output_stride'] == 8 and record['scales'] == [0.75, 1.25] and record['flip']
  assert record['branches']['ensemble']['miou'] == pytest.approx(results['ensemble']['miou'])
  assert np.asarray(record['confusion']['rgb']).sum() == np.asarray(
      json.load(open(os.path.join(cs_run[0], 'eval_step_4.json')))['confusion']['rgb']).sum()

  with open(os.path.join(workdir, 'eval', 'step_4', 'missing.json')) as f:
    rows = json.load(f)['missing']
  assert rows['none'] == results and set(rows) == {'none', 'depth'}
  assert set(rows['depth']) == {'rgb', 'ensemble'}  # The dropped branch is not reported.
  assert rows['depth']['ensemble'] == rows['depth']['rgb']
  (_, variables), (without_depth, _) = made
  assert isinstance(without_depth.model, missing.MissingModel)
  assert without_depth.model.output_stride == 8
  batch = next(without_depth.dataset.eval_batches(config, 0, 1, without_depth.batch_size))
  batch.pop('name')
  noisy = {**batch, 'image': batch['image'].copy()}
  depth = config.modalities.index('depth')
  noisy['image'][depth] = np.random.default_rng(0).normal(size=noisy['image'][depth].shape) * 5
  (totals, preds), (noisy_totals, noisy_preds) = (
      without_depth._eval(variables, sharding.global_batch(without_depth.mesh, b),
                          without_depth._zeros()) for b in (batch, noisy))
  preds, noisy_preds = np.asarray(preds), np.asarray(noisy_preds)
  totals, noisy_totals = (running_sums.counts_to_host(t) for t in (totals, noisy_totals))
  rgb = config.modalities.index('rgb')
  for b in (rgb, -1):  # rgb, ensemble: bitwise the same; the ensemble predicts as rgb.
    np.testing.assert_array_equal(preds[b], noisy_preds[b])
    np.testing.assert_array_equal(totals[b], noisy_totals[b])
  np.testing.assert_array_equal(preds[-1], preds[rgb])
  assert totals[rgb].sum() > 0


def test_config_bn_momentum_sets_every_batch_norm():
  """Every BatchNorm the model calls (traced, not compiled) has config.model.bn_momentum."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from asymfusion_jax.models import ModalBatchNorm  # pylint: disable=g-import-not-at-top
  model = models.build_model(tiny_config('/unused', model__bn_momentum=0.5))
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, ModalBatchNorm):
      seen.append(context.module.momentum)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((2, 1, 33, 33, 3))))
  assert len(seen) > 50 and set(seen) == {0.5}, (len(seen), set(seen))


def test_synthetic_cli_writes_street_scenes_whose_disparity_follows_the_labels(tmp_path):
  from asymfusion_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.main(['--kind=cityscapes', '--out', str(tmp_path), '--num_train', '4',
                  '--num_val', '1'])
  files = cityscapes.Files(tmp_path)
  entries = cityscapes.list_examples(files, 'train')
  assert len(entries) == 4 and len(cityscapes.list_examples(files, 'val')) == 1
  near, far = [], []
  for entry in entries:
    example = cityscapes.read_example(files, entry)
    assert example['rgb'].shape == (64, 128, 3)
    d, label = example['disparity'], example['label']
    assert (d[label == 10] == 0).all() and (d[label == 2] > 0).mean() > 0.99  # Sky, buildings.
    near += list(d[(label == 13) | (label == 11)])  # Cars and persons: near.
    far += list(d[label == 2])
  assert np.median(near) > 4 * np.median(far)


def official_miou(predictions: str, root: str) -> float:
  """The mIoU (percent) cityscapesscripts' evalPixelLevelSemanticLabeling gives the label-id
  PNGs under `predictions` against root/gtFine/val: each ground truth's prediction is the one
  file <city>_<seq>_<frame>*.png found under `predictions`; one confusion matrix over the label
  ids; a class's false positives are counted on pixels whose ground truth is evaluated; the
  mean is over the evaluated classes that have a score."""
  found = [os.path.join(d, f) for d, _, files in os.walk(predictions) for f in files]
  confusion = np.zeros((256, 256), np.int64)
  gt_files = sorted(glob.glob(os.path.join(root, 'gtFine', 'val', '*', '*_gtFine_labelIds.png')))
  for gt_file in gt_files:
    prefix = os.path.basename(gt_file)[:-len('_gtFine_labelIds.png')]
    match = [p for p in found if fnmatch.fnmatch(os.path.basename(p), prefix + '*.png')]
    assert len(match) == 1, (gt_file, match)
    gt, pred = (cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in (gt_file, match[0]))
    assert pred.shape == gt.shape and pred.dtype == np.uint8
    np.add.at(confusion, (gt.ravel(), pred.ravel()), 1)
  scores = []
  for label in cityscapes.TRAIN_LABEL_IDS:
    tp = confusion[label, label]
    fn = confusion[label].sum() - tp
    fp = confusion[[i for i in cityscapes.TRAIN_LABEL_IDS if i != label], label].sum()
    if tp + fp + fn:
      scores.append(tp / (tp + fp + fn))
  return 100 * float(np.mean(scores))


def test_label_ids_of_eval_and_predict_score_as_the_evaluation(cs_run, cs_data, tmp_path):
  """--mode=eval with eval.write_label_ids and predict write the same label-id PNGs, and the
  official evaluator's formula gives them the evaluation's ensemble mIoU."""
  from asymfusion_jax import predict  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'copy')
  shutil.copytree(cs_run[0], workdir)
  results = train.evaluate_checkpoint(tiny_config(cs_data, eval__write_label_ids=True), workdir)
  written = os.path.join(workdir, 'eval', 'step_4', 'label_ids')
  names = sorted(os.path.relpath(os.path.join(d, f), written)
                 for d, _, files in os.walk(written) for f in files)
  assert names == ['fakeburg/fakeburg_000000_000009_leftImg8bit.png',
                   'synthville/synthville_000000_000008_leftImg8bit.png',
                   'synthville/synthville_000000_000010_leftImg8bit.png']
  synthetic = str(cs_data / 'synthetic')
  assert official_miou(written, synthetic) == pytest.approx(results['ensemble']['miou'], abs=1e-9)

  model = predict.from_workdir(workdir)
  val = {'rgb': os.path.join(synthetic, 'leftImg8bit', 'val'),
         'depth': os.path.join(synthetic, 'disparity', 'val')}
  out = str(tmp_path / 'predicted')
  predict.predict(model, predict.images(model.config, val), out)
  for name in names:
    np.testing.assert_array_equal(cv2.imread(os.path.join(out, 'ensemble', 'labels', name)),
                                  cv2.imread(os.path.join(written, name)))

  # Any size: label ids and the palette.
  rgb, disparity, _ = synthetic_cityscapes.render_scene(np.random.default_rng(5), 97, 131)
  odd = {m: str(tmp_path / 'odd' / m / 'city') for m in val}
  for m, image, suffix in (('rgb', rgb, 'leftImg8bit'), ('depth', disparity, 'disparity')):
    os.makedirs(odd[m])
    layout.write_png(os.path.join(odd[m], f'city_000000_000001_{suffix}.png'), image)
  odd = {m: os.path.dirname(folder) for m, folder in odd.items()}
  out = str(tmp_path / 'odd_predicted')
  done = predict.predict(model, predict.images(model.config, odd), out,
                         predict.Options(batch_size=1))
  assert done['compiled'] == [(2, 1, 97, 131, 3)]  # DeepLab takes any size unpadded.
  name = os.path.join('city', 'city_000000_000001_leftImg8bit.png')
  labels = cv2.imread(os.path.join(out, 'ensemble', 'labels', name), cv2.IMREAD_UNCHANGED)
  colour = cv2.imread(os.path.join(out, 'ensemble', 'colour', name))[..., ::-1]
  assert labels.shape == (97, 131) and set(np.unique(labels)) <= set(cityscapes.TRAIN_LABEL_IDS)
  palette = data.get('cityscapes').palette(None)
  np.testing.assert_array_equal(colour, palette[cityscapes.LABEL_TO_TRAIN_ID[labels]])
