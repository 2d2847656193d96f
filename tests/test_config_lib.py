"""Configs load by path or by name from any working directory (asymfusion_jax.config_lib)."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from asymfusion_jax import config_lib
from tests import tiny


def run_python(code: str, cwd, *args) -> subprocess.CompletedProcess:
  """Runs `code` in a fresh interpreter in `cwd`, importing this checkout's package."""
  env = dict(os.environ, PYTHONPATH=tiny.REPO)
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_load_and_get_config_outside_the_repository(tmp_path):
  result = run_python("""
      from asymfusion_jax import config_lib
      print(config_lib.load('configs/demo.py').modalities)
      print(config_lib.load('configs/demo.py:rgb').modalities)
      print(config_lib.get_config('demo:depth').modalities)
      print(config_lib.get_config('nyudv2_refinenet101').model.depth)
      """, tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split('\n')[:4] == [
      "('rgb', 'depth')", "('rgb',)", "('depth',)", '101']


def test_config_flag_outside_the_repository(tmp_path):
  """--config=configs/demo.py:ARG with overrides, as the command lines take it, locked."""
  result = run_python("""
      from absl import app
      from asymfusion_jax import config_lib
      flag = config_lib.DEFINE_config_file('config')
      def main(argv):
        print(flag.value.modalities, flag.value.batch_size)
        try:
          flag.value.no_such_key = 1
        except AttributeError:
          print('locked')
      app.run(main)
      """, tmp_path, '--config=configs/demo.py:rgb', '--config.batch_size=4')
  assert result.returncode == 0, result.stderr
  assert result.stdout.split('\n')[:2] == ["('rgb',) 4", 'locked']


def test_config_flag_names_the_missing_file(tmp_path):
  result = run_python("""
      from absl import app
      from asymfusion_jax import config_lib
      config_lib.DEFINE_config_file('config')
      app.run(lambda argv: None)
      """, tmp_path, '--config=configs/no_such_config.py')
  assert result.returncode != 0
  assert "config file 'configs/no_such_config.py' not found" in result.stderr
  assert re.search(r'available configs: [\w, ]*\bdemo, [\w, ]*\bnyudv2_refinenet101, ',
                   result.stderr)


def test_working_directory_comes_first(tmp_path, monkeypatch):
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'demo.py').write_text(textwrap.dedent("""
      import ml_collections
      def get_config(arg='plain'):
        return ml_collections.ConfigDict({'origin': 'local', 'arg': arg})
      """))
  monkeypatch.chdir(tmp_path)
  assert config_lib.load('configs/demo.py:x').to_dict() == {'origin': 'local', 'arg': 'x'}
  assert config_lib.load(str(tmp_path / 'configs' / 'demo.py')).arg == 'plain'
  # By name, always the repository's file.
  assert config_lib.get_config('demo').modalities == ('rgb', 'depth')
  # A bare file name is looked up in the repository's configs/ too.
  assert config_lib.load('demo.py:rgb').modalities == ('rgb',)


def test_unknown_name_lists_the_available_configs():
  with pytest.raises(ValueError, match=r"unknown config 'dmeo:rgb'; available configs: [\w, ]*\bdemo, "
                                       r'[\w, ]*\bnyudv2_refinenet101, '):
    config_lib.get_config('dmeo:rgb')
  assert 'demo' in config_lib.available_configs()
  assert '__init__' not in config_lib.available_configs()


def test_missing_file_names_the_places_tried(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    config_lib.load('configs/missing.py')
  message = str(error.value)
  assert str(tmp_path / 'configs' / 'missing.py') in message
  assert os.path.join(tiny.REPO, 'configs', 'missing.py') in message


def test_file_without_get_config(tmp_path):
  (tmp_path / 'empty.py').write_text('X = 1\n')
  with pytest.raises(AttributeError, match='defines no get_config'):
    config_lib.load(str(tmp_path / 'empty.py'))


def test_without_a_configs_folder(monkeypatch, tmp_path):
  """A non-editable install has no configs/: by name fails saying so, by path still works."""
  monkeypatch.setattr(config_lib, 'CONFIGS_DIR', tmp_path / 'site-packages' / 'configs')
  with pytest.raises(ValueError, match='configs ship in the repository'):
    config_lib.get_config('demo')
  assert config_lib.load(os.path.join(tiny.REPO, 'configs', 'demo.py:rgb')).modalities == ('rgb',)


def test_main_resolves_config_outside_the_repository(tmp_path):
  """The training command line takes --config=configs/X.py from any directory."""
  env = dict(os.environ, PYTHONPATH=tiny.REPO)
  result = subprocess.run(
      [sys.executable, '-m', 'asymfusion_jax.main', '--config=configs/demo.py:no_such_variant',
       f'--workdir={tmp_path / "run"}'], cwd=tmp_path, env=env, capture_output=True, text=True,
      timeout=300, check=False)
  # The file was found (from the repository) and its get_config ran: it rejects the variant.
  assert result.returncode != 0
  assert "unknown demo variant 'no_such_variant'" in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / 'run').exists()
