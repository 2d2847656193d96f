"""Times the library's own train (or eval) step on synthetic batches of a config's shapes.

  python experiments/benchmark.py --config=configs/nyudv2_refinenet101.py \\
      [--config.batch_size=6 --config.crop_size=500 --config.compute_dtype=bfloat16] \\
      [--mode=train|eval] [--steps=20 --warmup=3] [--peak_tflops=989] [--dump_hlo=/tmp/hlo] \\
      [--compile_only]

The step is the one training runs (asymfusion_jax.step_program.build_step, through the config
task's Task.build_step): for segmentation the jitted, donated train step sharded over the
('data',) mesh with the recipe's optimiser, or, for --mode=eval, the step the Evaluator runs; a
translation config (config.task='translation') times its discriminator + generator train step or
the generator's eval step:

  python experiments/benchmark.py --config=configs/taskonomy_shade_depth.py [--config.batch_size=4]

It is lowered and compiled once ahead of time, so that compile time is measured on its own and
the timed steps run exactly the executable training would run; every timed step ends in
block_until_ready.

Both modes use the config's batch_size and a square crop_size image, so that their figures
compare (the real evaluation runs eval_batch_size full-resolution images).

Reported: compile time (`compile_s` = tracing and lowering, `lower_s`, plus XLA's compilation,
`xla_compile_s`; `compile_cpu_s`, the CPU seconds they took); the median step time over --steps
steps after --warmup steps; images per
second (B images of M modalities each count as B); the process's CPU time per step
(`process_cpu_s_per_step`, steadier than wall time on a CPU shared with other jobs); peak
memory; XLA's FLOP count of the compiled step and the FLOP/s achieved, as a fraction of
--peak_tflops when given. A table goes to stdout and the last line is one JSON object
(`compile_s`, `step_ms`, `images_per_s`, `tflop_per_step`, `peak_memory_gb`, and more), so
scripts read `tail -n 1`.

Peak memory comes from the device allocator (memory_stats()['peak_bytes_in_use']) where the
backend has one (GPU, TPU). The CPU backend has none, so there the figure is the compiled
step's own buffer plan: arguments + outputs + temporaries - donated (aliased) bytes, which is
the step's peak footprint as XLA planned it, not a measurement. `peak_memory_source` says
which one was used; `planned_memory_gb` is the buffer plan on every backend. The allocator's
peak counts everything the process holds on the device (the train state, the batch), like
PyTorch's max_memory_allocated does.

--compile_only stops after compiling: compile time, FLOPs and the buffer plan of a setting too
slow to run where you are (the paper setting on a CPU). Timing figures are then null.

--dump_hlo=DIR writes the step's StableHLO as lowered (what the program asks for, before any
backend rewrites: dtypes of every convolution as the model requested them) and the optimised
HLO the backend will run, each with a summary (asymfusion_jax.hlo_summary: convolutions by dtype
and batch size, transposes, dtype conversions, unfused elementwise ops) that is also printed.
"""

import json
import math
import os
import statistics
import sys
import time

from absl import app, flags
import jax

# Runnable as a script from the repository root without installing anything.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asymfusion_jax import config_lib, hlo_summary, logger, models  # pylint: disable=g-import-not-at-top
from asymfusion_jax.models import kernels  # pylint: disable=g-import-not-at-top
from asymfusion_jax.step_program import build_step  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

_JSON_KEYS = ('compile_s', 'step_ms', 'images_per_s', 'tflop_per_step', 'peak_memory_gb')


def _as_dict(analysis):
  """cost_analysis() is a dict in current JAX and a one-element list in older releases."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def planned_memory(compiled) -> float | None:
  """Bytes of XLA's buffer plan for the step: arguments + outputs + temporaries - donated."""
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if mem is None:
    return None
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)


def peak_memory(compiled, ran: bool) -> tuple[float | None, str]:
  """(peak bytes, source): the allocator's peak where there is one, else XLA's buffer plan."""
  try:
    stats = jax.local_devices()[0].memory_stats() if ran else None
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'peak_bytes_in_use' in stats:
    return float(stats['peak_bytes_in_use']), 'memory_stats.peak_bytes_in_use'
  planned = planned_memory(compiled)
  if planned is None:
    return None, 'unavailable'
  return planned, 'memory_analysis (arguments + outputs + temporaries - aliased)'


def run_benchmark(config, mode: str = 'train', steps: int = 10, warmup: int = 2,
                  peak_tflops: float | None = None, dump_hlo: str | None = None,
                  seed: int = 0, compile_only: bool = False) -> dict:
  """Compiles and times the step; returns every reported figure as a flat dict."""
  step, args = build_step(config, mode, seed, abstract=compile_only)

  start, cpu_start = time.perf_counter(), time.process_time()
  lowered = step.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  xla_s = time.perf_counter() - start
  compile_cpu_s = time.process_time() - cpu_start

  cost = _as_dict(compiled.cost_analysis())
  flops = float(cost.get('flops', float('nan')))

  hlo = {}
  if dump_hlo:
    os.makedirs(dump_hlo, exist_ok=True)
    stablehlo_text, optimised_text = lowered.as_text(), compiled.as_text()
    hlo = {'lowered': hlo_summary.summarize_stablehlo(stablehlo_text),
           'optimised': hlo_summary.summarize_hlo(optimised_text)}
    for name, text in (('lowered.stablehlo.mlir', stablehlo_text),
                       ('optimised.hlo.txt', optimised_text),
                       ('summary.json', json.dumps(hlo, indent=2))):
      with open(os.path.join(dump_hlo, f'{mode}_{name}'), 'w') as f:
        f.write(text)

  def run_one(args):
    out = compiled(*args)
    jax.block_until_ready(out)
    # The train step donates its state: the next step must use the state it returned.
    return (out[0], args[1]) if mode == 'train' else args

  times, cpu_times = [], []
  if not compile_only:
    for _ in range(warmup):
      args = run_one(args)
    for _ in range(steps):
      start, cpu_start = time.perf_counter(), time.process_time()
      args = run_one(args)
      times.append(time.perf_counter() - start)
      cpu_times.append(time.process_time() - cpu_start)

  step_s = statistics.median(times) if times else None
  memory, memory_source = peak_memory(compiled, ran=bool(times))
  planned = planned_memory(compiled)
  achieved = flops / step_s / 1e12 if step_s else None
  device = jax.local_devices()[0]
  result = {
      'compile_s': lower_s + xla_s,
      'step_ms': step_s * 1e3 if step_s else None,
      'images_per_s': config.batch_size / step_s if step_s else None,
      'tflop_per_step': flops / 1e12,
      'peak_memory_gb': memory / 1e9 if memory is not None else None,
      'mode': mode,
      'lower_s': lower_s,
      'xla_compile_s': xla_s,
      # CPU seconds of this process's threads to lower and compile (steadier than compile_s on
      # a CPU shared with other jobs).
      'compile_cpu_s': compile_cpu_s,
      'step_ms_min': min(times) * 1e3 if times else None,
      'step_ms_max': max(times) * 1e3 if times else None,
      # CPU seconds of all this process's threads per step (median). On a CPU backend shared
      # with other jobs this moves less than wall time; on an accelerator it is host time.
      'process_cpu_s_per_step': statistics.median(cpu_times) if cpu_times else None,
      'steps': len(times),
      'warmup': warmup if times else 0,
      'achieved_tflops': achieved,
      'peak_fraction': achieved / peak_tflops if peak_tflops and achieved else None,
      'peak_memory_source': memory_source,
      'planned_memory_gb': planned / 1e9 if planned is not None else None,
      'bytes_accessed_gb': float(cost.get('bytes accessed', float('nan'))) / 1e9,
      'batch_size': config.batch_size,
      'crop_size': config.crop_size,
      'modalities': len(config.modalities),
      'task': config.task,
      'model': config.model.name,
      'depth': config.model.get('depth'),
      'compute_dtype': str(models.resolve_compute_dtype(config.compute_dtype)),
      'frozen_bn': bool(config.get('frozen_bn', False)),
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'jax_version': jax.__version__,
      'remat': str(config.model.get('remat', 'none')),
      # The variant config.model.kernels ran here ('auto' resolved for this platform).
      'kernels': kernels.lowered(config.model.get('kernels', 'auto'), device.platform),
      'scan_blocks': bool(config.model.get('scan_blocks', False)),
  }
  if hlo:
    result['hlo'] = hlo
  return result


def format_table(result: dict) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f'{v:.4g}' if math.isfinite(v) else str(v)
    return str(v)
  rows = [(k, fmt(v)) for k, v in result.items() if k != 'hlo']
  width = max(len(k) for k, _ in rows)
  lines = [f'{k:<{width}}  {v}' for k, v in rows]
  if 'hlo' in result:
    for stage, summary in result['hlo'].items():
      lines.append(f'hlo ({stage}):')
      lines += [f'  {k:<{width - 2}}  {v}' for k, v in summary.items()]
  return '\n'.join(lines)


def define_flags() -> None:
  """Defines the command-line flags.

  Not at import time, so that tests can import this module beside others that define --config
  (asymfusion_jax.main).
  """
  config_lib.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                  lock_config=True)
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Time the train step or the eval step.')
  flags.DEFINE_integer('steps', 10, 'Timed steps; the median is reported.', lower_bound=1)
  flags.DEFINE_integer('warmup', 2, 'Untimed steps run before the timed ones.', lower_bound=0)
  flags.DEFINE_float('peak_tflops', None,
                     'Peak TFLOP/s of the device for the dtype in use (e.g. 989 for H100 SXM '
                     'dense bf16); the achieved fraction is reported when given.')
  flags.DEFINE_string('dump_hlo', None, 'Directory to write the lowered and optimised HLO to.')
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic batch.')
  flags.DEFINE_bool('compile_only', False,
                    'Lower and compile without running a step: compile time, FLOPs, the memory '
                    'plan and --dump_hlo of settings too slow (or too large) to run on this '
                    'machine, e.g. the paper setting on a CPU. Timing figures are null.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  logger.setup_cli_logging()
  result = run_benchmark(FLAGS.config, FLAGS.mode, FLAGS.steps, FLAGS.warmup,
                         FLAGS.peak_tflops, FLAGS.dump_hlo, FLAGS.seed, FLAGS.compile_only)
  print(format_table(result), flush=True)
  print(json.dumps({k: result[k] for k in _JSON_KEYS} | result), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
