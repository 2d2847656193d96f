"""Shared fixtures: one tiny synthetic dataset, built and prepared with TFDS once per session."""

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
