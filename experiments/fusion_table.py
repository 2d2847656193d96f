"""Functional experiment: the paper's translation table, every fusion method side by side.

Trains the config (configs/demo_translation.py: the synthetic Taskonomy-layout set, a small
U-Net) once per (modality set, fusion method) with the same seed, data, budget and
hyperparameters, evaluates each, and writes a table shaped like the paper's: one row per
modality set of the paper's four translation configs, one column per method (Concat, Average,
Attention, MMF, AsymFusion; docs/method.md section 12).

  python experiments/fusion_table.py --config=configs/demo_translation.py --workdir=DIR \\
      [--sets=shade_depth,normal_texture,shade_normal_edge,depth_texture_normal] \\
      [--methods=concat,average,attention,late,asym] [--seeds=0] [--max_steps=N] \\
      [--inception_weights=pt_inception-2015-12-05-6726825d.pth] [--config.KEY=VALUE ...]

Every cell's config is checked before the first run trains. Each run lives in
WORKDIR/SET-METHOD/seed_S (asymfusion_jax/runs.py): a rerun skips finished runs and resumes an
interrupted one from its last checkpoint, so an interrupted table resumes method by method.
Written to WORKDIR: results.json (every run's final scores), results.md (the tables: the
ensemble's L1 in [-1, 1] units, and FID when Inception weights are given; lower is better) and
curves.png (the ensemble's validation L1 over training, one panel per modality set, one curve
per method; for several seeds, the first).
"""

import json
import os
import sys

from absl import app, flags, logging
import cv2
import numpy as np

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib, fusion, logger  # pylint: disable=g-import-not-at-top
from asymfusion_jax import runs, tasks  # pylint: disable=g-import-not-at-top

# The modality sets of the paper's translation table: the name of each and the config file
# whose inputs it takes.
SETS = {
    'shade_depth': 'taskonomy_shade_depth',
    'normal_texture': 'taskonomy_normal_texture',
    'shade_normal_edge': 'taskonomy_shade_normal_edge',
    'depth_texture_normal': 'taskonomy_depth_texture_normal',
}
# The paper's names of the domains and the methods, for the table.
DOMAIN_NAMES = {'reshading': 'Shade', 'depth_euclidean': 'Depth', 'depth_zbuffer': 'Depth (z)',
                'normal': 'Normal', 'edge_texture': 'Texture', 'edge_occlusion': 'Edge'}
METHOD_NAMES = {'concat': 'Concat', 'average': 'Average', 'attention': 'Attention',
                'late': 'MMF (late)', 'asym': 'AsymFusion', 'none': 'no fusion'}
# The paper's column order.
METHODS = ('concat', 'average', 'attention', 'late', 'asym')
# Curve colours (BGR) per method.
COLORS = {'concat': (180, 119, 31), 'average': (14, 127, 255), 'attention': (44, 160, 44),
          'late': (40, 39, 214), 'asym': (0, 0, 0), 'none': (127, 127, 127)}

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags, defined only when the file runs as a program, so that tests can
  import it beside the other experiments (which define flags of the same names)."""
  config_lib.DEFINE_config_file('config', 'configs/demo_translation.py',
                                'The translation config every run starts from.')
  flags.DEFINE_string('workdir', None, 'Directory for the shared dataset and one run per '
                      'variant.')
  flags.DEFINE_list('sets', list(SETS), f'Modality sets (rows), among {", ".join(SETS)}.')
  flags.DEFINE_list('methods', list(METHODS), 'Fusion methods (columns), among '
                    f'{", ".join(fusion.METHODS)}.')
  flags.DEFINE_list('seeds', ['0'], 'Values of config.seed; every variant is trained once per '
                    'seed.')
  flags.DEFINE_integer('max_steps', -1, 'Cut every run short (a reduced budget); -1 trains as '
                       'the config says.')
  flags.DEFINE_string('inception_weights', '', 'FID Inception weights: adds FID (and KID).')
  flags.mark_flag_as_required('workdir')


def modalities(set_name: str) -> tuple:
  """The inputs of a modality set: those of its paper config."""
  return tuple(config_lib.get_config(SETS[set_name]).modalities)


def variant_name(set_name: str, method: str) -> str:
  return f'{set_name}-{method}'


def variant_config(base, set_name: str, method: str, seed: int, max_steps: int,
                   inception_weights: str = ''):
  """`base` with the set's inputs, the method, the seed, the budget and the FID weights."""
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.modalities = modalities(set_name)
    config.model.fusion = method
    config.seed = seed
    config.max_steps = max_steps
    config.eval.inception_weights = inception_weights
  return config


def set_label(set_name: str) -> str:
  return ', '.join(DOMAIN_NAMES.get(d, d) for d in modalities(set_name))


def _cell(values: list, digits: int) -> str:
  if not values:
    return '-'
  s = runs.summarize(values)
  return (f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f}' if s['n'] > 1
          else f'{s["mean"]:.{digits}f}')


def markdown_tables(results: dict, sets: list, methods: list) -> str:
  """One table per metric (L1, then FID where every run has it): rows = modality sets,
  columns = methods, cells = the ensemble's final score (mean ± sample std over seeds)."""
  scores = [s for (_, _), by_seed in results.items() for s in by_seed.values()]
  metrics = [('l1', 'ensemble L1', 4)]
  if scores and all('fid' in s['ensemble'] for s in scores):
    metrics.insert(0, ('fid', 'ensemble FID', 1))
  tables = []
  for metric, title, digits in metrics:
    header = [f'inputs ({title}, lower is better)'] + [METHOD_NAMES.get(m, m) for m in methods]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for set_name in sets:
      cells = [set_label(set_name)]
      for method in methods:
        by_seed = results.get((set_name, method), {})
        cells.append(_cell([s['ensemble'][metric] for s in by_seed.values()], digits))
      lines.append('| ' + ' | '.join(cells) + ' |')
    tables.append('\n'.join(lines))
  return '\n\n'.join(tables)


def read_curve(run_dir: str, key: str = 'eval/ensemble/l1') -> list:
  """[(step, value)] of a run's evaluations, from its metrics.jsonl."""
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return sorted((r['step'], r[key]) for r in records if key in r)


def _text(image, text, origin, scale=0.4, color=(0, 0, 0)):
  cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _panel(title: str, curves: dict, width: int, height: int) -> np.ndarray:
  """One white panel: axes, ticks and one polyline per method of {method: [(step, value)]}."""
  image = np.full((height, width, 3), 255, np.uint8)
  left, right, top, bottom = 58, 12, 26, 34
  _text(image, title, (left, 17), 0.45)
  points = [p for curve in curves.values() for p in curve]
  x0, y0, x1, y1 = left, top, width - right, height - bottom
  cv2.rectangle(image, (x0, y0), (x1, y1), (0, 0, 0), 1)
  if not points:
    _text(image, 'no evaluations yet', (x0 + 10, (y0 + y1) // 2))
    return image
  steps, values = zip(*points)
  s_lo, s_hi = 0, max(steps)
  v_lo, v_hi = min(values), max(values)
  pad = 0.05 * (v_hi - v_lo or abs(v_hi) or 1.0)
  v_lo, v_hi = v_lo - pad, v_hi + pad

  def to_pixel(step, value):
    px = x0 + (step - s_lo) / max(s_hi - s_lo, 1) * (x1 - x0)
    py = y1 - (value - v_lo) / (v_hi - v_lo) * (y1 - y0)
    return int(round(px)), int(round(py))

  for k in range(5):  # Ticks and light grid lines.
    value = v_lo + k * (v_hi - v_lo) / 4
    _, py = to_pixel(0, value)
    cv2.line(image, (x0, py), (x1, py), (225, 225, 225), 1)
    _text(image, f'{value:.3f}', (4, py + 4), 0.35)
    step = s_lo + k * (s_hi - s_lo) / 4
    px, _ = to_pixel(step, v_lo)
    _text(image, f'{int(step)}', (px - 10, y1 + 14), 0.35)
  _text(image, 'step', ((x0 + x1) // 2 - 12, height - 6), 0.35)
  for method, curve in curves.items():
    if not curve:
      continue
    pts = np.array([to_pixel(s, v) for s, v in curve], np.int32)
    color = COLORS.get(method, (127, 127, 127))
    cv2.polylines(image, [pts], False, color, 2 if method == 'asym' else 1, cv2.LINE_AA)
    for p in pts:
      cv2.circle(image, tuple(int(c) for c in p), 2, color, -1, cv2.LINE_AA)
  return image


def plot_curves(curves: dict, path: str, ylabel: str = 'ensemble validation L1') -> None:
  """Writes a PNG of {panel title: {method: [(step, value)]}}: one panel per title, two per row,
  with a shared legend of the methods.

  Drawn with OpenCV, a dependency already, rather than matplotlib, which is not one: the plot
  is lines, ticks and labels, which OpenCV draws without another package.
  """
  width, height, columns = 460, 300, 2
  titles = list(curves)
  rows = max(1, -(-len(titles) // columns))
  methods = list(dict.fromkeys(m for panel in curves.values() for m in panel))
  legend_height = 30
  canvas = np.full((rows * height + legend_height + 24, columns * width, 3), 255, np.uint8)
  _text(canvas, ylabel + ' (lower is better)', (10, 17), 0.5)
  for i, title in enumerate(titles):
    r, c = divmod(i, columns)
    y = 24 + r * height
    canvas[y:y + height, c * width:(c + 1) * width] = _panel(title, curves[title], width, height)
  x, y = 10, canvas.shape[0] - 12
  for method in methods:
    color = COLORS.get(method, (127, 127, 127))
    cv2.line(canvas, (x, y - 4), (x + 24, y - 4), color, 2, cv2.LINE_AA)
    label = METHOD_NAMES.get(method, method)
    _text(canvas, label, (x + 30, y), 0.45)
    x += 30 + 10 * len(label) + 24
  if not cv2.imwrite(path, canvas):
    raise OSError(f'could not write the plot {path}')


def main(argv):
  del argv
  logger.setup_cli_logging(tensorflow=True)
  unknown_sets = [s for s in FLAGS.sets if s not in SETS]
  unknown_methods = [m for m in FLAGS.methods if m not in fusion.METHODS]
  if unknown_sets or unknown_methods:
    raise app.UsageError(f'unknown --sets {unknown_sets} (choose from {list(SETS)}) or --methods '
                         f'{unknown_methods} (choose from {list(fusion.METHODS)})')
  try:
    seeds = runs.parse_seeds(FLAGS.seeds)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  workdir = FLAGS.workdir
  # Seed-major, then set by set: an interrupted table has whole rows of the first seeds.
  configs = {(seed, set_name, method): variant_config(FLAGS.config, set_name, method, seed,
                                                      FLAGS.max_steps, FLAGS.inception_weights)
             for seed in seeds for set_name in FLAGS.sets for method in FLAGS.methods}
  for config in configs.values():  # Every cell's config, before the first run trains.
    tasks.get(config).check_config(config)
  results = {(s, m): {} for s in FLAGS.sets for m in FLAGS.methods}
  for (seed, set_name, method), config in configs.items():
    variant = variant_name(set_name, method)
    logging.info('Training %s (%s, %s), seed %d', variant, set_label(set_name), method, seed)
    results[(set_name, method)][seed] = runs.train_or_read(config, workdir, variant)
    runs.write_results({variant_name(*k): v for k, v in results.items()}, workdir)

  tables = markdown_tables(results, FLAGS.sets, FLAGS.methods)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(tables + '\n')
  curves = {set_label(s): {m: read_curve(runs.run_dir(workdir, variant_name(s, m), seeds[0]))
                           for m in FLAGS.methods} for s in FLAGS.sets}
  plot_curves(curves, os.path.join(workdir, 'curves.png'))
  print('\nEnsemble scores on the synthetic val set, final evaluation (lower is better):')
  print(tables)
  print(f'\nValidation curves: {os.path.join(workdir, "curves.png")}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
