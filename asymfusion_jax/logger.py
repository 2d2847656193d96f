"""Metric logging: JSON lines in the workdir, TensorBoard scalars, and progress lines.

Every measurement goes to `DIR/metrics.jsonl` (one object per logged step or evaluation) and to
TensorBoard event files under `DIR/tensorboard`. Only process 0 writes.
"""

import datetime
import json
import logging as logging_std
import math
import os
import sys
import tempfile
import time

from absl import logging
import jax


# Import-time notices of TensorFlow's C++ runtime that TF_CPP_MIN_LOG_LEVEL no longer hides (TF
# 2.19+ logs them through absl before it is initialised, twice): oneDNN's numerics note and absl's
# note about that.
_TF_IMPORT_NOTICES = ('oneDNN custom operations are on',
                      'All log messages before absl::InitializeLog() is called')


# orbax's ERROR lines on a checkpoint's unreadable metadata file, which it then does without.
# The checkpoint's checksums (checksums.py) catch the damage, and checkpointing says so in one
# warning line, so these (with the whole garbled file content in them) go to debug level.
_ORBAX_METADATA_ERRORS = ('Failed to json parse Metadata file', 'Failed to read Metadata file')


class _LibraryInfoFilter(logging_std.Filter):
  """Drops INFO records of orbax, TFDS and JAX, and demotes orbax's metadata-file errors.

  orbax logs dozens of lines per checkpoint read or write, TFDS several per dataset read, JAX
  that it found no TPU. Their other warnings and errors still show.
  """

  def filter(self, record):
    orbax = '/orbax/' in record.pathname
    if orbax and str(record.msg).startswith(_ORBAX_METADATA_ERRORS):
      record.levelno, record.levelname = logging_std.DEBUG, 'DEBUG'
      return logging.get_absl_logger().isEnabledFor(logging_std.DEBUG)
    noisy = (orbax or '/tensorflow_datasets/' in record.pathname
             or record.name == 'jax' or record.name.startswith('jax.'))
    return record.levelno >= logging_std.WARNING or not noisy


class _CliFormatter(logging_std.Formatter):
  """`HH:MM:SS message` for INFO, `HH:MM:SS WARNING: message` for other levels.

  absl's default prefix (level, date, microseconds, thread id, file:line) takes half of every
  line on a terminal; the file of a message is rarely what a user of the CLIs needs.
  """

  def format(self, record):
    text = super().format(record)
    stamp = time.strftime('%H:%M:%S', time.localtime(record.created))
    level = '' if record.levelno == logging_std.INFO else f'{record.levelname}: '
    return f'{stamp} {level}{text}'


def quiet_library_logs() -> None:
  """Hides the INFO chatter of orbax, TFDS and JAX from absl's log handler (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


def setup_cli_logging(tensorflow: bool = False) -> None:
  """What every command-line entry point calls first: quiet libraries, short log lines.

  Args:
    tensorflow: also import TensorFlow and TFDS now (for CLIs that read data or write metrics,
      which import them anyway), with their import-time C++ notices left out of stderr, and
      turn off TFDS's progress bars, which write a screenful of terminal escapes to a log file.
  """
  quiet_library_logs()
  logging.get_absl_handler().setFormatter(_CliFormatter())
  if tensorflow:
    import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.display_progress_bar(False)


def import_tensorflow():
  """`import tensorflow`, with its import-time notices (_TF_IMPORT_NOTICES) filtered from stderr.

  TensorFlow's C++ runtime writes them to file descriptor 2 directly, so the import runs with
  that descriptor pointed at a temporary file, whose other lines (a real error, say) are then
  written to stderr unchanged.
  """
  if 'tensorflow' in sys.modules:
    return sys.modules['tensorflow']
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with tempfile.TemporaryFile() as capture:
      os.dup2(capture.fileno(), 2)
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        capture.seek(0)
        lines = capture.read().decode(errors='replace').splitlines(keepends=True)
        sys.stderr.write(''.join(line for line in lines
                                 if not any(n in line for n in _TF_IMPORT_NOTICES)))
        sys.stderr.flush()
  finally:
    os.close(saved)
  return tf


SUPERSEDED_FILE = 'metrics.superseded.jsonl'


def eval_scalars(results: dict) -> dict[str, float]:
  """{'eval/<branch>/<metric>': value} of an evaluation's {branch: {metric: value}}."""
  return {f'eval/{branch}/{k}': v for branch, res in results.items() for k, v in res.items()}


class MetricLogger:
  """Appends to DIR/metrics.jsonl and DIR/tensorboard (process 0 only).

  resume_step: the step a run resumes from. Records of later steps were written by an earlier
  run that stopped before its next checkpoint; the resumed run logs those steps again, so they
  move from metrics.jsonl to metrics.superseded.jsonl, and every step stays logged once.
  """

  def __init__(self, workdir: str, resume_step: int | None = None):
    self._active = jax.process_index() == 0
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self._active and resume_step is not None:
      self._set_aside_after(resume_step, os.path.join(workdir, SUPERSEDED_FILE))
    if self._active:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Heavy; needed only here.
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
      # tf.summary.scalar needs the tensorboard package; the plain write with the scalars
      # plugin's metadata produces the same events without it.
      self._scalar_metadata = tf.compat.v1.SummaryMetadata(
          plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name='scalars'))

  def _set_aside_after(self, step: int, superseded_path: str) -> None:
    if not os.path.exists(self._path):
      return
    kept, later = [], []
    with open(self._path) as f:
      for line in f:
        (later if _step_of(line) > step else kept).append(line)
    if not later:
      return
    with open(superseded_path, 'a') as f:  # First, so that no record is ever only in memory.
      f.writelines(later)
    temp = self._path + '.tmp'
    with open(temp, 'w') as f:
      f.writelines(kept)
    os.replace(temp, self._path)
    logging.warning('Moved %d records of steps after %d (an earlier run that stopped before its '
                    'next checkpoint) from %s to %s.', len(later), step, self._path,
                    superseded_path)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record, allow_nan=True) + '\n')
    with self._tb.as_default():
      for k, v in scalars.items():
        self._tf.summary.write(k, self._tf.constant(float(v), self._tf.float32), step=int(step),
                               metadata=self._scalar_metadata)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _step_of(line: str) -> float:
  """The step of a metrics.jsonl line; -inf for a line that is not a record (kept in place)."""
  try:
    return float(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return -math.inf


class Progress:
  """The training loop's progress lines: step, loss, steps/s and an ETA that counts evaluations.

  Throughput is measured between reports, leaving out the first step (compilation, see
  compiling()) and every pause() .. start() span (evaluation and its checkpoint). The ETA is
  the remaining steps at the last interval's rate plus the remaining evaluations times the
  duration of the last one (the first includes compiling the evaluation, so later estimates
  shrink); until one has finished, the line says how many evaluations are still to come.
  """

  def __init__(self, total_steps: int, eval_every: int | None = None):
    self.total = total_steps
    self._eval_every = eval_every
    self._t = None
    self._step = None
    self._compile_t = None
    self._pause_t = None
    self._eval_s = None

  def compiling(self) -> None:
    """Before the first step: says that the next minute or so is compilation."""
    logging.info('compiling the train step...')
    self._compile_t = time.perf_counter()

  def start(self, step: int) -> None:
    """(Re)starts the throughput clock after the first step or after an evaluation."""
    now = time.perf_counter()
    if self._compile_t is not None:
      logging.info('train step compiled; the first step took %.1f s', now - self._compile_t)
      self._compile_t = None
    if self._pause_t is not None:
      self._eval_s = now - self._pause_t
      self._pause_t = None
    self._t, self._step = now, step

  def pause(self, step: int) -> None:
    """Before the evaluation of `step`; start() ends the pause and times it."""
    self._pause_t = time.perf_counter()
    logging.info('evaluating step %d...', step)

  def evaluations_left(self, step: int) -> int:
    """Evaluations still to run at steps >= `step`: every eval_every steps, and at the end."""
    if not self._eval_every:
      return 0
    count = self.total // self._eval_every - (step - 1) // self._eval_every
    return count + (1 if self.total % self._eval_every else 0)

  def report(self, step: int, losses=None, name: str = 'loss') -> float:
    """Logs a progress line and returns steps per second over the interval.

    Args:
      step: the step just done (counted from 1).
      losses: the training losses of the steps since the last report; the line shows their
        mean, the value metrics.jsonl records as train/<name>.
      name: what the losses are ('loss'; the translation task shows its 'g_loss').
    """
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._t, 1e-9) if self._t is not None else 0.0
    self._t, self._step = now, step
    parts = [f'step {step}/{self.total}']
    if losses:
      parts.append(f'{name} {float(sum(losses)) / len(losses):.4f} (mean of {len(losses)} '
                   f'step{"s" if len(losses) > 1 else ""})')
    parts.append(f'{rate:.2f} steps/s')
    parts.append('ETA ' + self._eta_text(step, rate))
    logging.info('  '.join(parts))
    return rate

  def _eta_text(self, step: int, rate: float) -> str:
    if rate <= 0:
      return '?'
    seconds = (self.total - step) / rate
    evals = self.evaluations_left(step)
    noun = 'evaluation' if evals == 1 else 'evaluations'
    if evals and self._eval_s is None:
      return f'{_duration(seconds)} + {evals} {noun}'
    text = _duration(seconds + evals * (self._eval_s or 0.0))
    return f'{text} (incl. {evals} {noun})' if evals else text


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


# The workdir entries the end-of-run summary names, with what each holds.
_WORKDIR_FILES = (
    ('config.json', 'the resolved config'),
    ('metrics.jsonl', 'every logged loss and score, one JSON object a line'),
    ('checkpoints', 'the latest checkpoints (training resumes from them)'),
    ('best', 'the best checkpoint (export and --mode=eval use it)'),
    ('predictions', 'the first validation images predicted at the last evaluation (PNG)'),
    ('tensorboard', 'the same scalars for TensorBoard'),
)


# How the summary names a metric of eval/<branch>/<metric>.
_METRIC_NAMES = {'miou': 'mIoU', 'pixel_acc': 'pixel acc', 'mean_acc': 'mean acc', 'l1': 'L1',
                 'l2': 'L2', 'fid': 'FID', 'kid': 'KID'}
# The metric shown beside the best one in the line on the last evaluation.
_SECOND_METRIC = {'miou': 'pixel_acc', 'l1': 'l2', 'fid': 'l1'}


def run_summary(workdir: str, best_metric: tuple[str, bool] = ('ensemble/miou', True)) -> str:
  """A few lines on a run, from its metrics.jsonl: best and last evaluation, and its files.

  best_metric: ('<branch>/<metric>', higher is better), what picks the best checkpoint
  (Task.best_metric).
  """
  name, higher = best_metric
  branch, metric = name.split('/')
  key = f'eval/{name}'
  second = _SECOND_METRIC.get(metric)
  evals = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict) and key in record:
          evals.append(record)
  label = f'{branch} {_METRIC_NAMES.get(metric, metric)}'
  lines = [f'Run summary ({workdir}):']
  if evals:
    # The first of equal scores, as the best checkpoint keeps the first.
    sign = 1 if higher else -1
    best = max(evals, key=lambda r: (sign * r[key], -r['step']))
    last = evals[-1]
    lines.append(f'  best {label:<15} {best[key]:.{_digits(metric)}f} at step {best["step"]}')
    text = f'  last evaluation      step {last["step"]}: {label} {last[key]:.{_digits(metric)}f}'
    if second:
      text += (f', {_METRIC_NAMES[second]} '
               f'{last.get(f"eval/{branch}/{second}", math.nan):.{_digits(second)}f}')
    lines.append(text)
  else:
    lines.append('  no evaluation yet')
  for entry, what in _WORKDIR_FILES:
    full = os.path.join(workdir, entry)
    if os.path.exists(full):
      if entry == 'best':
        what = f'the checkpoint of the best {label} (export and --mode=eval use it)'
      shown = full + (os.sep if os.path.isdir(full) else '')
      lines.append(f'  {shown:<{len(workdir) + 16}}  {what}')
  return '\n'.join(lines)


def _digits(metric: str) -> int:
  """Decimals shown: percentages and FID with 2, errors in [-1, 1] units with 4."""
  return 4 if metric in ('l1', 'l2') else 2


def print_run_summary(workdir: str, best_metric: tuple[str, bool] = ('ensemble/miou', True)
                      ) -> None:
  """Prints run_summary to stdout, beside the results tables (process 0 only)."""
  if jax.process_index() == 0:
    print('\n' + run_summary(workdir, best_metric), flush=True)
