"""Functional experiment: does fusion help translation? Fused, no fusion, and each input alone.

Trains configs/demo_translation.py's variants on the synthetic Taskonomy-layout set with the
same data, budget and hyperparameters: 'fused' (AsymFusion), 'nofusion' (shared convs and
per-domain InstanceNorm, no shuffle/shift) and one run per single input domain. The RGB target
is albedo times shading: shading follows from the geometry (depth, normals), albedo from the
texture, so neither input alone should predict it as well as both together.

  python experiments/translation_fusion.py --workdir=/tmp/translation_fusion \\
      [--variants=fused,nofusion,reshading,depth_euclidean] [--seeds=0] [--max_steps=N] \\
      [--inception_weights=pt_inception-2015-12-05-6726825d.pth]

Each (variant, seed) run lives in WORKDIR/VARIANT/seed_S and is skipped once finished (see
asymfusion_jax/runs.py). The markdown table (ensemble L1 and L2 in [-1, 1] units, lower is better,
and FID and KID x 100 when Inception weights are given; mean ± sample std over the seeds) is
printed and written to WORKDIR/results.md; WORKDIR/results.json holds every run's scores.
"""

import os
import sys

from absl import app, flags

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib, logger, runs  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a script, so that tests can import this beside demo_fusion."""
  flags.DEFINE_string('workdir', None, 'Directory for the shared dataset and one run per '
                      'variant.')
  flags.DEFINE_list('variants', ['fused', 'nofusion', 'reshading', 'depth_euclidean'],
                    'Variants of configs/demo_translation.py to train.')
  flags.DEFINE_list('seeds', ['0'], 'Values of config.seed; every variant is trained once per '
                    'seed.')
  flags.DEFINE_integer('max_steps', -1, 'Cut every run short (smoke runs); -1 trains fully.')
  flags.DEFINE_string('inception_weights', '', 'FID Inception weights: adds FID and KID.')
  flags.mark_flag_as_required('workdir')

METRICS = ('l1', 'l2', 'fid', 'kid')


def run_variant(variant: str, seed: int, workdir: str, max_steps: int,
                inception_weights: str = '') -> dict:
  config = config_lib.get_config(f'demo_translation:{variant}')
  config.seed = seed
  config.max_steps = max_steps
  config.eval.inception_weights = inception_weights
  return runs.train_or_read(config, workdir, variant)


def markdown_table(results: dict) -> str:
  """One row per variant: its inputs, the seed count and each ensemble metric's mean ± std."""
  metrics = [m for m in METRICS
             if all(m in scores['ensemble'] for by_seed in results.values()
                    for scores in by_seed.values())]
  header = ['variant', 'inputs', 'seeds'] + [f'ensemble {m.upper()}' for m in metrics]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for variant, by_seed in results.items():
    if not by_seed:
      continue
    branches = [b for b in next(iter(by_seed.values())) if b != 'ensemble']
    cells = [variant, ', '.join(branches), str(len(by_seed))]
    for m in metrics:
      s = runs.summarize([scores['ensemble'][m] for scores in by_seed.values()])
      cells.append(f'{s["mean"]:.4f} ± {s["std"]:.4f}' if s['n'] > 1 else f'{s["mean"]:.4f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  logger.setup_cli_logging(tensorflow=True)
  try:
    seeds = runs.parse_seeds(FLAGS.seeds)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  results = runs.run_grid(
      FLAGS.variants, seeds, FLAGS.workdir,
      lambda variant, seed: run_variant(variant, seed, FLAGS.workdir, FLAGS.max_steps,
                                        FLAGS.inception_weights))
  table = markdown_table(results)
  with open(os.path.join(FLAGS.workdir, 'results.md'), 'w') as f:
    f.write(table + '\n')
  # With one input the ensemble is that branch itself (softmax of a single alpha is 1).
  print('\nEnsemble scores on the synthetic val set (lower is better):')
  print(table)


if __name__ == '__main__':
  define_flags()
  app.run(main)
