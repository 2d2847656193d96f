"""Functional experiment: what a missing modality costs, with and without modality dropout.

For each config (default: configs/demo.py, the RGB-D demo, and configs/demo_rgbx.py, the
three-modality RGB-X demo, where it exists) and each modality-dropout rate
(config.train.modality_dropout, default 0 and 0.5), trains one run per seed, then evaluates its
best checkpoint without every proper non-empty subset of its modalities, once per fill policy
(config.eval.missing_fill: 'pad', 'mean', 'drop'; asymfusion_jax/missing.py).

  python experiments/missing_modality.py --workdir=/tmp/missing_modality
      [--configs=configs/demo.py,configs/demo_rgbx.py] [--dropout=0,0.5]
      [--fills=pad,mean,drop] [--seeds=0,1,2] [--max_steps=N]

Runs live in WORKDIR/<config>_p<rate>/seed_S (asymfusion_jax.runs: a rerun skips finished runs
and resumes interrupted ones), each config's synthetic dataset in WORKDIR/data/<config>; each
run's evaluations without modalities are kept as missing_<fill>.json beside its
final_scores.json (skipped when present). Writes
WORKDIR/missing_modality.md (the table: the ensemble's main metric, mean ± sample std over the
seeds, per config, dropout rate, fill and missing subset; 'none' is the full input),
WORKDIR/missing_modality.json (every branch and metric of every run) and
WORKDIR/missing_modality.png (one panel per config: a bar per (dropout, fill) and missing subset).
"""

import glob
import itertools
import json
import os
import shutil
import sys

from absl import app, flags
import cv2
import numpy as np

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib, logger, runs, train  # pylint: disable=g-import-not-at-top

DEFAULT_CONFIGS = ('configs/demo.py', 'configs/demo_rgbx.py')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for the datasets and one run per variant and seed.')
flags.DEFINE_list('configs', None, 'Config files to train (default: those of '
                  f'{",".join(DEFAULT_CONFIGS)} that exist).')
flags.DEFINE_list('dropout', ['0', '0.5'], 'Values of config.train.modality_dropout.')
flags.DEFINE_list('fills', ['pad', 'mean', 'drop'], 'Values of config.eval.missing_fill.')
flags.DEFINE_list('seeds', ['0'], 'Values of config.seed.')
flags.DEFINE_integer('max_steps', -1, 'Cut every run short (smoke runs); -1 trains fully.')
flags.mark_flag_as_required('workdir')


def default_configs() -> list[str]:
  return [c for c in DEFAULT_CONFIGS if os.path.exists(os.path.join(REPO, c))]


def config_name(spec: str) -> str:
  return os.path.splitext(os.path.basename(spec.split(':')[0]))[0]


def variant_name(spec: str, rate: float) -> str:
  return f'{config_name(spec)}_p{rate:g}'


def subsets(modalities) -> list[str]:
  """Every proper non-empty subset, '+'-joined, smallest first."""
  names = list(modalities)
  return ['+'.join(c) for k in range(1, len(names)
                                     ) for c in itertools.combinations(names, k)]


def main_metric(record: dict) -> tuple[str, bool]:
  """(metric, higher is better) of a run's {fill: {subset: {branch: scores}}}: mIoU for
  segmentation, else L1."""
  ensemble = next(iter(record.values()))['none']['ensemble']
  return ('miou', True) if 'miou' in ensemble else ('l1', False)


def evaluate_missing(config, directory: str, fill: str) -> dict:
  """The run's missing.json under `fill` (its best checkpoint), computed once and kept as
  DIRECTORY/missing_<fill>.json."""
  path = os.path.join(directory, f'missing_{fill}.json')
  if not os.path.exists(path):
    with config.unlocked():
      config.eval.missing = tuple(subsets(config.modalities))
      config.eval.missing_fill = fill
    train.evaluate_checkpoint(config, directory)  # Writes eval/step_BEST/missing.json.
    written = max(glob.glob(os.path.join(directory, 'eval', 'step_*', 'missing.json')),
                  key=os.path.getmtime)
    shutil.copyfile(written, path + '.tmp')
    os.replace(path + '.tmp', path)
  with open(path) as f:
    return json.load(f)['missing']


def run_variant(spec: str, rate: float, seed: int, fills, workdir: str, max_steps: int) -> dict:
  """{fill: {subset: {branch: scores}}} of one trained run."""
  config = config_lib.load(spec)
  config.seed, config.max_steps = seed, max_steps
  config.train.modality_dropout = rate
  variant = variant_name(spec, rate)
  # Each config's synthetic dataset apart (the RGB-D and the RGB-X demos' differ).
  data_dir = os.path.join(workdir, 'data', config_name(spec))
  runs.train_or_read(config, workdir, variant, data_dir)
  runs.use_data_dir(config, data_dir)  # As train_or_read does for the runs it trains.
  return {fill: evaluate_missing(config, runs.run_dir(workdir, variant, seed), fill)
          for fill in fills}


def collect(by_rate: dict) -> tuple[str, bool, dict]:
  """(metric, higher is better, {(rate, fill): {subset: [the ensemble's metric per seed]}}) of
  one config's {rate: {seed: {fill: {subset: {branch: scores}}}}}."""
  metric, higher = main_metric(next(iter(next(iter(by_rate.values())).values())))
  rows = {}
  for rate, by_seed in by_rate.items():
    for record in by_seed.values():
      for fill, by_subset in record.items():
        for subset, scores in by_subset.items():
          rows.setdefault((rate, fill), {}).setdefault(subset, []).append(
              scores['ensemble'][metric])
  return metric, higher, rows


def table(results: dict) -> str:
  """Markdown: per config, dropout, fill and missing subset, the ensemble's main metric."""
  lines = []
  for config, by_rate in results.items():
    metric, higher, rows = collect(by_rate)
    lines += [f'### {config}: ensemble {metric} ({"higher" if higher else "lower"} is better), '
              'mean ± sample std over seeds', '']
    subset_names = list(dict.fromkeys(s for r in rows.values() for s in r))
    lines.append('| dropout | fill | ' + ' | '.join(f'missing {s}' for s in subset_names) + ' |')
    lines.append('|---|---|' + '---|' * len(subset_names))
    for (rate, fill), by_subset in rows.items():
      cells = []
      for s in subset_names:
        if s not in by_subset:
          cells.append('-')
          continue
        summary = runs.summarize(by_subset[s])
        cells.append(f'{summary["mean"]:.2f} ± {summary["std"]:.2f} (n={summary["n"]})')
      lines.append(f'| {rate:g} | {fill} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


COLORS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
          (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]


def plot(results: dict, path: str) -> None:
  """One panel per config: groups of bars per missing subset, one bar per (dropout, fill), the
  ensemble's main metric (mean over seeds, a line for ± std). Drawn with OpenCV."""
  panels = []
  for config, by_rate in results.items():
    metric, _, rows = collect(by_rate)
    series = {f'p={rate:g} {fill}': by_subset for (rate, fill), by_subset in rows.items()}
    subset_names = list(dict.fromkeys(s for r in series.values() for s in r))
    top = max(max(v) for r in series.values() for v in r.values()) * 1.1 or 1.0
    group = 20 * len(series) + 20
    width, height, base = max(400, 60 + group * len(subset_names)), 320, 260
    panel = np.full((height + 20 * len(series), width, 3), 255, np.uint8)
    cv2.putText(panel, f'{config}: ensemble {metric}', (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(panel, (50, base), (width - 10, base), (0, 0, 0), 1)
    cv2.putText(panel, f'{top:.3g}', (5, 45), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    for g, subset in enumerate(subset_names):
      x0 = 60 + g * group
      cv2.putText(panel, f'-{subset}' if subset != 'none' else 'all', (x0, base + 15),
                  cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
      for i, (label, by_subset) in enumerate(series.items()):
        if subset not in by_subset:
          continue
        s = runs.summarize(by_subset[subset])
        to_y = lambda v: int(base - (base - 45) * v / top)  # pylint: disable=cell-var-from-loop
        color = COLORS[i % len(COLORS)]
        cv2.rectangle(panel, (x0 + 20 * i, to_y(s['mean'])), (x0 + 20 * i + 16, base), color, -1)
        cv2.line(panel, (x0 + 20 * i + 8, to_y(s['mean'] - s['std'])),
                 (x0 + 20 * i + 8, to_y(s['mean'] + s['std'])), (0, 0, 0), 1)
    for i, label in enumerate(series):
      y = height + 20 * i
      cv2.rectangle(panel, (10, y - 10), (24, y), COLORS[i % len(COLORS)], -1)
      cv2.putText(panel, label, (30, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                  cv2.LINE_AA)
    panels.append(panel)
  width = max(p.shape[1] for p in panels)
  canvas = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)),
                                  constant_values=255) for p in panels], axis=0)
  if not cv2.imwrite(path, canvas):
    raise OSError(f'could not write the plot {path}')


def main(argv):
  del argv
  logger.setup_cli_logging(tensorflow=True)
  try:
    seeds = runs.parse_seeds(FLAGS.seeds)
    rates = [float(r) for r in FLAGS.dropout]
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  specs = FLAGS.configs or default_configs()
  unknown = [f for f in FLAGS.fills if f not in ('pad', 'mean', 'drop')]
  if unknown:
    raise app.UsageError(f'--fills: unknown {",".join(unknown)}; choose from pad, mean, drop')
  results = {config_name(spec): {rate: {} for rate in rates} for spec in specs}
  for seed in seeds:
    for spec in specs:
      for rate in rates:
        results[config_name(spec)][rate][seed] = run_variant(
            spec, rate, seed, FLAGS.fills, FLAGS.workdir, FLAGS.max_steps)
  with open(os.path.join(FLAGS.workdir, 'missing_modality.json'), 'w') as f:
    json.dump({c: {f'{r:g}': {str(s): v for s, v in by_seed.items()}
                   for r, by_seed in by_rate.items()} for c, by_rate in results.items()}, f,
              indent=1)
  text = table(results)
  with open(os.path.join(FLAGS.workdir, 'missing_modality.md'), 'w') as f:
    f.write(text + '\n')
  plot(results, os.path.join(FLAGS.workdir, 'missing_modality.png'))
  print(text)
  print(f'Plot: {os.path.join(FLAGS.workdir, "missing_modality.png")}')


if __name__ == '__main__':
  app.run(main)
