"""experiments/fusion_table.py from finished runs, as a user runs it: every cell's config is
checked, the paper-shaped tables (FID, then L1) and the plot of the validation curves."""

import cv2
import numpy as np

from tests import tiny

SETS = ('shade_depth', 'normal_texture', 'shade_normal_edge', 'depth_texture_normal')
METHODS = ('concat', 'average', 'attention', 'late', 'asym')  # The paper's columns.


def scores(l1, fid):
  out = {'l1': l1, 'l2': 2 * l1, 'fid': fid}
  return {'reshading': out, 'ensemble': out}


def test_table_and_curves_from_finished_runs(tmp_path):
  """Every cell of the paper's table (4 sets x 5 methods, 2 seeds) finished: no training, each
  cell's config still checked; rows are sets, columns methods, cells mean ± std over seeds."""
  curve = [{'step': 10, 'train/g_loss': 5.0}, {'step': 40, 'eval/ensemble/l1': 0.3},
           {'step': 80, 'eval/ensemble/l1': 0.2}]
  for set_name in SETS:
    for method in METHODS:
      for seed in (0, 1):
        l1 = {('shade_depth', 'concat'): (0.2, 0.4)}.get((set_name, method), (0.1, 0.1))[seed]
        metrics = curve if (set_name, method, seed) == ('shade_depth', 'asym', 0) else (
            [{'step': 40, 'eval/ensemble/l1': 0.25}] if seed == 0 and method == 'concat' else None)
        tiny.write_finished_run(tmp_path, f'{set_name}-{method}', seed, scores(l1, 81.25),
                                metrics=metrics)
  proc = tiny.run_script('experiments/fusion_table.py', '--config=configs/demo_translation.py',
                         f'--workdir={tmp_path}', '--seeds=0,1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert not (tmp_path / 'data').exists()  # Nothing trained, no dataset generated.

  fid_table, l1_table = (tmp_path / 'results.md').read_text().strip().split('\n\n')
  assert fid_table.splitlines()[0] == ('| inputs (ensemble FID, lower is better) | Concat | '
                                       'Average | Attention | MMF (late) | AsymFusion |')
  assert fid_table.splitlines()[2].startswith('| Shade, Depth | 81.2 ± 0.0 |')
  l1_lines = l1_table.splitlines()
  assert l1_lines[0].startswith('| inputs (ensemble L1, lower is better) | Concat |')
  assert [line.split(' | ')[0] for line in l1_lines[2:]] == [
      '| Shade, Depth', '| Normal, Texture', '| Shade, Normal, Edge', '| Depth, Texture, Normal']
  assert l1_lines[2].startswith('| Shade, Depth | 0.3000 ± 0.1414 | 0.1000 ± 0.0000 |')
  assert l1_table in proc.stdout

  image = cv2.imread(str(tmp_path / 'curves.png'))
  assert image.shape == (2 * 300 + 30 + 24, 2 * 460, 3)  # Two rows of two panels, the legend.
  black = np.all(image == 0, axis=-1)
  blue = np.all(image == (180, 119, 31), axis=-1)  # Concat's colour (BGR).
  assert black.sum() > 100 and blue.sum() > 10  # AsymFusion's curve, Concat's points, legend.
