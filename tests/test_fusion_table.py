"""experiments/fusion_table.py: the variants' configs, the paper-shaped table and the plot."""

import json
import os
import sys

import cv2
import numpy as np

from asymfusion_jax import config_lib
from asymfusion_jax.tasks.translation import validation as translation_validation
from tests import tiny

sys.path.insert(0, os.path.join(tiny.REPO, 'experiments'))
import fusion_table  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_variants_take_the_paper_sets_and_every_method():
  base = config_lib.get_config('demo_translation')
  base.lock()
  assert [fusion_table.set_label(s) for s in fusion_table.SETS] == [
      'Shade, Depth', 'Normal, Texture', 'Shade, Normal, Edge', 'Depth, Texture, Normal']
  config = fusion_table.variant_config(base, 'shade_normal_edge', 'attention', 3, 120, 'w.pth')
  assert config.modalities == ('reshading', 'normal', 'edge_occlusion')
  assert (config.model.fusion, config.seed, config.max_steps) == ('attention', 3, 120)
  assert config.eval.inception_weights == 'w.pth'
  assert base.model.fusion == 'asym' and base.modalities == ('reshading', 'depth_euclidean')
  for set_name in fusion_table.SETS:  # Every cell of the table is a valid config.
    for method in fusion_table.METHODS:
      translation_validation.check_config(
          fusion_table.variant_config(base, set_name, method, 0, 120))


def scores(l1, fid=None):
  out = {'l1': l1, 'l2': 2 * l1}
  if fid is not None:
    out['fid'] = fid
  return {'reshading': out, 'ensemble': out}


def test_table_has_sets_as_rows_and_methods_as_columns():
  results = {('shade_depth', 'concat'): {0: scores(0.2), 1: scores(0.4)},
             ('shade_depth', 'asym'): {0: scores(0.1)},
             ('normal_texture', 'concat'): {0: scores(0.3)},
             ('normal_texture', 'asym'): {}}
  table = fusion_table.markdown_tables(results, ['shade_depth', 'normal_texture'],
                                       ['concat', 'asym']).splitlines()
  assert table[0] == '| inputs (ensemble L1, lower is better) | Concat | AsymFusion |'
  assert table[2] == '| Shade, Depth | 0.3000 ± 0.1414 | 0.1000 |'
  assert table[3] == '| Normal, Texture | 0.3000 | - |'
  with_fid = {('shade_depth', 'late'): {0: scores(0.2, fid=81.25)}}
  tables = fusion_table.markdown_tables(with_fid, ['shade_depth'], ['late'])
  assert tables.splitlines()[0] == '| inputs (ensemble FID, lower is better) | MMF (late) |'
  assert '| Shade, Depth | 81.2 |' in tables and '| Shade, Depth | 0.2000 |' in tables


def test_curves_are_read_and_plotted(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  records = [{'step': 10, 'train/g_loss': 5.0}, {'step': 40, 'eval/ensemble/l1': 0.3},
             {'step': 80, 'eval/ensemble/l1': 0.2}]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  curve = fusion_table.read_curve(str(run))
  assert curve == [(40, 0.3), (80, 0.2)]
  assert fusion_table.read_curve(str(tmp_path / 'missing')) == []
  path = str(tmp_path / 'curves.png')
  fusion_table.plot_curves({'Shade, Depth': {'asym': curve, 'concat': [(40, 0.25)]},
                            'Normal, Texture': {'asym': []}}, path)
  image = cv2.imread(path)
  assert image.shape == (300 + 30 + 24, 2 * 460, 3)  # One row of two panels, the legend.
  black = np.all(image == 0, axis=-1)
  blue = np.all(image == fusion_table.COLORS['concat'], axis=-1)
  assert black.sum() > 100 and blue.sum() > 10  # AsymFusion's curve, Concat's point and legend.
