"""The device check in one command: the three models' paper settings, item 1's kernel A/B and the
PyTorch reference on the same device, within a time budget that fits a device lease.

  python experiments/benchmark_suite.py --out=DIR [--logs=LOGS] [--peak_tflops=989]
      [--budget_s=500] [--cases=paper_bf16,torch_bf16,...] [--batch_sizes=2,4,8,12]
      [--config=configs/nyudv2_refinenet101.py]
      [--deeplab_config=configs/cityscapes_deeplab_xception65.py]
      [--translation_config=configs/taskonomy_shade_normal_edge.py]
      [--refinenet_arg=--config.x=y ...] [--deeplab_arg=...] [--translation_arg=...]
      [--torch_arg=...] [--torch_device=cuda|cpu] [-- --config.key=value ...]

Each case is one run of experiments/benchmark.py (JAX: the library's own jitted, donated train
step; experiments/benchmark.py says what it reports) or of experiments/benchmark_torch_device.py
(the PyTorch reference RefineNet, tests/torch_reference.py) in a process of its own, so that
compile time, the allocator's peak memory and XLA flags belong to that case alone. Each model's
cases run its config as it is: RefineNet-101 on NYUDv2 (batch 6, crop 500), DeepLabv3+ /
Xception-65 on Cityscapes (batch 8, crop 769), the U-Net translating Shade, Normal, Edge -> RGB
on Taskonomy (batch 1, 256 px); the case sets the dtype, the kernels and the steps.

The default cases, in the order they run, with the wall time each is expected to take on one
H100 (estimates, not measurements: no accelerator has run the suite yet; a JAX case is ~10 s of
start-up, the state's initialisation, its compile, budgeted at the 60 s goal for RefineNet-101,
and the timed steps):

  case                     est. s  what it answers
  paper_bf16               75   the paper's goal case first: RefineNet-101 bfloat16 train step
                                against <= 50 ms, compile < 60 s, peak <= 12.9 GB; HLO to LOGS/hlo
  torch_bf16               35   the PyTorch reference on the same card, bf16 autocast +
                                channels_last (149 ms on an H200): the JAX/PyTorch ratio
  kernels_cpu              60   RefineNet with config.model.kernels='cpu' (the CPU rewrites):
                                is 'auto' (= 'xla' on a GPU, so paper_bf16 is that arm) right here?
  deeplab_bf16             80   DeepLab's paper setting (batch 8, crop 769), never measured
  translation_bf16         35   the translation setting (256 px, batch 1), never measured
  translation_kernels_cpu  35   the U-Net's kernel A/B (its 4x4 transposed convolution)
  paper_fp32               55   RefineNet-101 float32 (197 ms PyTorch fp32 reference)
  torch_fp32               30   the PyTorch reference in float32: the fp32 ratio
  scan_blocks              60   RefineNet-101 bf16 with config.model.scan_blocks (identical
                                blocks as nn.scan): compile time and step against paper_bf16
                                (on the CPU it saves little compile time and slows the step)

The order: what a lease must not end without comes first (the issue's goal, then the same-card
PyTorch ratio that judges it), then the open questions (whether 'auto' is right on a GPU, the two
settings never measured), then the fp32 pair (a reference figure exists), then whether scanning
the blocks pays on an accelerator. They add up to 465 s of the default --budget_s=500, which
leaves 40 s of a 9-minute window for the Python start and margin. More cases, not run by
default: deeplab_kernels_cpu (80 s: DeepLab has no CPU rewrite, so the same program again, the
run-to-run noise of the A/B ratios), eval_bf16 (the eval step),
batch_sweep (bfloat16 at every --batch_sizes value, cases batch_<B>), remat_backbone and
remat_all (model.remat), command_buffers_off and triton_gemm_off (XLA_FLAGS
--xla_gpu_enable_command_buffer= and --xla_gpu_enable_triton_gemm=false), each ~55 s.

A case starts only while its estimate (at least --min_case_s) is left of --budget_s, else it is
skipped; a case still running at the end of the budget is stopped. Ratios (results.md): kernels
xla / cpu of each model, and JAX / PyTorch per precision (JAX bf16 against PyTorch bf16 autocast
+ channels_last, JAX fp32 against PyTorch fp32), of the median step time and the peak memory.

The PyTorch cases run on the device JAX ran on (--torch_device, default: the platform of the
first JAX result, else a probe: 'cuda' for a GPU, 'cpu' for a CPU); without torch, or without a
CUDA device for it, they are recorded as skipped with the reason, and the suite goes on.

Every finished or skipped case is appended at once to DIR/results.jsonl (emptied when the suite
starts; a failed case is kept with its return code and the end of its log), and DIR/results.md
(the table, the machine, the goals, the ratios, the skipped and failed cases) is rewritten after
every case: what is written survives a suite that is killed. Each case's full output goes to
LOGS/<case>.log (--logs, default DIR), paper_bf16's HLO to LOGS/hlo. Arguments after
`--` go to every case, then --<model>_arg ones to that model's cases (--refinenet_arg also to the
PyTorch cases, which build the RefineNet config; --torch_arg to those alone), then the case's own,
which win. JAX cases get XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 unless it is set (each case has the
device to itself). The exit status is 1 if any case failed.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from experiments import benchmark_suite_report as report  # pylint: disable=g-import-not-at-top

BF16 = ('--config.compute_dtype=bfloat16',)
FP32 = ('--config.compute_dtype=float32',)
LONG = ('--steps=20', '--warmup=3')
SHORT = ('--steps=10', '--warmup=2')
MANY = ('--steps=30', '--warmup=5')  # The U-Net's step is short: more of them, as cheap.
CPU_KERNELS = ('--config.model.kernels=cpu',)


class Case(NamedTuple):
  model: str  # A key of MODELS.
  args: tuple[str, ...]  # The case's own arguments ({out} and {log_dir} are filled in).
  xla_flags: str  # Appended to XLA_FLAGS.
  estimate_s: float  # Expected wall time on one H100 (the docstring's table).


# The flags naming each model's config file, and their defaults: the paper settings.
CONFIGS = {'config': 'configs/nyudv2_refinenet101.py',
           'deeplab_config': 'configs/cityscapes_deeplab_xception65.py',
           'translation_config': 'configs/taskonomy_shade_normal_edge.py'}


class Model(NamedTuple):
  script: str  # In experiments/.
  config_flag: str  # The flag naming its config file (a key of CONFIGS).
  arg_flags: tuple[str, ...]  # The flags of its extra arguments.
  torch: bool  # PyTorch: runs on --torch_device, or is skipped; else JAX (gets --peak_tflops).


MODELS = {
    'refinenet': Model('benchmark.py', 'config', ('refinenet_arg',), False),
    'deeplab': Model('benchmark.py', 'deeplab_config', ('deeplab_arg',), False),
    'translation': Model('benchmark.py', 'translation_config', ('translation_arg',), False),
    'torch': Model('benchmark_torch_device.py', 'config', ('refinenet_arg', 'torch_arg'), True),
}

CASES = {
    'paper_bf16': Case('refinenet', BF16 + LONG + ('--dump_hlo={log_dir}/hlo',), '', 75),
    'torch_bf16': Case('torch', ('--precision=bf16',) + LONG, '', 35),
    'kernels_cpu': Case('refinenet', BF16 + SHORT + CPU_KERNELS, '', 60),
    'deeplab_bf16': Case('deeplab', BF16 + SHORT, '', 80),
    'translation_bf16': Case('translation', BF16 + MANY, '', 35),
    'translation_kernels_cpu': Case('translation', BF16 + MANY + CPU_KERNELS, '', 35),
    'paper_fp32': Case('refinenet', FP32 + SHORT, '', 55),
    'torch_fp32': Case('torch', ('--precision=fp32',) + SHORT, '', 30),
    'scan_blocks': Case('refinenet', BF16 + SHORT + ('--config.model.scan_blocks=True',), '', 60),
    'deeplab_kernels_cpu': Case('deeplab', BF16 + SHORT + CPU_KERNELS, '', 80),
    'eval_bf16': Case('refinenet', BF16 + LONG + ('--mode=eval',), '', 55),
    'remat_backbone': Case('refinenet', BF16 + SHORT + ('--config.model.remat=backbone',), '',
                           55),
    'remat_all': Case('refinenet', BF16 + SHORT + ('--config.model.remat=all',), '', 55),
    'command_buffers_off': Case('refinenet', BF16 + SHORT, '--xla_gpu_enable_command_buffer=',
                                55),
    'triton_gemm_off': Case('refinenet', BF16 + SHORT, '--xla_gpu_enable_triton_gemm=false', 55),
}
DEFAULT_CASES = ('paper_bf16', 'torch_bf16', 'kernels_cpu', 'deeplab_bf16', 'translation_bf16',
                 'translation_kernels_cpu', 'paper_fp32', 'torch_fp32', 'scan_blocks')
# jax.Device.platform -> the torch device of the same hardware.
TORCH_DEVICES = {'gpu': 'cuda', 'cpu': 'cpu'}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; not at import time, so that tests can import this module."""
  flags.DEFINE_string('out', None, 'Directory for results.jsonl and results.md.')
  flags.DEFINE_string('logs', None, "Directory for each case's log and the HLO; default: --out.")
  for name, model in (('config', 'RefineNet (and PyTorch)'), ('deeplab_config', 'DeepLab'),
                      ('translation_config', 'translation')):
    flags.DEFINE_string(name, CONFIGS[name], f'Config file of the {model} cases.')
  for model in ('refinenet', 'deeplab', 'translation', 'torch'):
    flags.DEFINE_multi_string(f'{model}_arg', [], f'One more argument of the {model} cases.')
  flags.DEFINE_list('cases', list(DEFAULT_CASES),
                    f'Cases in order: {sorted(CASES)} or batch_sweep.')
  flags.DEFINE_list('batch_sizes', ['2', '4', '8', '12'], 'Batch sizes of batch_sweep (bfloat16).')
  flags.DEFINE_float('budget_s', 500, 'Seconds for the whole suite.')
  flags.DEFINE_float('min_case_s', 20, 'A case starts only if max(this, its estimate) is left.')
  flags.DEFINE_float('peak_tflops', None, 'Passed to benchmark.py (989: H100 SXM dense bf16).')
  flags.DEFINE_string('torch_device', '', "The PyTorch cases' device; '': the one JAX ran on.")
  flags.DEFINE_float('goal_step_ms', 50, 'Goal for the bfloat16 paper-setting train step.')
  flags.DEFINE_float('goal_compile_s', 60, 'Goal for its compile time.')
  flags.DEFINE_float('goal_peak_gb', 12.9, 'Goal for its peak device memory.')
  flags.mark_flag_as_required('out')


def expand_cases(names, batch_sizes) -> list[tuple[str, Case]]:
  """[(case name, Case)] in order; batch_sweep becomes batch_<B>."""
  cases = []
  for name in names:
    if name == 'batch_sweep':
      for b in batch_sizes:
        if not str(b).isdigit() or int(b) < 1:
          raise app.UsageError(f'--batch_sizes: {b!r} is not a positive integer')
        cases.append((f'batch_{b}',
                      Case('refinenet', BF16 + SHORT + (f'--config.batch_size={b}',), '', 55)))
    elif name in CASES:
      cases.append((name, CASES[name]))
    else:
      raise app.UsageError(f'--cases: unknown case {name!r}; choose from '
                           f'{sorted(CASES) + ["batch_sweep"]}')
  return cases


def case_command(case: Case, values: dict, passthrough, out: str, log_dir: str) -> list[str]:
  """The case's command line. values: flag name -> value (--config, --deeplab_arg, ...)."""
  model = MODELS[case.model]
  args = [f'--config={values[model.config_flag]}', *passthrough]
  for name in model.arg_flags:
    args += values[name]
  if not model.torch and values.get('peak_tflops'):
    args.append(f'--peak_tflops={values["peak_tflops"]}')
  # The case's own arguments come last, so that they win over the common ones.
  args += [a.format(out=out, log_dir=log_dir) for a in case.args]
  return [sys.executable, os.path.join(_REPO, 'experiments', model.script), *args]


def run_case(name, command, xla_flags, log_dir, timeout_s) -> dict:
  """Runs one case; its JSON line plus the case's name, or the failure."""
  env = dict(os.environ)
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  if xla_flags:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + xla_flags).strip()
  log_path = os.path.join(log_dir, f'{name}.log')
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


def probe_platform() -> str | None:
  """The platform JAX runs on here, from a process of its own that takes no device memory."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  try:
    proc = subprocess.run([sys.executable, '-c', 'import jax; print(jax.devices()[0].platform)'],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
  except subprocess.TimeoutExpired:
    return None
  return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout else None


def torch_device(records, chosen: str, probe=probe_platform) -> tuple[str | None, str]:
  """(torch device, '') for the PyTorch cases, or (None, why they are skipped)."""
  if chosen:
    return chosen, ''
  platform = next((r['platform'] for r in records if r.get('jax_version')), None) or probe()
  if platform in TORCH_DEVICES:
    return TORCH_DEVICES[platform], ''
  return None, f'no PyTorch device for the JAX platform {platform!r}'


def machine() -> list[str]:
  """The date, the GPUs and the driver (nvidia-smi, where there is one) and the commit."""
  lines = [f'Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}']
  for label, command in (('GPU (name, driver, memory)',
                          ['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                           '--format=csv,noheader']),
                         ('Commit', ['git', '-C', _REPO, 'rev-parse', 'HEAD'])):
    if shutil.which(command[0]):
      proc = subprocess.run(command, capture_output=True, text=True, check=False)
      if proc.returncode == 0 and proc.stdout.strip():
        lines.append(f'{label}: {"; ".join(proc.stdout.strip().splitlines())}')
  return lines


def write_markdown(out, records, machine_lines) -> None:
  goals = report.goal_lines(records, FLAGS.goal_step_ms, FLAGS.goal_compile_s,
                            FLAGS.goal_peak_gb)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(report.markdown(records, goals, machine_lines))


def main(argv):
  passthrough = argv[1:]
  out = os.path.abspath(FLAGS.out)
  log_dir = os.path.abspath(FLAGS.logs or FLAGS.out)
  os.makedirs(out, exist_ok=True)
  os.makedirs(log_dir, exist_ok=True)
  cases = expand_cases(FLAGS.cases, FLAGS.batch_sizes)
  values = {name: FLAGS[name].value for name in (
      *CONFIGS, 'refinenet_arg', 'deeplab_arg', 'translation_arg', 'torch_arg', 'peak_tflops')}
  probe = functools.cache(probe_platform)  # At most once a suite.
  deadline = time.monotonic() + FLAGS.budget_s
  machine_lines = machine()
  records = []
  open(os.path.join(out, 'results.jsonl'), 'w').close()  # This run's results only.
  write_markdown(out, records, machine_lines)
  for name, case in cases:
    left = deadline - time.monotonic()
    needed = max(FLAGS.min_case_s, case.estimate_s)
    command = case_command(case, values, passthrough, out, log_dir)
    if left < needed:
      record = {'case': name, 'skipped': f'{left:.0f} s of the budget left, needs ~{needed:.0f} s'}
    elif MODELS[case.model].torch:
      device, why = torch_device(records, FLAGS.torch_device, probe)
      record = ({'case': name, 'skipped': why} if device is None else
                run_case(name, command + [f'--device={device}'], case.xla_flags, log_dir, left))
    else:
      record = run_case(name, command, case.xla_flags, log_dir, left)
    records.append(record)
    with open(os.path.join(out, 'results.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')
    write_markdown(out, records, machine_lines)
    print(f'{name}: {report.status(record)}', flush=True)
  with open(os.path.join(out, 'results.md')) as f:
    print(f.read(), end='')
  if any('error' in r for r in records):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
