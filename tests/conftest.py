"""Shared fixtures, built once per session: the tiny synthetic dataset (prepared with TFDS) and
one complete tiny training run. Tests that change a workdir copy the run's workdir first."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _share_compilation_cache() -> None:
  """One persistent XLA compilation cache for the test session and every process it starts.

  The tests compile the same tiny programs in this process and again in the command-line
  subprocesses they start (main, export, benchmark) and in pytest-xdist workers; with a shared
  cache each program is compiled once. JAX reads these variables when it first compiles, and
  subprocesses inherit them. The cache is keyed by the program, the flags and the versions, so a
  hit is the same executable; a user's own JAX_COMPILATION_CACHE_DIR is left in charge.
  """
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  path = tempfile.mkdtemp(prefix='asymfusion-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  # Cache every program that takes a noticeable time to compile, whatever its size.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'
  atexit.register(shutil.rmtree, path, True)  # Only the process that made it removes it.


_share_compilation_cache()


# XLA:CPU's fusion emitters, turned off: the tiny train step then compiles in three quarters of
# the time (8.9 s against 11.7 s, experiments/RESULTS.md "Test suite time"). Only some XLA
# versions know this flag, and XLA aborts on a flag it does not know, so it is probed first.
_OPTIONAL_FLAG = '--xla_cpu_use_fusion_emitters=false'


def _fast_compiles() -> None:
  """XLA:CPU without LLVM's optimisation passes, for this session and its subprocesses.

  Compiling is most of the suite's time and no test asserts a timing; the unoptimised programs
  compute the same values (every comparison runs both sides under the same flags) and compile
  in about half the time. Tests that set XLA_FLAGS for a subprocess keep or replace these.
  The flags are set once, by the process that starts the session: pytest-xdist workers and
  subprocesses inherit them.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_backend_optimization_level' in flags:
    return
  flags = f'{flags} --xla_backend_optimization_level=0'.strip()
  try:
    known = subprocess.run(
        [sys.executable, '-c', 'import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()'],
        env=dict(os.environ, XLA_FLAGS=f'{flags} {_OPTIONAL_FLAG}', JAX_PLATFORMS='cpu'),
        capture_output=True, check=False, timeout=120).returncode == 0
  except subprocess.TimeoutExpired:
    known = False
  os.environ['XLA_FLAGS'] = f'{flags} {_OPTIONAL_FLAG}' if known else flags


_fast_compiles()

# triton (which torch.optim and torch._dynamo import) segfaults when it is first imported after
# TensorFlow, which the data pipeline and the metric logger load; importing it first avoids that.
try:
  import torch  # pylint: disable=g-import-not-at-top,unused-import
  import triton.runtime  # pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  from asymfusion_jax.data.nyudv2 import pipeline  # pylint: disable=g-import-not-at-top
  from tests import tiny  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tiny_data')
  dirs = {'data.manual_dir': str(root / 'synthetic'), 'data.tfds_data_dir': str(root / 'tfds')}
  pipeline.prepare(tiny.config(dirs))
  return dirs


@pytest.fixture(scope='session')
def full_run(tmp_path_factory, tiny_data):
  """(workdir, results) of the complete tiny run (12 steps, evaluations at 4, 8 and 12).

  Shared by every test that needs a trained workdir; treat it as read-only (copy it with
  shutil.copytree to change anything).
  """
  from asymfusion_jax import train  # pylint: disable=g-import-not-at-top
  from tests import tiny  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('full'))
  results = train.train_and_evaluate(tiny.config(tiny_data), workdir)
  return workdir, results
