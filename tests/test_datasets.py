"""The dataset registry and interface: every dataset has data/base.py's members, an unknown or
incomplete one is a clear error, and a new dataset is a module plus one registry line (the toy
dataset of tests/toy_dataset.py trains and evaluates through the normal program)."""

import json
import os
import types

import pytest

from asymfusion_jax import data, tasks, train, validation
from asymfusion_jax.data import base
from tests import tiny, toy_dataset


def test_every_registered_dataset_has_the_interface():
  kinds = {'nyudv2': base.SegmentationDataset, 'cityscapes': base.SegmentationDataset,
           'taskonomy': base.Dataset, 'rgbx': base.SegmentationDataset}
  assert set(data.DATASETS) == set(kinds)
  for name, protocol in kinds.items():
    dataset = data.get(name)
    base.check_interface(dataset, name, protocol)
    assert dataset is data.get(name)  # Imported once.
  assert data.for_model('refinenet') == ['nyudv2', 'rgbx'] and data.for_model('unet') == ['taskonomy']
  assert data.get('nyudv2').image_id('rgb/000123.png') == '000123'
  assert data.get('cityscapes').image_id(
      'leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png') == 'lindau_000000_000019'


def test_unknown_and_incomplete_datasets_are_one_line_errors(monkeypatch):
  with pytest.raises(validation.ConfigError) as error:
    data.get('nyu')
  assert str(error.value) == ("config.data.name='nyu' must be one of ['cityscapes', 'nyudv2', "
                              "'rgbx', 'taskonomy']")
  incomplete = types.SimpleNamespace(MODELS=('refinenet',), prepare=lambda config: None)
  monkeypatch.setitem(data.DATASETS, 'half', incomplete)
  with pytest.raises(TypeError, match=r"^Dataset 'half' .* lacks check_config, "
                                      r'planned_num_examples, .*input_encoding, predict_io of '
                                      r'data\.base\.Dataset\.$'):
    data.get('half')
  wrong = types.SimpleNamespace(**{m: None for m in base.members(base.SegmentationDataset)})
  wrong.EVALUATION = 'multi'
  monkeypatch.setitem(data.DATASETS, 'wrong', wrong)
  with pytest.raises(TypeError, match=r"EVALUATION='multi'; expected one of"):
    data.get('wrong')


def test_the_config_checks_ask_the_dataset():
  """A DeepLab config on NYUDv2 and a RefineNet config on Cityscapes are refused by the
  datasets' MODELS; each dataset checks its own keys."""
  config = tiny.config({'data.manual_dir': '', 'data.tfds_data_dir': ''})
  task = tasks.get(config)
  task.check_config(config)
  config.data.name = 'cityscapes'
  with pytest.raises(validation.ConfigError,
                     match=r"config\.data\.name='cityscapes' must be a dataset for "
                           r"config\.model\.name='refinenet', one of \['nyudv2', 'rgbx'\]"):
    task.check_config(config)
  config.data.name = 'nyudv2'
  config.data.min_short_side = -1
  with pytest.raises(validation.ConfigError, match=r'config\.data\.min_short_side=-1'):
    task.check_config(config)


def _toy_config(**extra):
  # tests/tiny.py's run on the toy data: the same shapes and steps per epoch, so the same
  # compiled programs; 4 steps, one evaluation at the end.
  return tiny.config({'data.manual_dir': '', 'data.tfds_data_dir': ''}, extra={
      'data.name': 'toy', 'data.synthetic': False, 'data.num_train': 16, 'data.num_val': 6,
      'max_steps': 4, **extra})


def test_a_new_dataset_is_a_module_and_one_registry_line(monkeypatch, tmp_path):
  monkeypatch.setitem(data.DATASETS, 'toy', 'tests.toy_dataset')
  monkeypatch.setattr(toy_dataset, 'CALLS', [])
  with pytest.raises(validation.ConfigError, match=r"config\.model\.num_classes=3 must be 5, "
                                                   r"the toy dataset's classes"):
    train.train_and_evaluate(_toy_config(**{'model.num_classes': 3}), str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad') and not toy_dataset.CALLS

  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(_toy_config(), workdir)
  # The program prepared the toy data, trained from step 0 and evaluated once, all through
  # data.get(config).
  assert toy_dataset.CALLS == [('prepare',), ('train', 0), ('eval', 4)]
  assert set(results) == {'rgb', 'depth', 'ensemble'}
  assert all(0 <= results[b]['miou'] <= 100 for b in results)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert records[-1]['step'] == 4 and 'eval/ensemble/miou' in records[-1]
  assert sorted(os.listdir(os.path.join(workdir, 'predictions'))) == [
      '0000.png', '0001.png', '0002.png']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['name'] == 'toy'
