"""Runs several command lines in one Python process, as `python -m MODULE ARGS...` runs each.

  python -m tests.cli_cases '[["asymfusion_jax.export", "--workdir=W", "--out=O"], ...]'

Each case executes the module's __main__ block (runpy), so it runs exactly what the command
would, without a new interpreter (and its JAX and TensorFlow imports) per case. The flags a case
defines are deleted after it, so the next module can define its own. Before each case a line
`CASE <i>` goes to stderr; after it, stdout gets `CASE <i> <json>`, where <json> is the exit
status or message (SystemExit's code; 0 when the module returned).
"""

import json
import runpy
import sys

from absl import app, flags, logging

app.define_help_flags()  # What app.run defines on its first call: kept across cases.


def main():
  for i, (module, *args) in enumerate(json.loads(sys.argv[1])):
    before = set(flags.FLAGS)
    sys.argv = [module] + args
    print(f'CASE {i}', file=sys.stderr, flush=True)
    try:
      runpy.run_module(module, run_name='__main__', alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code
    flags.FLAGS.unparse_flags()
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    logging.set_verbosity(logging.INFO)
    sys.stderr.flush()
    print(f'CASE {i} {json.dumps(code)}', flush=True)


if __name__ == '__main__':
  main()
