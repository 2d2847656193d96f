"""The functional experiments' runs (asymfusion_jax.runs): seed statistics, finished (variant,
seed) runs skipped; experiments/demo_fusion.py and translation_fusion.py print their tables
from finished runs without training."""

import json

import pytest

from asymfusion_jax import config_lib, runs
from tests import tiny


def scores(miou):
  return {'pixel_acc': 90.0, 'mean_acc': 80.0, 'miou': miou}


def test_summarize_is_mean_sample_std_and_range():
  s = runs.summarize([50.0, 52.0, 57.0])
  assert s['mean'] == pytest.approx(53.0)
  assert s['std'] == pytest.approx(3.605551, rel=1e-6)  # sqrt(((-3)^2 + 1 + 4^2) / 2)
  assert (s['n'], s['min'], s['max']) == (3, 50.0, 57.0)
  assert runs.summarize([44.0])['std'] == 0.0


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
  finished = {'rgb': scores(44.0), 'ensemble': scores(44.0)}
  run_dir = tiny.write_finished_run(tmp_path, 'rgb', 1, finished)
  trained = []

  def fake_train(config, workdir):
    trained.append((tuple(config.modalities), config.seed, config.max_steps, workdir,
                    config.data.manual_dir, config.data.tfds_data_dir))
    return {'rgb': scores(10.0), 'ensemble': scores(10.0)}

  def config(seed, max_steps):
    c = config_lib.get_config('demo:rgb')
    c.seed, c.max_steps = seed, max_steps
    return c

  monkeypatch.setattr(runs.train, 'train_and_evaluate', fake_train)
  assert runs.train_or_read(config(1, -1), str(tmp_path), 'rgb') == finished
  assert not trained
  # Another budget retrains, and a new seed trains, each in its own directory.
  assert runs.train_or_read(config(1, 5), str(tmp_path), 'rgb')['ensemble']['miou'] == 10.0
  # The dataset in WORKDIR/data, or (an experiment with several datasets) where it is told.
  runs.train_or_read(config(2, -1), str(tmp_path), 'rgb', str(tmp_path / 'data' / 'demo'))
  assert trained == [
      (('rgb',), 1, 5, run_dir, str(tmp_path / 'data' / 'synthetic'),
       str(tmp_path / 'data' / 'tfds')),
      (('rgb',), 2, -1, str(tmp_path / 'rgb' / 'seed_2'),
       str(tmp_path / 'data' / 'demo' / 'synthetic'), str(tmp_path / 'data' / 'demo' / 'tfds'))]
  record = json.loads((tmp_path / 'rgb' / 'seed_2' / runs.FINAL_SCORES).read_text())
  assert (record['seed'], record['max_steps']) == (2, -1)
  assert record['scores']['ensemble']['miou'] == 10.0


def test_demo_tables_cover_every_variant_and_seed(tmp_path):
  for seed, (rgb, depth, ensemble) in enumerate([(40.0, 30.0, 58.0), (42.0, 31.0, 60.0)]):
    tiny.write_finished_run(tmp_path, 'fused', seed, {
        'rgb': scores(rgb), 'depth': scores(depth), 'ensemble': scores(ensemble)})
    tiny.write_finished_run(tmp_path, 'rgb', seed, {'rgb': scores(44.0 + seed),
                                                    'ensemble': scores(44.0 + seed)})
  proc = tiny.run_script('experiments/demo_fusion.py', f'--workdir={tmp_path}',
                         '--variants=fused,rgb', '--seeds=0,1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.splitlines()
  fused = next(line for line in lines if line.startswith('fused ') and '±' in line)
  assert fused.split()[:2] == ['fused', '2'] and '59.00 ±  1.41 [ 58.0, 60.0]' in fused
  rgb = next(line for line in lines if line.startswith('rgb ') and '±' in line)
  assert rgb.split()[:2] == ['rgb', '2'] and rgb.count('-') == 1  # No depth branch.
  assert ['fused', '58.00', '60.00'] in [line.split() for line in lines]
  assert ['rgb', '44.00', '45.00'] in [line.split() for line in lines]
  assert not (tmp_path / 'data').exists()  # Nothing trained, no dataset generated.


def test_translation_table_has_a_row_per_variant_with_mean_and_std(tmp_path):
  def l1(ensemble, **branches):
    return {**{b: {'l1': v, 'l2': 2 * v} for b, v in branches.items()},
            'ensemble': {'l1': ensemble, 'l2': 2 * ensemble}}
  tiny.write_finished_run(tmp_path, 'fused', 0, l1(0.16, reshading=0.17, depth_euclidean=0.18))
  tiny.write_finished_run(tmp_path, 'fused', 1, l1(0.18, reshading=0.19, depth_euclidean=0.2))
  proc = tiny.run_script('experiments/translation_fusion.py', f'--workdir={tmp_path}',
                         '--variants=fused', '--seeds=0,1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = (tmp_path / 'results.md').read_text().splitlines()
  assert lines[0] == '| variant | inputs | seeds | ensemble L1 | ensemble L2 |'
  assert lines[2] == ('| fused | reshading, depth_euclidean | 2 | 0.1700 ± 0.0141 | '
                      '0.3400 ± 0.0283 |')
  assert '\n'.join(lines) in proc.stdout
