"""Metric logging: JSON lines in the workdir, TensorBoard scalars, and progress lines.

Every measurement goes to `DIR/metrics.jsonl` (one object per logged step or evaluation) and to
TensorBoard event files under `DIR/tensorboard`. Only process 0 writes.
"""

import json
import logging as logging_std
import math
import os
import time

from absl import logging
import jax


class _LibraryInfoFilter(logging_std.Filter):
  """Drops INFO records of orbax and TFDS, which log several lines per checkpoint or read."""

  def filter(self, record):
    noisy = ('/orbax/' in record.pathname or '/tensorflow_datasets/' in record.pathname)
    return record.levelno >= logging_std.WARNING or not noisy


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())


SUPERSEDED_FILE = 'metrics.superseded.jsonl'


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
  """steps/s since the last report, and the ETA, excluding the first step's compile time."""

  def __init__(self, total_steps: int):
    self.total = total_steps
    self._t = None
    self._step = None

  def start(self, step: int) -> None:
    self._t, self._step = time.perf_counter(), step

  def report(self, step: int) -> float:
    """Logs a progress line and returns steps per second over the interval."""
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._t, 1e-9) if self._t is not None else 0.0
    self._t, self._step = now, step
    eta = (self.total - step) / rate if rate > 0 else math.inf
    eta_text = time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'
    logging.info('step %d/%d  %.2f steps/s  ETA %s', step, self.total, rate, eta_text)
    return rate
