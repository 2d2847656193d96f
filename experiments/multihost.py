"""Launches a multi-process (multi-host style) training run on this machine's CPUs.

Each process is one JAX "host" with its own CPU devices (one, or --devices_per_process, like
the GPUs of a host); they meet through jax.distributed on localhost and exchange collectives
through gloo, exactly as hosts of a GPU cluster or TPU pod do over the network. Process 0 writes
metrics.jsonl and config.json; all write checkpoints.

  python experiments/multihost.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/demo.py --workdir=/tmp/demo_2proc --config.max_steps=20

Everything after `--` goes to `python -m asymfusion_jax.main` of every process
(asymfusion_jax.local_cluster starts them).
"""

import argparse
import os
import sys

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import local_cluster  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('main_args', nargs=argparse.REMAINDER)
  args = parser.parse_args()
  main_args = args.main_args[1:] if args.main_args[:1] == ['--'] else args.main_args
  for i, out in enumerate(local_cluster.launch(args.num_processes, main_args,
                                               devices_per_process=args.devices_per_process)):
    print(f'--- process {i} ---\n{out[-2000:]}')


if __name__ == '__main__':
  main()
