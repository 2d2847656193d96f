"""What a user sees: progress lines, the end-of-run summary, one-line config errors, quiet CLIs,
and readable prediction panels."""

import json
import logging as logging_std
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from asymfusion_jax import data, logger
from asymfusion_jax.data import synthetic as synthetic_cli
from asymfusion_jax.data.nyudv2 import synthetic
from asymfusion_jax.tasks.segmentation import metrics, visualize
from tests import tiny


def run_cli(args, cwd=tiny.REPO, env=None, timeout=300):
  env = {**os.environ, 'PYTHONPATH': tiny.REPO, **(env or {})}
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # What a user has: no quieting from the environment.
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


class FakeClock:

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def progress_log(monkeypatch):
  """(clock, lines): a settable clock for logger.Progress and the lines it logs."""
  clock, lines = FakeClock(), []
  monkeypatch.setattr(logger.time, 'perf_counter', clock)
  monkeypatch.setattr(logger.logging, 'info', lambda msg, *args: lines.append(msg % args))
  return clock, lines


def test_progress_lines_and_eta_with_evaluations(progress_log):
  clock, lines = progress_log
  progress = logger.Progress(100, eval_every=25)
  progress.compiling()
  assert lines[-1] == 'compiling the train step...'
  clock.now += 60
  progress.start(1)
  assert lines[-1] == 'train step compiled; the first step took 60.0 s'
  clock.now += 5
  assert progress.report(11, [2.0, 1.0]) == pytest.approx(2.0)
  # 89 steps at 2 steps/s; 4 evaluations (25, 50, 75, 100) whose duration is not known yet.
  assert lines[-1] == ('step 11/100  loss 1.5000 (mean of 2 steps)  2.00 steps/s  '
                       'ETA 0:00:44 + 4 evaluations')
  progress.pause(25)
  assert lines[-1] == 'evaluating step 25...'
  clock.now += 10
  progress.start(25)
  clock.now += 5
  progress.report(35, [0.5])
  # 65 steps at 2 steps/s plus 3 evaluations of 10 s.
  assert lines[-1] == ('step 35/100  loss 0.5000 (mean of 1 step)  2.00 steps/s  '
                       'ETA 0:01:02 (incl. 3 evaluations)')
  clock.now += 5
  progress.report(45)
  assert lines[-1] == 'step 45/100  2.00 steps/s  ETA 0:00:58 (incl. 3 evaluations)'


@pytest.mark.parametrize('total,every,step,left', [
    (100, 25, 1, 4), (100, 25, 25, 4), (100, 25, 26, 3), (100, 25, 100, 1),
    (60, 25, 1, 3), (60, 25, 50, 2), (60, 25, 51, 1), (60, 250, 60, 1), (60, None, 1, 0)])
def test_evaluations_left(total, every, step, left):
  assert logger.Progress(total, every).evaluations_left(step) == left


def test_run_summary_names_best_step_and_files(tmp_path):
  workdir = str(tmp_path)
  records = [{'step': 2, 'train/loss': 1.0},
             {'step': 4, 'eval/ensemble/miou': 30.0, 'eval/ensemble/pixel_acc': 70.0},
             {'step': 8, 'eval/ensemble/miou': 45.5, 'eval/ensemble/pixel_acc': 80.0},
             {'step': 12, 'eval/ensemble/miou': 45.5, 'eval/ensemble/pixel_acc': 81.25}]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  for name in ('checkpoints', 'best', 'predictions'):
    os.mkdir(tmp_path / name)
  (tmp_path / 'config.json').write_text('{}')
  lines = logger.run_summary(workdir).splitlines()
  assert lines[0] == f'Run summary ({workdir}):'
  assert lines[1].split() == ['best', 'ensemble', 'mIoU', '45.50', 'at', 'step', '8']
  assert 'step 12: ensemble mIoU 45.50, pixel acc 81.25' in lines[2]
  shown = [line.split()[0] for line in lines[3:]]
  assert shown == [os.path.join(workdir, 'config.json'), os.path.join(workdir, 'metrics.jsonl'),
                   os.path.join(workdir, 'checkpoints') + os.sep,
                   os.path.join(workdir, 'best') + os.sep,
                   os.path.join(workdir, 'predictions') + os.sep]  # No tensorboard/ here.


def test_results_table_title():
  results = {'rgb': {'pixel_acc': 1.0, 'mean_acc': 2.0, 'miou': 3.0}}
  untitled = metrics.format_table(results).splitlines()
  titled = metrics.format_table(results, title='validation at step 250').splitlines()
  assert titled == ['validation at step 250'] + untitled


@pytest.mark.parametrize('override,expected', [
    ([], 'not found'),
    (['--config.modell.width=3'], '--config.modell.width: the config has no field \'modell\'. '
                                  'Did you mean "model" instead of "modell"?'),
])
def test_main_config_error_is_one_line(tmp_path, override, expected):
  config = os.path.join(tiny.REPO, 'configs', 'demo.py' if override else 'missing.py')
  result = run_cli(['-m', 'asymfusion_jax.main', f'--config={config}',
                    f'--workdir={tmp_path / "run"}', *override], timeout=120)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('main: ') and expected in lines[0], result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_main_invalid_value_ends_with_one_line_naming_the_key(tmp_path):
  """A value the config checks reject: the run stops with one line, no traceback, no workdir."""
  result = run_cli(['-m', 'asymfusion_jax.main', f'--config={tiny.REPO}/configs/demo.py',
                    f'--workdir={tmp_path / "run"}', '--config.optim.momentum=1.5'],
                   timeout=120)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('main: config.optim.momentum=1.5 must be'), result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_export_cli_output_is_quiet(full_run, tmp_path):
  workdir, _ = full_run
  out = str(tmp_path / 'model.jax')
  result = run_cli(['-m', 'asymfusion_jax.export', f'--workdir={workdir}', f'--out={out}'])
  assert result.returncode == 0, result.stderr
  lines = result.stderr.strip().splitlines()
  # Before: 36 lines of orbax INFO and JAX's "Unable to initialize backend 'tpu'".
  assert len(lines) == 1 and 'Exported the workdir' in lines[0], result.stderr


def test_tensorflow_import_notices_filtered():
  code = ('import sys; from asymfusion_jax import logger; logger.import_tensorflow(); '
          'print("tensorflow" in sys.modules)')
  result = run_cli(['-c', code])
  assert result.returncode == 0 and result.stdout.strip() == 'True', result.stderr
  assert 'oneDNN' not in result.stderr and 'InitializeLog' not in result.stderr, result.stderr


def test_tensorflow_import_keeps_other_stderr_lines(tmp_path):
  fake = tmp_path / 'tensorflow'
  fake.mkdir()
  (fake / '__init__.py').write_text(
      'import os\nos.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. x\\n"'
      ' b"E0000 something real went wrong\\n")\n')
  code = 'from asymfusion_jax import logger; logger.import_tensorflow()'
  result = run_cli(['-c', code], env={'PYTHONPATH': f'{tmp_path}{os.pathsep}{tiny.REPO}'})
  assert result.returncode == 0, result.stderr
  assert result.stderr == 'E0000 something real went wrong\n'


def test_synthetic_cli_flags_with_underscores(tmp_path):
  for spelling in ('num_train', 'num-train'):  # The dashed one is kept as an alias.
    out = tmp_path / spelling
    synthetic_cli.main(['--out', str(out), f'--{spelling}', '2',
                        f'--{spelling.replace("train", "val")}', '1', '--height', '8', '--width',
                        '10'])
    assert len((out / 'train.txt').read_text().splitlines()) == 2
    assert len((out / 'val.txt').read_text().splitlines()) == 1


def legend_colours(panel, legend_top):
  legend = panel[legend_top:].reshape(-1, 3)
  return {tuple(c) for c in np.unique(legend, axis=0)}


def test_prediction_panel_layout_and_legend(tmp_path):
  rng = np.random.default_rng(6)
  h, w = 48, 64
  rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  depth = rng.random((h, w)).astype(np.float32) * 10
  label = np.zeros((h, w), np.int64)
  label[10:20, 10:30] = 3
  label[0, :] = 255
  pred = label.copy()
  pred[30:, 40:] = 1  # Class 1 appears only in a prediction; classes 2 and 4 nowhere.
  preds = {'rgb': pred, 'depth': np.zeros((h, w), np.int64), 'ensemble': label}
  path = str(tmp_path / 'sub' / 'panel.png')
  panel = visualize.save_prediction_panel(path, rgb, depth, label, preds, synthetic.CLASS_NAMES)
  written = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(written, panel)

  factor = -(-visualize.MIN_TILE_HEIGHT // h)  # 6: tiles of 288 x 384.
  tile_h, tile_w = h * factor, w * factor
  gap, bar = visualize.GAP, visualize.TITLE_HEIGHT
  assert panel.shape[1] == 3 * tile_w + 4 * gap
  # Row 1: RGB, depth, ground truth; row 2: the three predictions; each under a title bar.
  top1, top2 = gap + bar, gap + bar + tile_h + gap + bar
  left = [gap + i * (tile_w + gap) for i in range(3)]
  np.testing.assert_array_equal(panel[top1:top1 + tile_h:factor, left[0]:left[0] + tile_w:factor],
                                rgb)
  np.testing.assert_array_equal(
      panel[top1:top1 + tile_h:factor, left[2]:left[2] + tile_w:factor], visualize.colorize(label))
  np.testing.assert_array_equal(
      panel[top2:top2 + tile_h:factor, left[0]:left[0] + tile_w:factor], visualize.colorize(pred))
  for top in (top1 - bar, top2 - bar):  # Title bars hold dark text on white.
    title = panel[top:top + bar, left[0]:left[0] + tile_w]
    assert (title == 255).mean() > 0.8 and title.min() < 64

  legend_top = top2 + tile_h + gap
  colours = legend_colours(panel, legend_top)
  for c in (0, 1, 3):
    assert tuple(visualize.PALETTE[c]) in colours
  for c in (2, 4):
    assert tuple(visualize.PALETTE[c]) not in colours
  assert (0, 0, 0) in colours  # The unlabelled swatch: label 255 is present.

  with pytest.raises(ValueError, match='shape'):
    visualize.prediction_panel(rgb, depth, label, {'rgb': label[:-1]})


def test_class_names_of_configs(tiny_data):
  config = tiny.config(tiny_data)
  assert data.get(config).class_names(config) == synthetic.CLASS_NAMES
  from configs import nyudv2_refinenet101  # pylint: disable=g-import-not-at-top
  config = nyudv2_refinenet101.get_config()
  names = data.get(config).class_names(config)
  assert len(names) == 40 and names[0] == 'wall' and names[39] == 'other prop'


def test_orbax_metadata_errors_go_to_debug_level():
  """A garbled metadata file: checksums report it in one warning line; orbax's own ERROR line
  (with the garbled content) is demoted to debug level and dropped at the default verbosity."""
  def record(path, level, msg):
    return logging_std.LogRecord('absl', level, path, 1, msg, ('file', 'garbage'), None)

  library_filter = logger._LibraryInfoFilter()
  metadata = record('/venv/orbax/checkpoint/_src/metadata/checkpoint.py', logging_std.ERROR,
                    'Failed to json parse Metadata file: %s, file content: %s')
  assert not library_filter.filter(metadata) and metadata.levelno == logging_std.DEBUG
  other = record('/venv/orbax/checkpoint/checkpoint_manager.py', logging_std.ERROR, 'Disk full')
  assert library_filter.filter(other)
  chatter = record('/venv/orbax/checkpoint/checkpoint_manager.py', logging_std.INFO, 'Saved')
  assert not library_filter.filter(chatter)
