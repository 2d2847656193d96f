"""The device benchmark in one command: the paper setting, the issue's goals and a batch sweep.

  python experiments/benchmark_suite.py --out=DIR [--config=configs/nyudv2_refinenet101.py]
      [--cases=paper_bf16,paper_fp32,eval_bf16,batch_sweep,remat_backbone,...]
      [--batch_sizes=2,4,8,12] [--budget_s=520] [--peak_tflops=989] [-- --config.key=value ...]

Each case is one run of experiments/benchmark.py in a process of its own (so that compile time,
the allocator's peak memory and XLA flags belong to that case alone), in the order given, so
that the cases that matter most run first. Cases:

  paper_bf16       the config as it is (batch 6, crop 500 for the paper configs), bfloat16,
                   20 timed steps; also dumps the lowered and optimised HLO to DIR/hlo
  paper_fp32       the same in float32 (the 197 ms PyTorch fp32 figure is its reference)
  eval_bf16        the eval step, bfloat16
  batch_sweep      bfloat16 at every --batch_sizes value other than the config's own
  remat_backbone   bfloat16 with model.remat='backbone', then remat_all with 'all'
  command_buffers_off  bfloat16 with XLA_FLAGS=--xla_gpu_enable_command_buffer= (CUDA graphs
                   off: what they give), and triton_gemm_off with --xla_gpu_enable_triton_gemm=false

A case starts only while at least --min_case_s of --budget_s is left, and is stopped at the end
of the budget, so the suite fits a device lease. Every finished case is appended at once to
DIR/results.jsonl (emptied when the suite starts; a failed case is kept with its return code
and the end of its log), each case's full output is in DIR/<case>.log, and DIR/results.md gets
the table, rewritten after every case: what is written survives a suite that is killed. Arguments after `--` go to every case, before the
case's own (tests use them for a tiny model). The exit status is 1 if any case failed.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16 = ('--config.compute_dtype=bfloat16',)
FP32 = ('--config.compute_dtype=float32',)
LONG = ('--steps=20', '--warmup=3')
SHORT = ('--steps=10', '--warmup=2')

# name -> (benchmark.py arguments, extra XLA flags). batch_sweep expands into batch_<B> cases.
CASES = {
    'paper_bf16': (BF16 + LONG + ('--dump_hlo={out}/hlo',), ''),
    'paper_fp32': (FP32 + SHORT, ''),
    'eval_bf16': (BF16 + LONG + ('--mode=eval',), ''),
    'remat_backbone': (BF16 + SHORT + ('--config.model.remat=backbone',), ''),
    'remat_all': (BF16 + SHORT + ('--config.model.remat=all',), ''),
    'command_buffers_off': (BF16 + SHORT, '--xla_gpu_enable_command_buffer='),
    'triton_gemm_off': (BF16 + SHORT, '--xla_gpu_enable_triton_gemm=false'),
}
DEFAULT_CASES = ('paper_bf16', 'paper_fp32', 'eval_bf16', 'batch_sweep', 'remat_backbone',
                 'command_buffers_off', 'remat_all', 'triton_gemm_off')
COLUMNS = ('case', 'mode', 'compute_dtype', 'batch_size', 'crop_size', 'remat', 'xla_flags',
           'step_ms', 'images_per_s', 'compile_s', 'peak_memory_gb', 'planned_memory_gb',
           'tflop_per_step',
           'achieved_tflops', 'peak_fraction')

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Directory for results.jsonl, results.md, logs and HLO.')
flags.DEFINE_string('config', 'configs/nyudv2_refinenet101.py', 'Config file of every case.')
flags.DEFINE_list('cases', list(DEFAULT_CASES), f'Cases in order: {sorted(CASES)} or batch_sweep.')
flags.DEFINE_list('batch_sizes', ['2', '4', '8', '12'], 'Batch sizes of batch_sweep (bfloat16).')
flags.DEFINE_float('budget_s', 520, 'Seconds for the whole suite.')
flags.DEFINE_float('min_case_s', 60, 'A case starts only if this much of the budget is left.')
flags.DEFINE_float('peak_tflops', None, 'Passed to benchmark.py (989: H100 SXM dense bf16).')
flags.DEFINE_float('goal_step_ms', 67, 'Goal for the bfloat16 paper-setting train step.')
flags.DEFINE_float('goal_compile_s', 60, 'Goal for its compile time.')
flags.DEFINE_float('goal_peak_gb', 12.9, 'Goal for its peak device memory.')
flags.mark_flag_as_required('out')


def expand_cases(names, batch_sizes) -> list[tuple[str, tuple[str, ...], str]]:
  """[(case name, benchmark.py arguments, XLA flags)] in order; batch_sweep becomes batch_<B>."""
  cases = []
  for name in names:
    if name == 'batch_sweep':
      for b in batch_sizes:
        if not str(b).isdigit() or int(b) < 1:
          raise app.UsageError(f'--batch_sizes: {b!r} is not a positive integer')
        cases.append((f'batch_{b}', BF16 + SHORT + (f'--config.batch_size={b}',), ''))
    elif name in CASES:
      cases.append((name, *CASES[name]))
    else:
      raise app.UsageError(f'--cases: unknown case {name!r}; choose from '
                           f'{sorted(CASES) + ["batch_sweep"]}')
  return cases


def run_case(name, args, xla_flags, out, timeout_s) -> dict:
  """Runs benchmark.py for one case; its JSON line plus the case's name, or the failure."""
  env = dict(os.environ)
  if xla_flags:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + xla_flags).strip()
  command = [sys.executable, os.path.join(_REPO, 'experiments', 'benchmark.py'), *args]
  log_path = os.path.join(out, f'{name}.log')
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    try:
      proc = subprocess.run(command, cwd=_REPO, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True, timeout=timeout_s, check=False)
      stdout, returncode = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
      stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
      returncode = 'timeout'
    log.write(stdout)
  record = {'case': name, 'xla_flags': xla_flags, 'wall_s': time.perf_counter() - start}
  lines = stdout.strip().splitlines()
  if returncode == 0 and lines and lines[-1].startswith('{'):
    return record | json.loads(lines[-1])
  with open(log_path) as log:
    tail = log.read()[-2000:]
  return record | {'error': f'returncode {returncode}', 'log_tail': tail}


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value) or '-'


def goal_lines(records, step_ms, compile_s, peak_gb) -> list[str]:
  """Whether the bfloat16 paper-setting case met each goal."""
  paper = next((r for r in records if r['case'] == 'paper_bf16' and 'error' not in r), None)
  if paper is None:
    return ['Goals: no successful paper_bf16 case, nothing to judge.']
  lines = [f'Goals (paper_bf16 on {paper["device_kind"]}: RefineNet-{paper["depth"]}, '
           f'{paper["modalities"]} modalities, batch {paper["batch_size"]}, '
           f'crop {paper["crop_size"]}):']
  for label, key, goal in (('train step', 'step_ms', step_ms), ('compile', 'compile_s', compile_s),
                           ('peak memory', 'peak_memory_gb', peak_gb)):
    value = paper.get(key)
    verdict = 'unmeasured' if value is None else ('met' if value <= goal else 'NOT met')
    lines.append(f'- {label}: {_cell(value)} against <= {goal:g} ({key}): {verdict}')
  return lines


def markdown(records, goals) -> str:
  """The results as a Markdown table, the goals and the failures under it."""
  done = [r for r in records if 'error' not in r]
  header = [f'| {" | ".join(COLUMNS)} |', '|' + '---|' * len(COLUMNS)]
  rows = [f'| {" | ".join(_cell(r.get(c)) for c in COLUMNS)} |' for r in done]
  lines = header + rows
  if done:
    r = done[0]
    lines += ['', f'Device: {r["device_kind"]} ({r["platform"]}, {r["device_count"]} device(s)), '
              f'jax {r["jax_version"]}; peak memory from {r["peak_memory_source"]}.']
  lines += [''] + goals
  for r in records:
    if 'error' in r:
      lines += ['', f'Case {r["case"]} failed ({r["error"]}); end of its log:', '```',
                r['log_tail'].rstrip(), '```']
  return '\n'.join(lines) + '\n'


def write_markdown(out, records) -> None:
  goals = goal_lines(records, FLAGS.goal_step_ms, FLAGS.goal_compile_s, FLAGS.goal_peak_gb)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown(records, goals))


def main(argv):
  passthrough = argv[1:]
  out = os.path.abspath(FLAGS.out)
  os.makedirs(out, exist_ok=True)
  cases = expand_cases(FLAGS.cases, FLAGS.batch_sizes)
  common = [f'--config={FLAGS.config}', *passthrough]
  if FLAGS.peak_tflops:
    common.append(f'--peak_tflops={FLAGS.peak_tflops}')
  deadline = time.monotonic() + FLAGS.budget_s
  records = []
  open(os.path.join(out, 'results.jsonl'), 'w').close()  # This run's results only.
  write_markdown(out, records)
  for name, args, xla_flags in cases:
    left = deadline - time.monotonic()
    if left < FLAGS.min_case_s:
      print(f'{name}: skipped, {left:.0f} s of the budget left', flush=True)
      continue
    # The case's own arguments come last, so that they win over the common ones.
    args = common + [a.format(out=out) for a in args]
    record = run_case(name, args, xla_flags, out, left)
    records.append(record)
    with open(os.path.join(out, 'results.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')
    write_markdown(out, records)
    status = record.get('error') or f'{_cell(record["step_ms"])} ms/step'
    print(f'{name}: {status} ({record["wall_s"]:.0f} s)', flush=True)
  with open(os.path.join(out, 'results.md')) as f:
    print(f.read(), end='')
  if any('error' in r for r in records):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
