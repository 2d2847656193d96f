"""Shared fixtures, built once per session: the tiny synthetic dataset (prepared with TFDS) and
one complete tiny training run. Tests that change a workdir copy the run's workdir first."""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# triton (which torch.optim and torch._dynamo import) segfaults when it is first imported after
# TensorFlow, which the data pipeline and the metric logger load; importing it first avoids that.
try:
  import torch  # pylint: disable=g-import-not-at-top,unused-import
  import triton.runtime  # pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  from asymfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
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
