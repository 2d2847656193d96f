"""Functional experiment: does fusion help? Trains fused, no-fusion, RGB-only and depth-only.

Every variant gets the same data, budget and hyperparameters (configs/demo.py); only the
modalities (and, for 'nofusion', the shuffle/shift switch) differ. On the synthetic dataset colour
separates warm from cool objects and depth separates near from far ones, so each single modality
can at best merge two of the four object classes, and the fused model should win clearly.

  python experiments/demo_fusion.py --workdir=/tmp/demo_fusion
      [--variants=fused,nofusion,rgb,depth] [--seeds=0,1,2] [--max_steps=N]

`config.seed` sets the parameter initialisation, the dropout keys, and the order and augmentation
of the training examples; the synthetic dataset itself is the same for every seed. One seed says
little about a small model trained from scratch, so each variant is trained once per seed and
reported as mean, sample standard deviation and range over the seeds.

Each (variant, seed) run lives in WORKDIR/VARIANT/seed_S and, once finished, leaves its final
scores in WORKDIR/VARIANT/seed_S/final_scores.json; a rerun skips the finished runs and resumes
an interrupted one from its last checkpoint. WORKDIR/results.json holds every finished run as
{variant: {seed: {branch: scores}}}.
"""

import os
import sys

from absl import app, flags

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib, logger, runs  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for the shared dataset and one run per variant.')
flags.DEFINE_list('variants', ['fused', 'nofusion', 'rgb', 'depth'],
                  'Variants of configs/demo.py to train.')
flags.DEFINE_list('seeds', ['0'], 'Values of config.seed; every variant is trained once per seed.')
flags.DEFINE_integer('max_steps', -1, 'Cut every run short (smoke runs); -1 trains fully.')
flags.mark_flag_as_required('workdir')

BRANCHES = ('rgb', 'depth', 'ensemble')
FINAL_SCORES = runs.FINAL_SCORES
summarize = runs.summarize


def run_variant(variant: str, seed: int, workdir: str, max_steps: int) -> dict:
  """Trains one (variant, seed) run, or reads its scores if it finished before.

  Returns:
    {branch: scores} of the run's final evaluation.
  """
  config = config_lib.get_config(f'demo:{variant}')
  config.seed = seed
  config.max_steps = max_steps
  return runs.train_or_read(config, workdir, variant)


def seed_table(runs: dict) -> str:
  """Per variant and branch: mIoU mean ± sample std, [min, max], over the seeds that ran."""
  lines = [f'{"variant":<10}  {"seeds":>5}' + ''.join(f'  {b:>27}' for b in BRANCHES)]
  for variant, by_seed in runs.items():
    cells = []
    for branch in BRANCHES:
      values = [scores[branch]['miou'] for scores in by_seed.values() if branch in scores]
      if not values:
        cells.append(f'{"-":>27}')
        continue
      s = summarize(values)
      cells.append(f'{s["mean"]:6.2f} ± {s["std"]:5.2f} [{s["min"]:5.1f},{s["max"]:5.1f}]'
                   .rjust(27))
    lines.append(f'{variant:<10}  {len(by_seed):>5}' + ''.join(f'  {c}' for c in cells))
  return '\n'.join(lines)


def per_seed_table(runs: dict) -> str:
  """Ensemble mIoU of every single run, one row per variant, one column per seed."""
  seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
  lines = [f'{"variant":<10}' + ''.join(f'  {"seed " + str(s):>8}' for s in seeds)]
  for variant, by_seed in runs.items():
    cells = [f'{by_seed[s]["ensemble"]["miou"]:8.2f}' if s in by_seed else f'{"-":>8}'
             for s in seeds]
    lines.append(f'{variant:<10}' + ''.join(f'  {c}' for c in cells))
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
      lambda variant, seed: run_variant(variant, seed, FLAGS.workdir, FLAGS.max_steps))
  # For one modality the ensemble is that branch itself (softmax of a single alpha is 1).
  print('\nmIoU (%) over seeds ' + ','.join(map(str, seeds))
        + ': mean ± sample std [min, max]')
  print(seed_table(results))
  print('\nEnsemble mIoU (%) of every run:')
  print(per_seed_table(results))


if __name__ == '__main__':
  app.run(main)
