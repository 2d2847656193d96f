"""experiments/demo_fusion.py: seed statistics, and finished (variant, seed) runs are skipped."""

import json
import os
import sys

import pytest

from tests import tiny

sys.path.insert(0, os.path.join(tiny.REPO, 'experiments'))
import demo_fusion  # pylint: disable=g-import-not-at-top,wrong-import-position


def scores(miou):
  return {'pixel_acc': 90.0, 'mean_acc': 80.0, 'miou': miou}


def test_summarize_is_mean_sample_std_and_range():
  s = demo_fusion.summarize([50.0, 52.0, 57.0])
  assert s['mean'] == pytest.approx(53.0)
  assert s['std'] == pytest.approx(3.605551, rel=1e-6)  # sqrt(((-3)^2 + 1 + 4^2) / 2)
  assert (s['n'], s['min'], s['max']) == (3, 50.0, 57.0)
  assert demo_fusion.summarize([44.0])['std'] == 0.0


def test_tables_cover_every_variant_and_seed():
  runs = {'fused': {0: {'rgb': scores(40.0), 'depth': scores(30.0), 'ensemble': scores(58.0)},
                    1: {'rgb': scores(42.0), 'depth': scores(31.0), 'ensemble': scores(60.0)}},
          'rgb': {0: {'rgb': scores(44.0), 'ensemble': scores(44.0)}}}
  table = demo_fusion.seed_table(runs).splitlines()
  assert table[1].split()[:2] == ['fused', '2']
  assert '59.00 ±  1.41 [ 58.0, 60.0]' in table[1]
  assert table[2].split()[:2] == ['rgb', '1'] and table[2].count('-') == 1
  per_seed = demo_fusion.per_seed_table(runs).splitlines()
  assert per_seed[1].split() == ['fused', '58.00', '60.00']
  assert per_seed[2].split() == ['rgb', '44.00', '-']


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
  finished = {'rgb': scores(44.0), 'ensemble': scores(44.0)}
  run_dir = tmp_path / 'rgb' / 'seed_1'
  run_dir.mkdir(parents=True)
  (run_dir / demo_fusion.FINAL_SCORES).write_text(json.dumps(
      {'variant': 'rgb', 'seed': 1, 'max_steps': -1, 'scores': finished}))
  trained = []

  def fake_train(config, workdir):
    trained.append((tuple(config.modalities), config.seed, config.max_steps, workdir))
    return {'rgb': scores(10.0), 'ensemble': scores(10.0)}

  monkeypatch.setattr(demo_fusion.runs.train, 'train_and_evaluate', fake_train)
  assert demo_fusion.run_variant('rgb', 1, str(tmp_path), -1) == finished
  assert not trained
  # Another budget retrains, and a new seed trains, each in its own directory.
  assert demo_fusion.run_variant('rgb', 1, str(tmp_path), 5)['ensemble']['miou'] == 10.0
  demo_fusion.run_variant('rgb', 2, str(tmp_path), -1)
  assert trained == [(('rgb',), 1, 5, str(run_dir)),
                     (('rgb',), 2, -1, str(tmp_path / 'rgb' / 'seed_2'))]
  record = json.loads((tmp_path / 'rgb' / 'seed_2' / demo_fusion.FINAL_SCORES).read_text())
  assert (record['seed'], record['max_steps'], record['scores']['ensemble']['miou']) == (2, -1, 10.0)


def test_translation_table_has_a_row_per_variant_with_mean_and_std():
  import translation_fusion  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  def scores(l1, **branches):
    return {**{b: {'l1': v, 'l2': 2 * v} for b, v in branches.items()},
            'ensemble': {'l1': l1, 'l2': 2 * l1}}
  results = {'fused': {0: scores(0.16, reshading=0.17, depth_euclidean=0.18),
                       1: scores(0.18, reshading=0.19, depth_euclidean=0.2)},
             'reshading': {0: scores(0.165, reshading=0.165)}}
  lines = translation_fusion.markdown_table(results).splitlines()
  assert lines[0] == '| variant | inputs | seeds | ensemble L1 | ensemble L2 |'
  assert lines[2] == ('| fused | reshading, depth_euclidean | 2 | 0.1700 ± 0.0141 | '
                      '0.3400 ± 0.0283 |')
  assert lines[3] == '| reshading | reshading | 1 | 0.1650 | 0.3300 |'
