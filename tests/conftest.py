"""Shared fixtures: one tiny synthetic dataset, built and prepared with TFDS once per session."""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  from asymfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from tests import tiny  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tiny_data')
  dirs = {'data.manual_dir': str(root / 'synthetic'), 'data.tfds_data_dir': str(root / 'tfds')}
  pipeline.prepare(tiny.config(dirs))
  return dirs
