"""Config checks before anything is written, the label range, the config record of resumed runs,
a read-only --mode=eval, and evaluation on any number of devices."""

import importlib
import json
import logging
import math
import os

import numpy as np
import pytest

from asymfusion_jax import (checkpointing, config_io, config_lib, running_sums, sharding, train,
                            validation)
from asymfusion_jax.data import layout
from asymfusion_jax.data.nyudv2 import pipeline, synthetic
from asymfusion_jax.models import build_model
from asymfusion_jax.tasks.segmentation import evaluation
from asymfusion_jax.tasks.segmentation import task as segmentation
from asymfusion_jax.tasks.segmentation import validation as segmentation_validation
from asymfusion_jax.tasks.translation import validation as translation_validation
from tests import tiny

BAD_VALUES = [
    ('optim.lr_encoder', (-0.05, 0.02, 0.01), r'finite learning rates > 0'),
    ('optim.lr_decoder', (0.05, math.nan, 0.01), r'finite learning rates > 0'),
    ('optim.lr_decoder', (0.05, 0.02), r'one per stage'),
    ('optim.momentum', 1.0, r'in \[0, 1\)'),
    ('optim.momentum', -0.1, r'in \[0, 1\)'),
    ('optim.weight_decay', -1e-4, r'>= 0'),
    ('optim.weight_decay', math.inf, r'finite'),
    ('optim.epochs_per_stage', (1, 0, 1), r'positive integers'),
    ('log_every_steps', -2, r'a positive integer'),
    ('checkpoint_every_steps', 0, r'a positive integer'),
    ('keep_checkpoints', 0, r'a positive integer'),
    ('crop_size', 0, r'a positive integer'),
    ('batch_size', 0, r'a positive integer'),
    ('eval_batch_size', -1, r'a positive integer'),
    ('model.num_classes', 0, r'a positive integer'),
    ('model.dropout_rate', 1.0, r'in \[0, 1\)'),
    ('model.kernels', 'gpu', r"one of \('auto', 'xla', 'cpu'\)"),
    ('modalities', ('rgb', 'normals'), r'known modalities'),
    ('modalities', ('rgb', 'rgb'), r'without repeats'),
    ('data.ignore_label', 3, r'outside the classes 0\.\.4'),
    ('data.scale_range', (2.0, 0.5), r'0 < low <= high'),
    ('data.worker_kind', 'fork', r"one of \('thread', 'process'\)"),
    ('seed', -1, r'an integer >= 0'),
    ('num_prediction_images', -1, r'an integer >= 0'),
    ('batch_size', 17, r'larger than the 16 training examples'),
    # The build's 48x64 images at the largest scale 1.25 of the tiny config: 60.
    ('crop_size', 61, r'larger than the training data: .*48x64.* at most 60$'),
]


@pytest.mark.parametrize('key, value, requirement', BAD_VALUES)
def test_bad_config_names_the_key_and_leaves_no_workdir(tiny_data, tmp_path, key, value,
                                                        requirement):
  config = tiny.config(tiny_data)
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=rf'config\.{key}=.*{requirement}'):
    train.train_and_evaluate(config, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()


def test_batch_larger_than_synthetic_data_still_to_generate(tmp_path):
  """The size comes from config.data.num_train: the data would be generated in the workdir."""
  config = tiny.config({'data.manual_dir': '', 'data.tfds_data_dir': ''})
  config.batch_size = 24
  with pytest.raises(ValueError, match=r'config\.batch_size=24 is larger than the 16 training'):
    train.train_and_evaluate(config, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()


def test_every_config_passes_and_splits_over_1_2_4_8_devices():
  """The demo's batch of 8 divides them all; the paper's batch of 6 (frozen BatchNorm) is filled
  up to the devices with unlabelled rows (test_padded_train_rows_change_nothing); so does the
  DeepLab recipe's batch of 8, and the translation papers' batch of 1 with masked zero rows
  (test_translation_train.test_batch_1_runs_on_2_devices_with_the_losses_and_gradients_of_1)."""
  checks = {'segmentation': segmentation_validation, 'translation': translation_validation}
  names = sorted(name[:-3] for name in os.listdir(os.path.join(tiny.REPO, 'configs'))
                 if name.endswith('.py') and name != '__init__.py')
  assert 'demo' in names and 'nyudv2_refinenet101' in names, names
  for name in names:
    module = importlib.import_module(f'configs.{name}')
    for variant in getattr(module, 'VARIANTS', [None]):
      config = module.get_config(variant) if variant else module.get_config()
      task_checks = checks[config.task]
      task_checks.check_config(config)
      for devices in (1, 2, 4, 8):
        task_checks.check_devices(config, devices, 1)
        rows = task_checks.train_batch_rows(config, devices, 1)
        assert rows % devices == 0 and rows - devices < config.batch_size <= rows, (name, devices)
        if config.task == 'segmentation' and not config.frozen_bn:
          assert rows == config.batch_size, name
  paper = importlib.import_module('configs.nyudv2_refinenet101').get_config()
  assert [segmentation_validation.train_batch_rows(paper, d, 1) for d in (1, 2, 4, 8)] == [
      6, 6, 8, 8]
  assert segmentation_validation.train_batch_rows(paper, 8, 2) == 4  # 3 real rows, 1 padding.
  translation = importlib.import_module('configs.taskonomy_shade_depth').get_config()
  assert [translation_validation.train_batch_rows(translation, d, 1) for d in (1, 2, 4, 8)] == [
      1, 2, 4, 8]


def test_padded_train_rows_change_nothing():
  """With frozen BatchNorm, a step on a batch filled up with unlabelled zero rows gives the loss
  and the parameters of the step on the batch alone: what lets batch 6 run on 4 or 8 devices.

  Dropout is off here: its masks are drawn for the whole (padded) batch shape, so padding draws
  other (equally distributed) masks for the real rows too.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from asymfusion_jax.tasks.segmentation import optim  # pylint: disable=g-import-not-at-top
  from asymfusion_jax import step_program  # pylint: disable=g-import-not-at-top
  config = tiny.config({})
  config.frozen_bn, config.batch_size, config.model.dropout_rate = True, 3, 0.0
  mesh = sharding.make_mesh()
  model, tx = build_model(config), optim.make_optimizer(config, 4)
  batch = step_program.synthetic_batch(config, 'train', seed=3)
  padded = sharding.pad_rows(batch, 5, config.data.ignore_label)
  assert padded['image'].shape[1] == padded['label'].shape[0] == 5
  assert np.all(padded['label'][3:] == config.data.ignore_label)
  results = []
  for b in (batch, padded):
    state = segmentation.create_train_state(model, tx, config, mesh)
    b = sharding.global_batch(mesh, b)
    state, metrics = segmentation.jit_train_step(model, tx, config, mesh, state, b)(state, b)
    results.append((float(metrics['loss']), jax.device_get(state.params)))
  assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               results[1][1], results[0][1])


def test_an_unsplittable_train_batch_names_the_nearest_sizes():
  config = tiny.config({})
  config.batch_size = 6
  with pytest.raises(ValueError, match=r'config\.batch_size=6 must be divisible by the 4 devices '
                                       r'of the mesh; the nearest valid sizes are 4 and 8'):
    segmentation_validation.check_devices(config, 4, 1)
  with pytest.raises(ValueError, match=r'nearest valid size is 8'):
    segmentation_validation.check_devices(config, 8, 2)
  segmentation_validation.check_devices(config, 2, 2)


def test_eval_batches_are_padded_to_the_mesh(tiny_data):
  """eval_batch_size=3 on 4 devices of 2 processes: 4 rows, 2 per process, each image once."""
  config = tiny.config(tiny_data)
  config.eval_batch_size = 3
  size = sharding.padded_batch_size(config.eval_batch_size, devices=4, processes=2)
  assert size == 4 and sharding.padded_batch_size(10, devices=8, processes=1) == 16
  seen = 0
  for process in range(2):
    batches = list(pipeline.eval_batches(config, process, 2, size))
    assert len(batches) == 2 and all(len(b['mask']) == 2 for b in batches)
    seen += sum(int(b['mask'].sum()) for b in batches)
  assert seen == config.data.num_val == 6


def test_padded_rows_change_no_metric(full_run, tiny_data):
  """The 6 val images in one unpadded batch score exactly as in the training run's evaluation,
  whose second batch of 4 rows held 2 padded ones. The confusion matrices summed on the device
  across those batches are those the host summed batch by batch in int64."""
  config = tiny.config(tiny_data)
  config.eval_batch_size = 6
  mesh = sharding.make_mesh()
  ckpts = checkpointing.Checkpoints(full_run[0], create=False)
  variables, _ = ckpts.restore_variables(train.abstract_train_state(config, mesh), 12)
  ckpts.close()
  results = evaluation.Evaluator(build_model(config), config, mesh).run(variables)
  assert results == full_run[1]

  padded = evaluation.Evaluator(build_model(config), tiny.config(tiny_data), mesh)
  host = 0
  for batch in pipeline.eval_batches(padded.config):
    batch.pop('name')
    host = host + running_sums.counts_to_host(padded._eval(  # From zero at every batch.
        variables, sharding.global_batch(mesh, batch), padded._zeros()))
  assert host.dtype == np.int64 and host.sum() > 0
  np.testing.assert_array_equal(padded.confusion_matrices(variables), host)


# ------------------------------------------------------------------------------ label range


def test_labels_outside_the_configs_classes_stop_before_training(tiny_data, tmp_path):
  """The tiny data has labels 0..4 and 255: a 3-class model must not train on it silently."""
  config = tiny.config(tiny_data)
  config.model.num_classes = 3
  with pytest.raises(layout.LayoutError,
                     match=r'Mask masks/\d+\.png listed in train\.txt line \d+ .* has label 3; '
                           r'this config allows 0\.\.2 \(config\.model\.num_classes=3\) and the '
                           r'ignore label 255 .*train split: \[3, 4\]'):
    train.train_and_evaluate(config, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()


def test_the_build_records_label_values_and_image_sizes(tmp_path):
  """What check_labels and the evaluation read instead of decoding the images."""
  config = tiny.config({'data.manual_dir': str(tmp_path / 'manual'),
                        'data.tfds_data_dir': str(tmp_path / 'tfds')})
  synthetic.write_dataset(tmp_path / 'manual', num_train=2, num_val=1, height=24, width=32)
  pipeline.prepare(config)
  metadata = json.loads(next((tmp_path / 'tfds').rglob('metadata.json')).read_text())
  assert set(metadata['label_files']) == {'train', 'val'}
  assert set(metadata['label_files']['train']) <= {str(v) for v in range(5)} | {'255'}
  assert metadata['max_image_size'] == {'train': [24, 32], 'val': [24, 32]}


# ------------------------------------------------------------------------ config of a resume


def test_a_resumed_run_with_another_config_keeps_config_json(tiny_data, tmp_path, caplog):
  workdir = str(tmp_path)
  config = train.resolve_data_paths(tiny.config(tiny_data), workdir)
  train.write_config(config, workdir, 0)
  original = (tmp_path / 'config.json').read_text()
  train.write_config(config, workdir, 8)  # The same config: nothing new.
  assert sorted(os.listdir(tmp_path)) == ['config.json']
  config.log_every_steps = 3
  config.optim.lr_encoder = (0.1, 0.02, 0.01)
  with caplog.at_level(logging.WARNING):
    train.write_config(config, workdir, 8)
  assert (tmp_path / 'config.json').read_text() == original
  assert config_io.from_json((tmp_path / 'config.step_8.json').read_text()) == config
  lines = [r.getMessage() for r in caplog.records if 'config.step_8.json' in r.getMessage()]
  assert len(lines) == 1 and 'in log_every_steps, optim.lr_encoder;' in lines[0]


def test_a_missing_key_is_named(tiny_data):
  config = tiny.config(tiny_data)
  del config.data['prefetch_to_device']
  with pytest.raises(validation.ConfigError, match=r'config\.data\.prefetch_to_device is missing'):
    segmentation_validation.check_config(config)


def test_a_crop_larger_than_synthetic_data_still_to_generate(tmp_path):
  """The demo's synthetic 96x128 images at scale 1.25: 120, known before anything is written."""
  config = train.resolve_data_paths(config_lib.get_config('demo'), str(tmp_path / 'run'))
  config.crop_size = 120
  segmentation_validation.check_training(config)
  config.crop_size = 1000
  with pytest.raises(validation.ConfigError, match=r'crop_size=1000 .*96x128.* at most 120$'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('name', ['demo_translation', 'demo_cityscapes', 'demo'])
def test_an_unchanged_resume_records_no_config_change(name, tmp_path, caplog):
  """Compared as written: another dataset's defaults are no difference; a field that an older
  config.json predates counts as its default."""
  workdir = str(tmp_path)
  config = train.resolve_data_paths(config_lib.get_config(name), workdir)
  train.write_config(config, workdir, 0)
  with caplog.at_level(logging.WARNING):
    train.write_config(config, workdir, 8)
  older = json.loads((tmp_path / 'config.json').read_text())
  del older['keep_checkpoints']
  (tmp_path / 'config.json').write_text(json.dumps(older))
  with caplog.at_level(logging.WARNING):
    train.write_config(config, workdir, 8)
  assert os.listdir(tmp_path) == ['config.json']
  assert not [r for r in caplog.records if 'another config' in r.getMessage()]
  config.keep_checkpoints = 3  # Not the default: a change.
  train.write_config(config, workdir, 8)
  assert json.loads((tmp_path / 'config.step_8.json').read_text())['keep_checkpoints'] == 3


# ------------------------------------------------------------------------------- --mode=eval


def test_eval_of_a_workdir_without_checkpoints_touches_no_data(tmp_path):
  """A mistyped workdir fails before the synthetic data would be generated into it."""
  config = tiny.config({'data.manual_dir': '', 'data.tfds_data_dir': ''})
  typo = str(tmp_path / 'typo')
  with pytest.raises(FileNotFoundError, match=rf'no checkpoints in {typo}'):
    train.evaluate_checkpoint(config, typo)
  assert not os.path.exists(typo)
