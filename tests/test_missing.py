"""Missing modalities: evaluation without some modalities (fills 'pad', 'mean', 'drop') and
modality dropout in training (asymfusion_jax/missing.py)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from asymfusion_jax import missing, predict, tasks, train
from asymfusion_jax.models import build_model
from asymfusion_jax.validation import ConfigError
from tests import tiny


@pytest.mark.parametrize('fill', ['pad', 'mean', 'drop'])
def test_a_dropped_modality_is_absent_from_what_is_reported(full_run, fill):
  """Changing the dropped modality's pixels changes nothing in the reported outputs; with
  'drop' the depth branch is not reported and the ensemble is the one remaining branch."""
  source = predict.from_workdir(full_run[0])
  config, variables = source.config, source.variables
  values = missing.fill_values(config, fill)
  assert values.shape == (2, 3) and np.isfinite(values).all()
  wrap = missing.wrapper(config, ('depth',), fill, values)
  model = wrap(build_model(config))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = np.random.default_rng(0).normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
  changed = x.copy()
  changed[1] = np.random.default_rng(1).normal(size=changed[1].shape) * 5
  a, b = np.asarray(apply(variables, x)), np.asarray(apply(variables, changed))
  reported = [0, 2] if fill == 'drop' else [0, 1, 2]
  np.testing.assert_array_equal(a[reported], b[reported])
  # The network saw the fill values in place of depth.
  filled = x.copy()
  filled[1] = values[1]
  plain = np.asarray(jax.jit(lambda v, x: build_model(config).apply(v, x, train=False))(
      variables, filled))
  np.testing.assert_allclose(a[:2], plain[:2], rtol=1e-5, atol=1e-5)
  if fill == 'drop':  # alpha renormalised over rgb alone: the ensemble is rgb's output.
    np.testing.assert_allclose(a[2], a[0], rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_allclose(a[2], plain[2], rtol=1e-5, atol=1e-5)
  assert missing.reported({'rgb': 1, 'depth': 2, 'ensemble': 3}, ('depth',), fill) == (
      {'rgb': 1, 'ensemble': 3} if fill == 'drop' else {'rgb': 1, 'depth': 2, 'ensemble': 3})


def test_renormalised_ensemble_weights_the_remaining_branches_by_alpha():
  outputs = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
  alpha = np.array([0.5, -1.0, 2.0], np.float32)
  keep = np.array([True, False, True])
  w = np.exp(alpha) * keep
  expected = np.einsum('m,m...->...', w / w.sum(), outputs[:3])
  got = missing.renormalised_ensemble(outputs, {'alpha': alpha}, keep)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # fusion 'late': no alpha, the plain mean of the remaining branches.
  np.testing.assert_allclose(missing.renormalised_ensemble(outputs, {}, keep),
                             outputs[[0, 2]].mean(0), rtol=1e-6)


def test_eval_mode_writes_missing_json_per_subset(full_run, tiny_data, tmp_path, capsys):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(full_run[0], workdir)
  config = tiny.config(tiny_data, extra={'eval.missing': ('depth', 'rgb'),
                                         'eval.missing_fill': 'drop'})
  results = train.evaluate_checkpoint(config, workdir, step=12)
  with open(os.path.join(workdir, 'eval', 'step_12', 'missing.json')) as f:
    record = json.load(f)
  assert record['step'] == 12 and record['fill'] == 'drop'
  assert record['missing']['none'] == results
  assert set(record['missing']) == {'none', 'depth', 'rgb'}
  assert set(record['missing']['depth']) == {'rgb', 'ensemble'}
  assert set(record['missing']['rgb']) == {'depth', 'ensemble'}
  # Without depth the rgb branch is what the full run's rgb branch is (depth's input does not
  # reach it only through fusion, so compare the ensemble to the remaining branch instead).
  for subset, kept in (('depth', 'rgb'), ('rgb', 'depth')):
    for metric, value in record['missing'][subset]['ensemble'].items():
      assert value == pytest.approx(record['missing'][subset][kept][metric], abs=1e-9)
  assert 'missing modalities (fill \'drop\') at step 12' in capsys.readouterr().out


def test_config_keys_are_checked_with_one_line_errors(tiny_data):
  task = tasks.get(tiny.config(tiny_data))
  for extra, message in (
      ({'eval.missing': ('ir',)}, "'ir' is not a '+'-joined subset"),
      ({'eval.missing': ('rgb+depth',)}, 'drops every modality'),
      ({'eval.missing_fill': 'zeros'}, "missing_fill='zeros' must be one of"),
      ({'train.modality_dropout': 1.5}, 'modality_dropout=1.5 must be a probability'),
  ):
    with pytest.raises(ConfigError, match='config.(eval|train)') as e:
      task.check_config(tiny.config(tiny_data, extra=extra))
    assert message in str(e.value) and '\n' not in str(e.value)
  single = tiny.config(tiny_data, 'rgb', extra={'train.modality_dropout': 0.5})
  with pytest.raises(ConfigError, match='needs 2 or more modalities'):
    task.check_config(single)


def test_modality_dropout_rows_are_the_fill_values_and_the_draw_is_deterministic(tiny_data):
  """The dropped rows hold the fill values, the others the plain batch; and a stream started
  at step 1 draws what the stream from step 0 drew there. Training reads its batches from
  missing.train_batches(task, config, start) whatever the rate (train.train_and_evaluate), so
  with this a resumed run with dropout on is as exact as tests/test_train.py's resumed run."""
  config = tiny.config(tiny_data, extra={'train.modality_dropout': 0.5})
  task = tasks.get(config)
  values = missing.fill_values(config, 'pad')
  first = [b for _, b in zip(range(3), missing.train_batches(task, config, 0))]
  plain = [b for _, b in zip(range(3), task.train_batches(config, 0))]
  again = [b for _, b in zip(range(2), missing.train_batches(task, config, 1))]
  hits = 0
  for step, (x, y) in enumerate(zip(first, plain)):
    dropped = missing.dropout_draw(config.seed, step, x['image'].shape[1], 0.5, 2)
    assert not dropped.all(axis=0).any()  # Never every modality of a row.
    for m in range(2):
      for b in range(x['image'].shape[1]):
        if dropped[m, b]:
          hits += 1
          assert (x['image'][m, b] == values[m]).all()
        else:
          np.testing.assert_array_equal(x['image'][m, b], y['image'][m, b])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert 0 < hits < 12
  for x, y in zip(first[1:], again):  # A resumed stream draws the same.
    np.testing.assert_array_equal(x['image'], y['image'])


def test_experiment_writes_table_and_plot_from_finished_runs(tmp_path):
  """experiments/missing_modality.py from finished runs and evaluations: nothing trained."""
  def seg(miou):
    return {'pixel_acc': 90.0, 'mean_acc': 80.0, 'miou': miou}
  for rate, offset in (('0', 0.0), ('0.5', 10.0)):
    for seed in (0, 1):
      full = {'rgb': seg(40.0), 'depth': seg(30.0), 'ensemble': seg(60.0 + seed)}
      directory = tiny.write_finished_run(tmp_path, f'demo_p{rate}', seed, full)
      for fill in ('pad', 'drop'):
        record = {'step': 12, 'fill': fill, 'missing': {
            'none': full,
            'rgb': {'depth': seg(30.0), 'ensemble': seg(20.0 + offset + 2 * seed)},
            'depth': {'rgb': seg(40.0), 'ensemble': seg(35.0 + offset)}}}
        with open(os.path.join(directory, f'missing_{fill}.json'), 'w') as f:
          json.dump(record, f)
  proc = tiny.run_script('experiments/missing_modality.py', f'--workdir={tmp_path}',
                         '--configs=configs/demo.py', '--dropout=0,0.5', '--fills=pad,drop',
                         '--seeds=0,1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = (tmp_path / 'missing_modality.md').read_text().splitlines()
  assert '| dropout | fill | missing none | missing rgb | missing depth |' in lines
  assert ('| 0.5 | drop | 60.50 ± 0.71 (n=2) | 31.00 ± 1.41 (n=2) | 45.00 ± 0.00 (n=2) |'
          in lines)
  assert '| 0 | pad | 60.50 ± 0.71 (n=2) | 21.00 ± 1.41 (n=2) | 35.00 ± 0.00 (n=2) |' in lines
  assert (tmp_path / 'missing_modality.png').stat().st_size > 0
  record = json.loads((tmp_path / 'missing_modality.json').read_text())
  assert record['demo']['0.5']['1']['drop']['rgb']['ensemble']['miou'] == 32.0
  assert not (tmp_path / 'data').exists()


def test_predict_without_depth_reads_no_depth_and_drops_its_branch(full_run, tmp_path):
  from tests.test_predict import outputs_of, scene, write_image  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / 'in')
  write_image(folder, 'b.png', *scene(2, 48, 64))
  shutil.rmtree(os.path.join(folder, 'depth'))  # Nothing to read for the missing modality.
  model = predict.from_workdir(full_run[0])
  images = predict.images(model.config, {'rgb': os.path.join(folder, 'rgb')}, missing=('depth',))
  outs = {}
  for fill in ('pad', 'drop'):
    outs[fill] = str(tmp_path / fill)
    predict.predict(model, images, outs[fill], predict.Options(
        batch_size=2, branches=True, logits=True, missing=('depth',), missing_fill=fill))
  assert sorted(os.listdir(outs['drop'])) == ['ensemble', 'predict.json', 'rgb']
  assert 'depth' in os.listdir(outs['pad'])
  with open(os.path.join(outs['drop'], 'predict.json')) as f:
    assert {'missing': ['depth'], 'missing_fill': 'drop'}.items() <= json.load(f).items()
  drop_rgb, drop_ensemble = outputs_of(outs['drop'], 'b', 'rgb'), outputs_of(outs['drop'], 'b')
  # Both fill depth with its pad value, so rgb's branch is the same; dropped, the ensemble is rgb.
  np.testing.assert_allclose(outputs_of(outs['pad'], 'b', 'rgb')['logits'], drop_rgb['logits'],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(drop_ensemble['logits'], drop_rgb['logits'], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='--missing=ir: not a modality'):
    predict.predict(model, images, str(tmp_path / 'x'), predict.Options(missing=('ir',)))


@pytest.mark.parametrize('fusion', ['late', 'concat'])
def test_three_modality_generator_without_two_reports_only_the_third(tmp_path, fusion):
  """Translation U-Net, M = 3, 'drop' of two modalities: with 'late' (no alpha) and 'concat' (an
  aggregation mixing every stream) the reported outputs ignore the dropped inputs, and the
  ensemble is the remaining branch."""
  config = tiny.translation_config(tmp_path, modalities=('reshading', 'normal', 'edge_occlusion'),
                                   model__fusion=fusion, model__num_downs=5,
                                   model__fusion_blocks=(2, 3))
  generator = build_model(config)
  x = np.random.default_rng(0).uniform(-1, 1, size=(3, 1, 32, 32, 3)).astype(np.float32)
  variables = generator.init(jax.random.key(0), x, train=False)
  values = missing.fill_values(config, 'drop')
  model = missing.wrapper(config, ('reshading', 'edge_occlusion'), 'drop', values)(generator)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  changed = x.copy()
  changed[[0, 2]] = -x[[0, 2]]
  a, b = np.asarray(apply(variables, x)), np.asarray(apply(variables, changed))
  np.testing.assert_array_equal(a[[1, 3]], b[[1, 3]])
  np.testing.assert_allclose(a[3], a[1], rtol=1e-6, atol=1e-6)
