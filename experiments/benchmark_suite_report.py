"""experiments/benchmark_suite.py's results.md: the table, the machine, the goals, the ratios.

Records are the suite's results.jsonl lines: a case's benchmark JSON (experiments/benchmark.py or
experiments/benchmark_torch_device.py) with its 'case' name, or a failure ('error', 'log_tail'),
or a skipped case ('skipped': why).
"""

COLUMNS = ('case', 'model', 'mode', 'compute_dtype', 'kernels', 'batch_size', 'crop_size',
           'remat', 'scan_blocks', 'xla_flags', 'step_ms', 'images_per_s', 'compile_s',
           'peak_memory_gb', 'planned_memory_gb', 'tflop_per_step', 'achieved_tflops', 'peak_fraction')

# (what the ratio is, case A, case B): A / B of the median step time and of the peak memory.
# paper_bf16, deeplab_bf16 and translation_bf16 run config.model.kernels='auto', which lowers to
# the stock ops ('xla') on every platform but a CPU; each side's label says what it ran.
RATIOS = (
    ('kernels xla / cpu: RefineNet train bf16', 'paper_bf16', 'kernels_cpu'),
    ('kernels xla / cpu: U-Net (translation) train bf16', 'translation_bf16',
     'translation_kernels_cpu'),
    ('kernels xla / cpu: DeepLab train bf16 (no CPU rewrite: one program twice, the noise)',
     'deeplab_bf16', 'deeplab_kernels_cpu'),
    ('JAX / PyTorch: RefineNet train bf16 (PyTorch: autocast + channels_last)', 'paper_bf16',
     'torch_bf16'),
    ('JAX / PyTorch: RefineNet train fp32', 'paper_fp32', 'torch_fp32'),
    ('scanned / unscanned blocks: RefineNet train bf16 (config.model.scan_blocks)', 'scan_blocks',
     'paper_bf16'),
)


def cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value) or '-'


def succeeded(record) -> bool:
  return 'error' not in record and 'skipped' not in record


def status(record) -> str:
  """One line for the console: the step time, the failure or why the case was skipped."""
  if 'skipped' in record:
    return f'skipped, {record["skipped"]}'
  wall = f' ({record["wall_s"]:.0f} s)'
  return (record['error'] if 'error' in record else f'{cell(record["step_ms"])} ms/step') + wall


def goal_lines(records, step_ms, compile_s, peak_gb) -> list[str]:
  """Whether the bfloat16 paper-setting case met each goal."""
  paper = next((r for r in records if r['case'] == 'paper_bf16' and succeeded(r)), None)
  if paper is None:
    return ['Goals: no successful paper_bf16 case, nothing to judge.']
  lines = [f'Goals (paper_bf16 on {paper["device_kind"]}: RefineNet-{paper["depth"]}, '
           f'{paper["modalities"]} modalities, batch {paper["batch_size"]}, '
           f'crop {paper["crop_size"]}):']
  for label, key, goal in (('train step', 'step_ms', step_ms), ('compile', 'compile_s', compile_s),
                           ('peak memory', 'peak_memory_gb', peak_gb)):
    value = paper.get(key)
    verdict = 'unmeasured' if value is None else ('met' if value <= goal else 'NOT met')
    lines.append(f'- {label}: {cell(value)} against <= {goal:g} ({key}): {verdict}')
  return lines


def _why_not(name, by_case) -> str:
  record = by_case.get(name)
  if record is None:
    return f'{name} not run'
  if 'skipped' in record:
    return f'{name} skipped: {record["skipped"]}'
  return f'{name} failed ({record["error"]})'


def _ratio(a, b):
  return a / b if a is not None and b else None


def ratio_lines(records) -> list[str]:
  """The RATIOS table, for every pair with a side in `records`; a missing side says why."""
  by_case = {r['case']: r for r in records}
  lines = ['Ratios (A / B; below 1: A is faster or smaller):', '',
           '| ratio | A | B | A step_ms | B step_ms | A / B step | A / B peak memory |',
           '|---|---|---|---|---|---|---|']
  rows = 0
  for label, name_a, name_b in RATIOS:
    if name_a not in by_case and name_b not in by_case:
      continue
    rows += 1
    a, b = by_case.get(name_a), by_case.get(name_b)
    sides = [f'{n} [{r["kernels"]}]' if r and r.get('kernels') else n
             for n, r in ((name_a, a), (name_b, b))]
    missing = [_why_not(n, by_case) for n, r in ((name_a, a), (name_b, b))
               if r is None or not succeeded(r)]
    if missing:
      lines.append(f'| {label} | {" | ".join(sides)} | - | - | not measured: '
                   f'{"; ".join(missing)} | - |')
      continue
    figures = (a['step_ms'], b['step_ms'], _ratio(a['step_ms'], b['step_ms']),
               _ratio(a.get('peak_memory_gb'), b.get('peak_memory_gb')))
    lines.append(f'| {label} | {" | ".join(sides)} | {" | ".join(map(cell, figures))} |')
  return lines if rows else []


def _platform_lines(records) -> list[str]:
  jax_run = next((r for r in records if succeeded(r) and r.get('jax_version')), None)
  torch_run = next((r for r in records if succeeded(r) and r.get('torch_version')), None)
  lines = []
  if jax_run:
    lines.append(f'JAX: {jax_run["device_kind"]} ({jax_run["platform"]}, '
                 f'{jax_run["device_count"]} device(s)), jax {jax_run["jax_version"]}; peak '
                 f'memory from {jax_run["peak_memory_source"]}.')
  if torch_run:
    lines.append(f'PyTorch: {torch_run["device_kind"]} ({torch_run["platform"]}), torch '
                 f'{torch_run["torch_version"]}; cudnn.benchmark on, TF32 convolutions '
                 f'{torch_run["cudnn_allow_tf32"]}, TF32 matmuls '
                 f'{torch_run["matmul_allow_tf32"]}; peak memory from '
                 f'{torch_run["peak_memory_source"]}.')
  return lines


def markdown(records, goals, machine_lines=()) -> str:
  """The results as a Markdown table; the machine, the goals, the ratios, the skipped and the
  failed cases under it."""
  header = [f'| {" | ".join(COLUMNS)} |', '|' + '---|' * len(COLUMNS)]
  rows = [f'| {" | ".join(cell(r.get(c)) for c in COLUMNS)} |' for r in records if succeeded(r)]
  lines = header + rows + [''] + list(machine_lines) + _platform_lines(records) + [''] + goals
  ratios = ratio_lines(records)
  if ratios:
    lines += [''] + ratios
  skipped = [f'- {r["case"]}: {r["skipped"]}' for r in records if 'skipped' in r]
  if skipped:
    lines += ['', 'Skipped:'] + skipped
  for r in records:
    if 'error' in r:
      lines += ['', f'Case {r["case"]} failed ({r["error"]}); end of its log:', '```',
                r['log_tail'].rstrip(), '```']
  return '\n'.join(lines) + '\n'
