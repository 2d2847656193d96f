"""Times the library's step and the PyTorch reference's same step side by side, on the CPU.

  python experiments/benchmark_torch.py --config=configs/nyudv2_refinenet101.py \\
      --config.batch_size=2 --config.crop_size=128 [--mode=train|eval] [--rounds=3 --steps=2]

Both run on the same machine in the same script, alternating: round r times --steps steps of
JAX, then --steps steps of PyTorch, so that other jobs on a shared machine weigh on both alike.
Each framework lives in a worker process of its own (spawned once, so JAX compiles once and
neither framework's idle thread pool spins while the other one runs); the workers are given the
same synthetic batch (the task's Task.synthetic_batch).

The JAX side is experiments/benchmark.py's step (asymfusion_jax.step_program.build_step): the
library's jitted, donated train step (or eval step) with its optimiser. The PyTorch side is the
reference model the tests build, with the same shapes and the same work:
- segmentation: tests/torch_reference.py's RefineNet (the depth's blocks, the config's widths,
  classes and modalities), frozen BatchNorm (BatchNorm modules in eval mode, dropout on, as
  config.frozen_bn), the sum of the M + 1 outputs' cross-entropies after a bilinear resize to the
  label size, and torch.optim.SGD with the paper's momentum, weight decay and the two learning
  rates (encoder, decoder); eval: the forward pass under no_grad, a bicubic resize of the logits
  to the label size and the argmax (the JAX eval step also sums confusion matrices);
- translation: tests/torch_unet.py's U-Net generator (with the channel shuffle + pixel shift
  fusion after the InstanceNorm of config.model.fusion_blocks) and PatchGAN discriminator, one
  D update then one G update from one generator forward, BCE-with-logits and L1 losses, Adam;
  eval: the generator's forward under no_grad.

PyTorch gets as many threads as the JAX CPU client uses (the cores this process may run on),
unless --threads says otherwise. Reported per framework: the best and the median wall time per
step and the process CPU time per step (all threads of that worker; steadier than wall time
on a shared machine), then the ratios JAX / PyTorch (below 1: JAX is faster). The machine (CPU
model, cores, flags), the load average before and after, and the versions are printed too; the
last line is one JSON object with everything.
"""

import functools
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

from absl import app, flags
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from asymfusion_jax import config_lib  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

# Bottleneck blocks per stage of the ResNet depths the library builds (models/resnet.py).
_BLOCKS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def cpu_info() -> dict:
  """The CPU model, the cores this process may use, and the SIMD flags that matter here."""
  model, cpu_flags = platform.processor() or 'unknown', []
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model in ('unknown', 'x86_64', ''):
          model = value.strip()
        elif key.strip() == 'flags':
          cpu_flags = value.split()
          break
  except OSError:
    pass
  wanted = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_fp16', 'avx512_vnni', 'amx_tile',
            'amx_bf16')
  return {'cpu_model': model, 'cores': len(os.sched_getaffinity(0)),
          'cpu_flags': [f for f in wanted if f in cpu_flags]}


def load_average() -> float:
  return os.getloadavg()[0]


def segmentation_batch(config, mode: str, seed: int) -> dict:
  """Segmentation's Task.synthetic_batch of process 0, without importing JAX."""
  rng = np.random.default_rng([seed, 0])
  m, s, b = len(config.modalities), config.crop_size, config.batch_size
  k, ignore = config.model.num_classes, config.data.ignore_label
  label = rng.integers(0, k, size=(b, s, s), dtype=np.int32)
  label[rng.random((b, s, s)) < 0.1] = ignore
  return {'image': rng.standard_normal((m, b, s, s, 3), dtype=np.float32), 'label': label}


def translation_batch(config, mode: str, seed: int) -> dict:
  rng = np.random.default_rng([seed, 0])
  m, s, b = len(config.modalities), config.crop_size, config.batch_size
  return {'inputs': rng.uniform(-1, 1, (m, b, s, s, 3)).astype(np.float32),
          'target': rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# The two workers. Each builds its step once, then answers ('run', n) with n (wall, cpu) pairs.


def timed(step, n: int) -> list[tuple[float, float]]:
  times = []
  for _ in range(n):
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
  return times


def _serve(conn, step, info: dict, profile=None) -> None:
  conn.send(info)
  while True:
    message = conn.recv()
    if message[0] == 'stop':
      return
    if message[0] == 'profile':
      conn.send(profile(step) if profile else None)
      continue
    conn.send(timed(step, message[1]))


def _torch_profile(step) -> str:
  """torch.profiler's table of one step's ops, by self CPU time (the torch side's profile)."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    step()
  return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=20)


def _pin(cores: int | None) -> None:
  """Restricts this process to its first `cores` cores, before a framework sizes its threads."""
  if cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])


def jax_worker(conn, config_dict: dict, mode: str, seed: int, cores: int | None) -> None:
  _pin(cores)
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from asymfusion_jax import step_program  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(config_dict)
  start = time.perf_counter()
  fn, args = step_program.build_step(config, mode, seed)
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  state = {'args': args}

  def step():
    out = compiled(*state['args'])
    jax.block_until_ready(out)
    if mode == 'train':  # The state is donated: the next step takes the one returned.
      state['args'] = (out[0], state['args'][1])

  _serve(conn, step, {'version': jax.__version__, 'setup_s': compile_s,
                      'threads': len(os.sched_getaffinity(0))})


def torch_segmentation_step(torch, config, mode: str, batch: dict, device: str = 'cpu',
                             channels_last: bool = False, autocast_dtype=None):
  """The reference's step on `device`; channels_last: the model and the images in NHWC memory
  layout; autocast_dtype (e.g. torch.bfloat16): the forward pass and the loss under
  torch.autocast in that dtype (float32 weights, optimiser and gradients), as mixed-precision
  PyTorch training runs."""
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from tests import torch_reference  # pylint: disable=import-outside-toplevel
  m = len(config.modalities)
  model = torch_reference.RefineNet(
      blocks=_BLOCKS[config.model.depth], num_classes=config.model.num_classes,
      num_parallel=m, fusion=config.model.fusion, width=config.model.width,
      decoder_width=config.model.decoder_width)
  torch_reference.randomize_(model, torch.Generator().manual_seed(config.seed))
  layout = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(device, memory_format=layout)
  images = [torch.from_numpy(batch['image'][i]).permute(0, 3, 1, 2).to(device)
            .contiguous(memory_format=layout) for i in range(m)]
  label = torch.from_numpy(batch['label']).long().to(device)
  size = tuple(label.shape[-2:])
  autocast = functools.partial(torch.autocast, torch.device(device).type, dtype=autocast_dtype,
                               enabled=autocast_dtype is not None)
  if mode == 'eval':
    model.eval()

    def eval_step():
      with torch.no_grad(), autocast():
        outs = model(images)
        return [F.interpolate(o, size=size, mode='bicubic', align_corners=False).argmax(1)
                for o in outs]
    return eval_step

  model.train()
  if config.frozen_bn:
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.eval()
  encoder_names = ('conv1.', 'bn1.', 'layer1.', 'layer2.', 'layer3.', 'layer4.')
  encoder = [p for n, p in model.named_parameters() if n.startswith(encoder_names)]
  decoder = [p for n, p in model.named_parameters() if not n.startswith(encoder_names)]
  opt = torch.optim.SGD([{'params': encoder, 'lr': config.optim.lr_encoder[0]},
                         {'params': decoder, 'lr': config.optim.lr_decoder[0]}],
                        momentum=config.optim.momentum, weight_decay=config.optim.weight_decay)
  ignore = config.data.ignore_label

  def train_step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      outs = model(images)
      loss = sum(F.cross_entropy(F.interpolate(o, size=size, mode='bilinear',
                                               align_corners=False), label, ignore_index=ignore)
                 for o in outs)
    loss.backward()
    opt.step()
    return loss
  return train_step


def _torch_translation_step(torch, config, mode: str, batch: dict):
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from tests import torch_reference, torch_unet  # pylint: disable=import-outside-toplevel
  m = len(config.modalities)

  def fuse(xs):  # asymfusion_jax.fusion: channel shuffle + the next modality's pixel shift.
    shuffled = torch_reference.channel_shuffle(xs)
    return [shuffled[i] + torch_reference.pixel_shift(xs[(i + 1) % m]) for i in range(m)]

  torch.manual_seed(config.seed)
  generator = torch_unet.Generator(
      m, ngf=config.model.ngf, num_downs=config.model.num_downs,
      fusion_blocks=tuple(config.model.fusion_blocks) if config.model.fusion else (), fuse=fuse)
  discriminator = torch_unet.Discriminator(ndf=config.model.ndf)
  inputs = [torch.from_numpy(batch['inputs'][i]).permute(0, 3, 1, 2).contiguous()
            for i in range(m)]
  target = torch.from_numpy(batch['target']).permute(0, 3, 1, 2).contiguous()
  if mode == 'eval':
    generator.eval()

    def eval_step():
      with torch.no_grad():
        return generator(inputs)
    return eval_step

  generator.train()
  discriminator.train()
  betas = (config.optim.b1, config.optim.b2)
  g_opt = torch.optim.Adam(generator.parameters(), lr=config.optim.lr, betas=betas)
  d_opt = torch.optim.Adam(discriminator.parameters(), lr=config.optim.lr, betas=betas)
  bce = F.binary_cross_entropy_with_logits

  def train_step():
    outputs = generator(inputs)
    fakes = outputs[:m]
    # D: real pairs against fake pairs, G's outputs held fixed.
    d_opt.zero_grad(set_to_none=True)
    real = discriminator([torch.cat([x, target], 1) for x in inputs])
    fake = discriminator([torch.cat([x, f.detach()], 1) for x, f in zip(inputs, fakes)])
    d_loss = sum(0.5 * (bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)))
                 for r, f in zip(real, fake))
    d_loss.backward()
    d_opt.step()
    # G: fool the updated D, plus the weighted L1 of all M + 1 outputs.
    g_opt.zero_grad(set_to_none=True)
    judged = discriminator([torch.cat([x, f], 1) for x, f in zip(inputs, fakes)])
    adversarial = sum(bce(j, torch.ones_like(j)) for j in judged)
    l1 = sum(F.l1_loss(o, target) for o in outputs)
    (adversarial + config.optim.l1_weight * l1).backward()
    g_opt.step()
  return train_step


# config.task -> (the PyTorch step builder, the synthetic batch of process 0) of that task.
TORCH_STEPS = {'segmentation': (torch_segmentation_step, segmentation_batch),
               'translation': (_torch_translation_step, translation_batch)}


def torch_worker(conn, config_dict: dict, mode: str, seed: int, threads: int,
                 cores: int | None) -> None:
  _pin(cores)
  import ml_collections  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  config = ml_collections.ConfigDict(config_dict)
  start = time.perf_counter()
  torch_step, make_batch = TORCH_STEPS[config.task]
  step = torch_step(torch, config, mode, make_batch(config, mode, seed))
  _serve(conn, step, {'version': torch.__version__, 'setup_s': time.perf_counter() - start,
                      'threads': torch.get_num_threads(),
                      'mkldnn': bool(torch.backends.mkldnn.is_available())}, _torch_profile)


# ---------------------------------------------------------------------------------------------


def _summary(times: list[tuple[float, float]]) -> dict:
  walls, cpus = [t[0] for t in times], [t[1] for t in times]
  return {'step_ms_best': min(walls) * 1e3, 'step_ms_median': statistics.median(walls) * 1e3,
          'cpu_s_per_step_best': min(cpus), 'cpu_s_per_step_median': statistics.median(cpus),
          'steps': len(times)}


def compare(config, mode: str = 'train', rounds: int = 3, steps: int = 2, warmup: int = 1,
            seed: int = 0, threads: int | None = None, cores: int | None = None,
            torch_profile: bool = False) -> dict:
  """Runs both workers alternately; returns the per-framework summaries and the ratios.

  cores pins both workers to the first `cores` cores of this process (and PyTorch, unless
  `threads` is given, gets as many threads); None leaves them on all of them.
  """
  available = len(os.sched_getaffinity(0))
  cores = min(cores, available) if cores else None
  threads = threads or cores or available
  ctx = mp.get_context('spawn')
  config_dict = config.to_dict()
  workers, conns = {}, {}
  for name, target, args in (('jax', jax_worker, (config_dict, mode, seed, cores)),
                             ('torch', torch_worker, (config_dict, mode, seed, threads, cores))):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child,) + args, daemon=True)
    proc.start()
    workers[name], conns[name] = proc, parent
  try:
    info = {name: conn.recv() for name, conn in conns.items()}  # Both built (JAX compiled).
    load_before = load_average()
    for name, conn in conns.items():
      conn.send(('run', warmup))
      conn.recv()
    times = {name: [] for name in conns}
    for _ in range(rounds):
      for name, conn in conns.items():
        conn.send(('run', steps))
        times[name] += conn.recv()
    load_after = load_average()
    if torch_profile:
      conns['torch'].send(('profile',))
      profile_table = conns['torch'].recv()
  finally:
    for name, conn in conns.items():
      try:
        conn.send(('stop',))
      except (BrokenPipeError, OSError):
        pass
      workers[name].join(timeout=30)
  result = {name: info[name] | _summary(times[name]) for name in conns}
  for key in ('step_ms_best', 'step_ms_median', 'cpu_s_per_step_best', 'cpu_s_per_step_median'):
    result[f'ratio_{key}'] = result['jax'][key] / result['torch'][key]
  result |= {'mode': mode, 'task': config.task,
             'model': config.model.name, 'depth': config.model.get('depth'),
             'modalities': len(config.modalities), 'batch_size': config.batch_size,
             'crop_size': config.crop_size, 'frozen_bn': bool(config.get('frozen_bn', False)),
             'rounds': rounds, 'steps_per_round': steps, 'torch_threads': threads,
             'load_before': load_before, 'load_after': load_after,
             'xla_flags': os.environ.get('XLA_FLAGS', ''), 'python': platform.python_version()}
  if torch_profile:
    result['torch_profile'] = profile_table
  return result | cpu_info() | {'cores': cores or available}


def format_report(result: dict) -> str:
  lines = [f"{result['cpu_model']}, {result['cores']} cores ({' '.join(result['cpu_flags'])}); "
           f"load {result['load_before']:.2f} -> {result['load_after']:.2f}",
           f"jax {result['jax']['version']}, torch {result['torch']['version']} "
           f"({result['torch_threads']} threads); XLA_FLAGS={result['xla_flags']!r}",
           f"{result['task']} {result['mode']}, {result['model']} {result['depth'] or ''}, "
           f"M={result['modalities']}, batch {result['batch_size']}, crop {result['crop_size']}, "
           f"frozen BN {result['frozen_bn']}; {result['rounds']} rounds x "
           f"{result['steps_per_round']} steps each",
           f"{'':8}{'best ms':>10}{'median ms':>11}{'CPU s best':>12}{'CPU s med':>11}"]
  for name in ('jax', 'torch'):
    r = result[name]
    lines.append(f"{name:8}{r['step_ms_best']:10.1f}{r['step_ms_median']:11.1f}"
                 f"{r['cpu_s_per_step_best']:12.3f}{r['cpu_s_per_step_median']:11.3f}")
  lines.append(f"{'ratio':8}{result['ratio_step_ms_best']:10.3f}"
               f"{result['ratio_step_ms_median']:11.3f}{result['ratio_cpu_s_per_step_best']:12.3f}"
               f"{result['ratio_cpu_s_per_step_median']:11.3f}   (JAX / PyTorch)")
  return '\n'.join(lines)


def define_flags() -> None:
  config_lib.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Time the train step or the eval step.')
  flags.DEFINE_integer('rounds', 3, 'Alternations (JAX then PyTorch).', lower_bound=1)
  flags.DEFINE_integer('steps', 2, 'Timed steps per framework and round.', lower_bound=1)
  flags.DEFINE_integer('warmup', 1, 'Untimed steps of each before the first round.',
                       lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic batch and the PyTorch weights.')
  flags.DEFINE_integer('threads', None, 'PyTorch threads; default: the cores JAX uses.')
  flags.DEFINE_integer('cores', None,
                       'Pin both workers to this many cores (default: all of them). One core '
                       'is the comparison a shared machine disturbs least: no thread of either '
                       'framework waits at a barrier for a thread the other jobs preempted.')
  flags.DEFINE_bool('torch_profile', False,
                    "After the timed rounds, print torch.profiler's table of one PyTorch step.")
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  result = compare(FLAGS.config, FLAGS.mode, FLAGS.rounds, FLAGS.steps, FLAGS.warmup,
                   FLAGS.seed, FLAGS.threads, FLAGS.cores, FLAGS.torch_profile)
  print(format_report(result), flush=True)
  if FLAGS.torch_profile:
    print(result['torch_profile'], flush=True)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
