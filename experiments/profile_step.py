"""Where a step's CPU time goes: per-op thread time of the library's step under jax.profiler.

  python experiments/profile_step.py --config=configs/nyudv2_refinenet101.py \\
      --config.batch_size=2 --config.crop_size=128 [--mode=train|eval] [--steps=1] [--top=25]

Builds experiments/benchmark.py's step (asymfusion_jax.step_program.build_step), compiles it,
runs one untimed step, then traces --steps steps with jax.profiler and sums the duration of
every XLA:CPU op (thunk) event over all threads. Ops are grouped by what they run, read from the
optimised HLO: matrix-unit work
(convolutions and dots, however the backend fused them: YNNPACK / XNNPACK / oneDNN fusions or
plain convolution and dot thunks), layout transposes and copies, reductions, reduce-window,
scatters and gathers, and the remaining loop fusions (elementwise work). Prints the groups, then
the --top ops by time, each with its HLO opcode and output shape; the last line is JSON.

The per-thread sum counts both threads' time, so it exceeds the wall time of a step on 2 cores;
fractions of it are what compare.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

from absl import app, flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib  # pylint: disable=g-import-not-at-top
from asymfusion_jax.step_program import build_step  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

_ENTRY_INSTR = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?)(?:\{[^}]*\})?\s+([\w\-]+)\((.*)$')


def hlo_ops(text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (group, description)} of every instruction in the optimised HLO.

  A fusion's group is that of what its body computes: a convolution or dot anywhere in it makes
  it 'conv/dot'; otherwise transposes or copies make it 'transpose/copy', and so on.
  """
  bodies, current = {}, None
  for line in text.splitlines():
    header = re.match(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if header:
      current = header.group(1)
      bodies[current] = []
    elif current and line.startswith(' '):
      bodies[current].append(line)

  def body_group(name, depth=0):
    text = '\n'.join(bodies.get(name, ()))
    opcodes = set(re.findall(r'=\s*\S+\s+([\w\-]+)\(', text))
    if opcodes & {'convolution', 'dot'} or '__onednn$' in text:
      return 'conv/dot'
    for callee in re.findall(r'calls=%?([\w.\-]+)', text):
      if depth < 3 and body_group(callee, depth + 1) == 'conv/dot':
        return 'conv/dot'
    for ops, group in (({'scatter'}, 'scatter'), ({'gather'}, 'gather'),
                       ({'reduce-window', 'select-and-scatter'}, 'reduce-window'),
                       ({'reduce'}, 'reduce'), ({'transpose', 'copy'}, 'transpose/copy')):
      if opcodes & ops:
        return group
    return 'elementwise'

  ops = {}
  for lines in bodies.values():
    for line in lines:
      match = _ENTRY_INSTR.match(line)
      if not match:
        continue
      name, shape, opcode, rest = match.groups()
      callee = re.search(r'calls=%?([\w.\-]+)', rest)
      kind = re.search(r'"kind":"(\w+)"', rest)
      if opcode == 'fusion' and callee:
        group = body_group(callee.group(1))
        desc = f'fusion[{kind.group(1) if kind else "loop"}] {shape}'
      elif opcode in ('convolution', 'dot', 'custom-call'):
        group, desc = 'conv/dot', f'{opcode} {shape}'
      elif opcode in ('transpose', 'copy'):
        group, desc = 'transpose/copy', f'{opcode} {shape}'
      elif opcode in ('scatter', 'gather', 'reduce'):
        group, desc = opcode, f'{opcode} {shape}'
      else:
        group, desc = 'other', f'{opcode} {shape}'
      ops[name] = (group, desc)
  return ops


def thread_times(trace_dir: str) -> collections.Counter:
  """{event name: summed duration in seconds} over the trace's complete events."""
  paths = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}: the profiler wrote nothing '
                            'readable')
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    events = json.load(f)['traceEvents']
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e:
      totals[e['name']] += e['dur'] * 1e-6
  return totals


def profile(config, mode: str = 'train', steps: int = 1) -> dict:
  step, args = build_step(config, mode)
  compiled = step.lower(*args).compile()
  ops = hlo_ops(compiled.as_text())

  def run(args):
    out = compiled(*args)
    jax.block_until_ready(out)
    return (out[0], args[1]) if mode == 'train' else args

  args = run(args)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        args = run(args)
    totals = thread_times(tmp)
  groups, per_op = collections.Counter(), []
  for name, seconds in totals.items():
    if name in ops:
      group, desc = ops[name]
      groups[group] += seconds / steps
      per_op.append((seconds / steps, name, group, desc))
  total = sum(groups.values())
  per_op.sort(reverse=True)
  return {'mode': mode, 'steps': steps, 'op_thread_s_per_step': total,
          'groups_s': dict(groups.most_common()),
          'groups_fraction': {g: s / total for g, s in groups.most_common()},
          'top_ops': [{'name': n, 'group': g, 'hlo': d, 's': s} for s, n, g, d in per_op]}


def main(argv):
  del argv
  result = profile(FLAGS.config, FLAGS.mode, FLAGS.steps)
  print(f"{result['mode']}: {result['op_thread_s_per_step']:.3f} s of op thread time per step")
  for group, seconds in result['groups_s'].items():
    print(f"  {group:16}{seconds:9.3f} s  {100 * result['groups_fraction'][group]:5.1f}%")
  print(f'top {FLAGS.top} ops:')
  for op in result['top_ops'][:FLAGS.top]:
    print(f"  {op['s'] * 1e3:9.1f} ms  {op['group']:15} {op['name']:40} {op['hlo']}")
  result['top_ops'] = result['top_ops'][:FLAGS.top]
  print(json.dumps(result))


if __name__ == '__main__':
  config_lib.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Profile the train or the eval step.')
  flags.DEFINE_integer('steps', 1, 'Traced steps (after one untimed step).', lower_bound=1)
  flags.DEFINE_integer('top', 25, 'How many of the most expensive ops to list.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
