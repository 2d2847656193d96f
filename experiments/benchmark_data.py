"""Times a segmentation input pipeline: train examples/s and peak host memory per worker count.

  python experiments/benchmark_data.py --dataset=cityscapes --data_dir=/tmp/cs_bench
  python experiments/benchmark_data.py --dataset=nyudv2 --data_dir=/tmp/nyu_bench --num_train=200
  python experiments/benchmark_data.py --grid --data_dir=/tmp/data_bench --seconds=10 --rounds=2

Writes --num_train synthetic examples of --height x --width (by default the dataset's own size:
1024x2048 for Cityscapes, 480x640 for NYUDv2) into DATA_DIR/synthetic unless the dataset's root
is given with --manual_dir, builds the TFDS dataset into DATA_DIR/tfds, then for each worker
count starts a fresh Python process that asks for the train batches, reads the first (the time
to it, `first_batch_s`, is the start-up a training run waits for), then --steps more of the
paper recipe's batch size and crop (or --batch_size, --crop_size), and reports examples/s and
its peak resident memory (ru_maxrss, of that process alone), so that one count's memory does
not count against the next; also the peaks, sampled after each batch, of the anonymous memory
and of the mapped file pages (which the kernel reclaims under pressure) of that process and its
worker processes together. Files are read through the OS page cache like
any training run's. --worker_kind picks thread or process workers (config.data.worker_kind).

--grid times both datasets (DATA_DIR/nyudv2, DATA_DIR/cityscapes) with 1 and 2 worker threads and
1 and 2 worker processes, in --rounds rounds that each run every case once in turn (A B C D A B C
D: a load that changes over time reaches every case alike), each case for at least --seconds
after its first batch; then prints a table of the median examples/s per case, its ratio to the
same kind's 1 worker (2.0x: the work scales), the CPU seconds an example costs (the consumer and
its worker processes together, from /proc), the load average while it ran, and the cores an
accelerator needs to be fed at the --goal examples/s of each dataset: goal x CPU time per example
(what the cores would do if the work scales, as with processes), and goal / examples/s x workers
(what the measured rates give). On a busy machine only the CPU time means much.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

# The paper config of each dataset, and its images' (height, width).
DATASETS = {'cityscapes': ('cityscapes_deeplab_xception65', (1024, 2048)),
            'nyudv2': ('nyudv2_refinenet101', (480, 640))}

flags.DEFINE_enum('dataset', 'cityscapes', list(DATASETS), 'The dataset whose pipeline to time.')
flags.DEFINE_string('data_dir', '', 'Working folder (data and TFDS build); default '
                    '/tmp/DATASET_bench. Synthetic data already there is reused as it is.')
flags.DEFINE_string('manual_dir', '', "A root of the dataset's files to read instead of "
                    'synthetic ones.')
flags.DEFINE_integer('num_train', 24, 'Synthetic train examples.')
flags.DEFINE_integer('height', 0, "Synthetic image height (0: the dataset's).")
flags.DEFINE_integer('width', 0, "Synthetic image width (0: the dataset's).")
flags.DEFINE_list('workers', ['1', '2', '4'], 'Worker thread counts to time.')
flags.DEFINE_integer('batch_size', 0, "Examples per batch (0: the paper config's).")
flags.DEFINE_integer('crop_size', 0, "Train crop (0: the paper config's).")
flags.DEFINE_integer('steps', 4, 'Timed batches per worker count (at least; see --seconds).')
flags.DEFINE_float('seconds', 0.0, 'Time each case for at least this long after its first batch.')
flags.DEFINE_enum('worker_kind', 'thread', ['thread', 'process'], 'config.data.worker_kind.')
flags.DEFINE_bool('grid', False, 'Time both datasets x {1, 2} x {thread, process} (see above).')
flags.DEFINE_integer('rounds', 2, 'With --grid: rounds over the cases.')
flags.DEFINE_list('goal', ['nyudv2=120', 'cityscapes=40'], 'With --grid: examples/s an '
                  'accelerator needs per dataset (the paper batch over the goal step time).')
flags.DEFINE_integer('child_workers', -1, 'Internal: time one worker count in this process.')
FLAGS = flags.FLAGS


def _config():
  from asymfusion_jax import config_lib  # pylint: disable=g-import-not-at-top
  name, (height, width) = DATASETS[FLAGS.dataset]
  c = config_lib.load(f'configs/{name}.py')
  c.data.synthetic = not FLAGS.manual_dir
  data_dir = FLAGS.data_dir or f'/tmp/{FLAGS.dataset}_bench'
  c.data.manual_dir = FLAGS.manual_dir or os.path.join(data_dir, 'synthetic')
  c.data.tfds_data_dir = os.path.join(data_dir, 'tfds')
  c.data.synthetic_image_size = (FLAGS.height or height, FLAGS.width or width)
  c.data.num_train, c.data.num_val = FLAGS.num_train, 1
  c.batch_size = FLAGS.batch_size or c.batch_size
  c.crop_size = FLAGS.crop_size or c.crop_size
  return c


def _pids() -> list[int]:
  """This process's and its worker processes' ids."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  return [os.getpid()] + [p.pid for p in multiprocessing.active_children()]


def _memory_mib() -> dict[str, float]:
  """The resident memory now of this process and its worker processes, split as Linux reports
  it (/proc/PID/status): RssAnon (the processes' own allocations) and RssFile (file pages
  mapped, e.g. the ArrayRecord files, which the kernel can drop at any time; a page mapped by
  several processes counts in each)."""
  out = {'RssAnon': 0.0, 'RssFile': 0.0}
  for pid in _pids():
    try:
      with open(f'/proc/{pid}/status') as f:
        for line in f:
          key, _, value = line.partition(':')
          if key in out:
            out[key] += int(value.split()[0]) / 1024
    except FileNotFoundError:
      pass
  return out


def _cpu_seconds() -> float:
  """CPU seconds (user + system) of this process and its worker processes so far."""
  total = 0.0
  for pid in _pids():
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except FileNotFoundError:
      continue
    total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
  return total


def _time_here(workers: int) -> dict:
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.num_workers = workers
  config.data.worker_kind = FLAGS.worker_kind
  start = time.perf_counter()
  batches = data.get(config).train_batches(config)
  next(batches)  # Also the warm-up: opens the files, starts the workers.
  first_batch_s = time.perf_counter() - start
  start, cpu, steps = time.perf_counter(), _cpu_seconds(), 0
  peak = _memory_mib()
  while steps < FLAGS.steps or time.perf_counter() - start < FLAGS.seconds:
    next(batches)
    steps += 1
    peak = {k: max(v, _memory_mib().get(k, 0.0)) for k, v in peak.items()}
  seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  batches.close()
  return {'workers': workers, 'kind': FLAGS.worker_kind, 'first_batch_s': first_batch_s,
          'examples_per_s': steps * config.batch_size / seconds,
          'cpu_s_per_example': cpu / (steps * config.batch_size),
          'load_average': os.getloadavg()[0],
          'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'peak_anon_mib': peak.get('RssAnon', float('nan')),
          'peak_file_mib': peak.get('RssFile', float('nan'))}


def _prepare() -> None:
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  config = _config()
  data.get(config).prepare(config)
  print(f'{FLAGS.dataset} data ready in {time.perf_counter() - start:.0f} s', flush=True)


def _time_in_child(workers: int, **overrides) -> dict:
  """_time_here(workers) in a fresh Python process, with the flags here and `overrides`."""
  names = ('dataset', 'data_dir', 'manual_dir', 'num_train', 'height', 'width', 'batch_size',
           'crop_size', 'steps', 'seconds', 'worker_kind')
  values = {name: FLAGS[name].serialize().split('=', 1)[1] for name in names}
  values.update(overrides)
  args = [sys.executable, os.path.abspath(__file__), f'--child_workers={workers}'] + [
      f'--{name}={value}' for name, value in values.items()]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(args, capture_output=True, text=True, check=False,
                       env={**os.environ, 'PYTHONPATH': repo})
  if out.returncode:
    raise RuntimeError(f'The timing process failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def _grid() -> None:
  """Both datasets x {thread, process} x {1, 2} workers, interleaved (module doc)."""
  root = FLAGS.data_dir or '/tmp/data_bench'
  goals = dict(item.split('=') for item in FLAGS.goal)
  cases = [(d, kind, w) for d in DATASETS for kind in ('thread', 'process') for w in (1, 2)]
  for dataset in DATASETS:
    FLAGS.dataset, FLAGS.data_dir = dataset, os.path.join(root, dataset)
    _prepare()
  results = {case: [] for case in cases}
  for r in range(FLAGS.rounds):
    for case in cases:
      dataset, kind, workers = case
      result = _time_in_child(workers, dataset=dataset, worker_kind=kind,
                              data_dir=os.path.join(root, dataset))
      results[case].append(result)
      print(f'round {r + 1}: {dataset} {workers} {kind}: {result["examples_per_s"]:.2f} '
            f'examples/s, {result["cpu_s_per_example"] * 1000:.0f} ms CPU an example, first '
            f'batch after {result["first_batch_s"]:.1f} s, load {result["load_average"]:.1f}',
            flush=True)
  print('\n| dataset | workers | examples/s (median; each round) | over 1 worker | CPU ms / '
        'example | first batch | load average | cores for the goal |\n'
        '|---|---|---|---|---|---|---|---|')
  for case in cases:
    dataset, kind, workers = case
    rates = [r['examples_per_s'] for r in results[case]]
    one = statistics.median(r['examples_per_s'] for r in results[(dataset, kind, 1)])
    cpu = statistics.median(r['cpu_s_per_example'] for r in results[case])
    goal = float(goals[dataset])
    kinds = kind if workers == 1 else {'thread': 'threads', 'process': 'processes'}[kind]
    print(f'| {dataset} | {workers} {kinds} | '
          f'{statistics.median(rates):.2f} ({", ".join(f"{x:.2f}" for x in rates)}) | '
          f'{statistics.median(rates) / one:.2f}x | {cpu * 1000:.0f} | {statistics.median(r["first_batch_s"] for r in results[case]):.1f}'
          f' s | {statistics.median(r["load_average"] for r in results[case]):.1f} | '
          f'{goal * cpu:.1f} (by CPU time), {goal / statistics.median(rates) * workers:.1f} '
          f'(by rate) |', flush=True)


def main(argv):
  del argv
  if FLAGS.child_workers >= 0:
    print(json.dumps(_time_here(FLAGS.child_workers)))
    return
  if FLAGS.grid:
    _grid()
    return
  _prepare()
  for workers in FLAGS.workers:
    result = _time_in_child(int(workers))
    print(f'{result["workers"]} worker {result["kind"]}(s): first batch after '
          f'{result["first_batch_s"]:.1f} s, then {result["examples_per_s"]:.2f} examples/s '
          f'({result["cpu_s_per_example"] * 1000:.0f} ms of CPU an example), peak host '
          f'memory {result["peak_rss_mib"]:.0f} MiB (sampled after each batch: anonymous '
          f'{result["peak_anon_mib"]:.0f} MiB, mapped files {result["peak_file_mib"]:.0f} MiB)',
          flush=True)


if __name__ == '__main__':
  app.run(main)
