"""Compile time and step time of the train step with and without config.model.scan_blocks.

  python experiments/scan_compile.py [--out=/tmp/scan_compile.jsonl] [--batch_size=2]
      [--crop_size=64] [--steps=3] [--configs=configs/nyudv2_refinenet101.py,...]

For every config, experiments/benchmark.py runs twice back to back, each in a fresh process
(nothing cached between them; the persistent compilation cache is switched off): without and
with --config.model.scan_blocks=True (--scan_first: the other way round), at a small batch and crop so that the step also runs on a
CPU (compile time barely depends on them). Each result line (benchmark.py's JSON plus the
config) is appended to --out as it comes; a table of compile time (wall and CPU seconds), their
ratios and the step times is printed at the end.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('configs/nyudv2_refinenet101.py', 'configs/nyudv2_refinenet152.py',
           'configs/cityscapes_deeplab_xception65.py')

FLAGS = flags.FLAGS
flags.DEFINE_string('out', '/tmp/scan_compile.jsonl', 'JSON lines file the results go to.')
flags.DEFINE_list('configs', list(CONFIGS), 'Config files to measure.')
flags.DEFINE_integer('batch_size', 2, 'Batch size of the timed train step.')
flags.DEFINE_integer('crop_size', 64, 'Square crop of the timed train step.')
flags.DEFINE_integer('steps', 3, 'Timed steps (benchmark.py --steps).')
flags.DEFINE_bool('compile_only', False, 'Compile without running steps.')
flags.DEFINE_bool('scan_first', False, 'Measure with scan_blocks first, then without (a second '
                  'round in the other order tells drift on a shared machine from the effect).')


def measure(config: str, scan: bool) -> dict:
  """benchmark.py's result for one config and setting, in a fresh process."""
  command = [sys.executable, os.path.join(REPO, 'experiments', 'benchmark.py'),
             f'--config={config}', f'--config.batch_size={FLAGS.batch_size}',
             f'--config.crop_size={FLAGS.crop_size}', f'--config.model.scan_blocks={scan}',
             f'--steps={FLAGS.steps}', '--warmup=1', f'--compile_only={FLAGS.compile_only}']
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['JAX_ENABLE_COMPILATION_CACHE'] = 'false'
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(command)} failed:\n{proc.stderr[-3000:]}')
  return {'config': config, **json.loads(proc.stdout.strip().splitlines()[-1])}


def table(results: list[dict]) -> str:
  def get(config, scan, key):
    row = next(r for r in results if r['config'] == config and r['scan_blocks'] == scan)
    return row[key]

  def fmt(v, spec='.1f'):
    return 'n/a' if v is None else format(v, spec)

  lines = ['| config | compile s (without / with / ratio) | compile CPU s (without / with / '
           'ratio) | step ms (without / with) |', '|---|---|---|---|']
  for config in dict.fromkeys(r['config'] for r in results):
    c0, c1 = get(config, False, 'compile_s'), get(config, True, 'compile_s')
    p0, p1 = get(config, False, 'compile_cpu_s'), get(config, True, 'compile_cpu_s')
    s0, s1 = get(config, False, 'step_ms'), get(config, True, 'step_ms')
    lines.append(f'| {os.path.basename(config)} | {c0:.1f} / {c1:.1f} / {c1 / c0:.2f} | '
                 f'{p0:.1f} / {p1:.1f} / {p1 / p0:.2f} | {fmt(s0, ".0f")} / {fmt(s1, ".0f")} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  results = []
  for config in FLAGS.configs:
    for scan in (True, False) if FLAGS.scan_first else (False, True):
      result = measure(config, scan)
      results.append(result)
      with open(FLAGS.out, 'a') as f:
        f.write(json.dumps(result) + '\n')
      print(f'{config} scan_blocks={scan}: compile {result["compile_s"]:.1f} s '
            f'({result["compile_cpu_s"]:.1f} CPU s), step {result["step_ms"]} ms', flush=True)
  print(table(results))


if __name__ == '__main__':
  app.run(main)
