"""Times the PyTorch reference's train (or eval) step alone, on one device: the suite's torch cases.

  python experiments/benchmark_torch_device.py --config=configs/nyudv2_refinenet101.py \\
      [--device=cuda|cpu] [--precision=fp32|bf16] [--steps=20 --warmup=3] [--mode=train|eval] \\
      [--threads=N]

The step is experiments/benchmark_torch.py's (tests/torch_reference.py's RefineNet, the config's
depth, widths, classes, modalities and frozen BatchNorm; the summed cross-entropies of the M + 1
outputs after a bilinear resize; SGD with the paper's momentum, weight decay and two learning
rates) on the config's batch and crop, here on --device:

- --precision=fp32: float32 weights and activations, NCHW (the 197 ms fp32 reference). PyTorch's
  own defaults hold: cuDNN convolutions may use TF32 (torch.backends.cudnn.allow_tf32), as
  XLA's float32 convolutions do on the same GPUs; the flags are reported.
- --precision=bf16: the forward pass and the loss under torch.autocast(bfloat16), float32
  weights, gradients and optimiser, model and images in channels_last (the 149 ms reference).

experiments/benchmark_torch.py compares both frameworks side by side on a CPU; this script is the
PyTorch half on an accelerator, run by experiments/benchmark_suite.py in a process of its own
beside the JAX cases (experiments/benchmark.py), so that each framework has the device to itself.
cudnn.benchmark is on (fixed shapes; its autotuning happens in the warmup steps). Every timed
step ends in torch.cuda.synchronize(). Reported: the median step over --steps steps after
--warmup steps, images per second, the set-up time (model, weights, transfer: PyTorch compiles
nothing, so compile_s is null), and peak memory (torch.cuda.max_memory_allocated, everything the
process holds on the GPU, as benchmark.py's memory_stats peak; null on a CPU). The last line is
one JSON object. Without torch, or with --device=cuda and no CUDA device for torch, that object
is {"skipped": reason} and the exit status 0: the suite records the case as skipped.
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from asymfusion_jax import config_lib  # pylint: disable=g-import-not-at-top
from experiments import benchmark_torch  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

# --precision -> (autocast dtype name or None, channels_last, compute_dtype as reported).
PRECISIONS = {'fp32': (None, False, 'float32'), 'bf16': ('bfloat16', True, 'bfloat16')}
# config.task -> the step builder that takes a device, a layout and an autocast dtype.
DEVICE_STEPS = {'segmentation': (benchmark_torch.torch_segmentation_step,
                                 benchmark_torch.segmentation_batch)}


def run(config, device: str = 'cuda', precision: str = 'bf16', mode: str = 'train',
        steps: int = 20, warmup: int = 3, seed: int = 0, threads: int = 0) -> dict:
  """Builds and times the step; every reported figure as a flat dict, or {'skipped': reason}."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {'skipped': 'torch not installed'}
  if torch.device(device).type == 'cuda' and not torch.cuda.is_available():
    return {'skipped': f'torch {torch.__version__} has no CUDA device'}
  if config.task not in DEVICE_STEPS:
    raise ValueError(f'config.task={config.task!r}: this script times {sorted(DEVICE_STEPS)}')
  build, make_batch = DEVICE_STEPS[config.task]
  autocast, channels_last, compute_dtype = PRECISIONS[precision]
  cuda = torch.device(device).type == 'cuda'
  torch.backends.cudnn.benchmark = True
  if threads:
    torch.set_num_threads(threads)
  start = time.perf_counter()
  step = build(torch, config, mode, make_batch(config, mode, seed), device=device,
               channels_last=channels_last,
               autocast_dtype=getattr(torch, autocast) if autocast else None)
  setup_s = time.perf_counter() - start

  def synced_step():
    step()
    if cuda:
      torch.cuda.synchronize()

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  benchmark_torch.timed(synced_step, warmup)
  times = [wall for wall, _ in benchmark_torch.timed(synced_step, steps)]
  step_s = statistics.median(times)
  peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
  return {
      'step_ms': step_s * 1e3, 'images_per_s': config.batch_size / step_s, 'compile_s': None,
      'peak_memory_gb': peak, 'setup_s': setup_s, 'mode': mode, 'framework': 'torch',
      'step_ms_min': min(times) * 1e3, 'step_ms_max': max(times) * 1e3, 'steps': steps,
      'warmup': warmup,
      'peak_memory_source': 'torch.cuda.max_memory_allocated' if cuda else 'unavailable',
      'batch_size': config.batch_size, 'crop_size': config.crop_size,
      'modalities': len(config.modalities), 'task': config.task,
      'model': 'torch_reference.RefineNet', 'depth': config.model.get('depth'),
      'compute_dtype': compute_dtype, 'autocast': autocast, 'channels_last': channels_last,
      'frozen_bn': bool(config.get('frozen_bn', False)), 'platform': torch.device(device).type,
      'device_kind': (torch.cuda.get_device_name() if cuda
                      else benchmark_torch.cpu_info()['cpu_model']),
      'torch_version': torch.__version__, 'torch_threads': torch.get_num_threads(),
      'cudnn_benchmark': True, 'cudnn_allow_tf32': bool(torch.backends.cudnn.allow_tf32),
      'matmul_allow_tf32': bool(torch.backends.cuda.matmul.allow_tf32),
  }


def define_flags() -> None:
  config_lib.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
  flags.DEFINE_string('device', 'cuda', "torch device: 'cuda' or 'cpu'.")
  flags.DEFINE_enum('precision', 'bf16', sorted(PRECISIONS),
                    'fp32, or bf16 (autocast to bfloat16 + channels_last).')
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Time the train step or the eval step.')
  flags.DEFINE_integer('steps', 20, 'Timed steps; the median is reported.', lower_bound=1)
  flags.DEFINE_integer('warmup', 3, 'Untimed steps first (cuDNN autotuning).', lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic batch.')
  flags.DEFINE_integer('threads', 0, "PyTorch's CPU threads; 0: its default.", lower_bound=0)
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  result = run(FLAGS.config, FLAGS.device, FLAGS.precision, FLAGS.mode, FLAGS.steps,
               FLAGS.warmup, FLAGS.seed, FLAGS.threads)
  print(result.get('skipped') or (f"torch {result['torch_version']} on {result['device_kind']}: "
                                  f"{result['step_ms']:.1f} ms per {result['mode']} step"),
        flush=True)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
