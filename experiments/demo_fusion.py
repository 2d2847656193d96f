"""Functional experiment: does fusion help? The demo trained fused, RGB-only and depth-only.

Every variant gets the same data, budget and hyperparameters (configs/demo.py); only the
modalities (and, for 'nofusion', the shuffle/shift switch) differ. On the synthetic dataset colour
separates warm from cool objects and depth separates near from far ones, so each single modality
can at best merge two of the four object classes, and the fused model should win clearly.

  python experiments/demo_fusion.py --workdir=/tmp/demo_fusion [--variants=fused,rgb,depth]
      [--max_steps=N]

Prints the validation scores of every variant side by side and writes them to
WORKDIR/results.json.
"""

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For configs/.
from asymfusion_jax import logger, metrics, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import demo  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for the shared dataset and one run per variant.')
flags.DEFINE_list('variants', ['fused', 'rgb', 'depth'], 'Variants of configs/demo.py to train.')
flags.DEFINE_integer('max_steps', -1, 'Cut every run short (smoke runs); -1 trains fully.')
flags.mark_flag_as_required('workdir')


def run_variant(variant: str, workdir: str, max_steps: int) -> dict:
  """Trains one variant; returns {branch: scores} of its final evaluation."""
  config = demo.get_config(variant)
  config.data.manual_dir = os.path.join(workdir, 'data', 'synthetic')
  config.data.tfds_data_dir = os.path.join(workdir, 'data', 'tfds')
  config.max_steps = max_steps
  return train.train_and_evaluate(config, os.path.join(workdir, variant))


def branch_miou_table(table: dict) -> str:
  """mIoU of every branch of every variant ('-' where a variant has no such branch)."""
  branches = ('rgb', 'depth', 'ensemble')
  lines = [f'{"variant":<10}' + ''.join(f'  {b:>8}' for b in branches)]
  for variant, results in table.items():
    cells = [f'{results[b]["miou"]:8.2f}' if b in results else f'{"-":>8}' for b in branches]
    lines.append(f'{variant:<10}' + ''.join(f'  {c}' for c in cells))
  return '\n'.join(lines)


def main(argv):
  del argv
  logger.setup_cli_logging(tensorflow=True)
  table = {}
  for variant in FLAGS.variants:
    logging.info('Training variant %s', variant)
    table[variant] = run_variant(variant, FLAGS.workdir, FLAGS.max_steps)
  with open(os.path.join(FLAGS.workdir, 'results.json'), 'w') as f:
    json.dump(table, f, indent=2)
  # For one modality the ensemble is that branch itself (softmax of a single alpha is 1).
  print('\nValidation scores of each model\'s ensemble output (%):')
  print(metrics.format_table({v: r['ensemble'] for v, r in table.items()}))
  print('\nmIoU of every branch (%):')
  print(branch_miou_table(table))


if __name__ == '__main__':
  app.run(main)
