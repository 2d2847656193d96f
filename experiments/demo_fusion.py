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
from asymfusion_jax import metrics, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import demo  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for the shared dataset and one run per variant.')
flags.DEFINE_list('variants', ['fused', 'rgb', 'depth'], 'Variants of configs/demo.py to train.')
flags.DEFINE_integer('max_steps', -1, 'Cut every run short (smoke runs); -1 trains fully.')
flags.mark_flag_as_required('workdir')


def run_variant(variant: str, workdir: str, max_steps: int) -> dict:
  config = demo.get_config(variant)
  config.data.manual_dir = os.path.join(workdir, 'data', 'synthetic')
  config.data.tfds_data_dir = os.path.join(workdir, 'data', 'tfds')
  config.max_steps = max_steps
  # For one modality the ensemble is that branch itself (softmax of a single alpha is 1).
  return train.train_and_evaluate(config, os.path.join(workdir, variant))['ensemble']


def main(argv):
  del argv
  table = {}
  for variant in FLAGS.variants:
    logging.info('Training variant %s', variant)
    table[variant] = run_variant(variant, FLAGS.workdir, FLAGS.max_steps)
  with open(os.path.join(FLAGS.workdir, 'results.json'), 'w') as f:
    json.dump(table, f, indent=2)
  print('\nValidation scores (ensemble output of each model, %):')
  print(metrics.format_table(table))


if __name__ == '__main__':
  app.run(main)
