"""Every command line's errors: one line naming the fault and what to do, exit status 1, and the
traceback only with --verbosity=1 (asymfusion_jax.cli)."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from absl import app

from asymfusion_jax import checkpointing, cli
from tests import tiny


def run_cases(cases: list[list[str]], timeout: int = 300) -> list[tuple[object, str]]:
  """(exit status or message, stderr) of each [module, *args], run by tests/cli_cases.py in one
  process (a Python start and the JAX and TensorFlow imports once for all of them)."""
  env = {**os.environ, 'PYTHONPATH': tiny.REPO}
  result = subprocess.run([sys.executable, '-m', 'tests.cli_cases', json.dumps(cases)],
                          cwd=tiny.REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  codes = {}
  for line in result.stdout.splitlines():
    if line.startswith('CASE '):
      _, i, code = line.split(' ', 2)
      codes[int(i)] = json.loads(code)
  stderr = {}
  for part in result.stderr.split('CASE ')[1:]:
    i, _, text = part.partition('\n')
    stderr[int(i)] = text
  assert sorted(codes) == list(range(len(cases))), result.stdout + result.stderr[-3000:]
  return [(codes[i], stderr.get(i, '')) for i in range(len(cases))]


def assert_one_line(outcome, prefix: str, *fragments: str) -> None:
  """An error's exit: a message (status 1) that is one line, starts with prefix and holds every
  fragment; no traceback on stderr."""
  message, stderr = outcome
  assert isinstance(message, str), outcome  # sys.exit(message): status 1.
  assert '\n' not in message and message.startswith(f'{prefix}: '), message
  for fragment in fragments:
    assert fragment in message, (fragment, message)
  assert 'Traceback' not in stderr, stderr


# The helper itself.


def test_describe_names_the_file_and_what_to_do():
  describe = cli.describe
  assert describe(FileNotFoundError(errno.ENOENT, 'No such file or directory', '/proc/x')) == (
      '/proc/x: No such file or directory; check the path')
  assert describe(NotADirectoryError(errno.ENOTDIR, 'Not a directory', '/f/sub')).startswith(
      '/f/sub: Not a directory; a part of the path is a file')
  assert 'the disk is full' in describe(OSError(errno.ENOSPC, 'No space left on device', '/d'))
  assert 'read-only' in describe(OSError(errno.EROFS, 'Read-only file system', '/r'))
  # The package's own messages are kept, on one line.
  assert describe(ValueError('bad value\n  first: a\n  second: b')) == (
      'bad value first: a second: b')
  assert describe(FileNotFoundError('no such .pth file: x.pth')) == 'no such .pth file: x.pth'
  assert describe(app.UsageError('--step needs --workdir')) == (
      '--step needs --workdir (--help describes the flags)')
  # Anything else is a bug: its type stays, and the line says where the traceback is.
  assert describe(RuntimeError('x' * 1000)) == (
      f'unexpected RuntimeError: {"x" * 300} ... (a bug; --verbosity=1 shows its traceback)')


def test_guard_exits_with_one_line_and_logs_the_traceback_at_debug_level(caplog):
  def main(path):
    os.makedirs(path)

  with caplog.at_level(logging.DEBUG):
    with pytest.raises(SystemExit) as exit_:
      cli.guard(main, 'tool')('/proc/x')
  assert exit_.value.code == 'tool: /proc/x: No such file or directory; check the path'
  [record] = [r for r in caplog.records
              if r.levelno == logging.DEBUG and 'Traceback' in r.getMessage()]
  assert 'os.makedirs(path)' in record.getMessage()
  with pytest.raises(SystemExit, match='^7$'):  # A main's own exit passes through.
    cli.guard(lambda: sys.exit(7), 'tool')()


def test_argument_parser_errors_are_usage_errors():
  parser = cli.ArgumentParser()
  parser.add_argument('--kind', choices=('a', 'b'))
  with pytest.raises(app.UsageError, match="argument --kind: invalid choice: 'c'"):
    parser.parse_args(['--kind', 'c'])


# Each command line, on its failure paths.


def _poisoned_copy(full_run, workdir: str) -> None:
  """A copy of the tiny run whose latest checkpoint (step 8) holds NaN parameters, written with
  valid checksums: resuming it trains into a NaN loss at step 9."""
  shutil.copytree(full_run[0], workdir)
  ckpts = checkpointing.Checkpoints(workdir)
  restored = ckpts.periodic.restore(8)
  for step in (8, 12):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
  ckpts.periodic.reload()
  state = {**restored[checkpointing.VARIABLES], **restored[checkpointing.TRAIN]}
  state['params'] = jax.tree.map(lambda p: np.asarray(p) * np.nan, state['params'])
  ckpts.save(state, restored[checkpointing.RECORD])
  ckpts.close()  # Waits for the save and its checksums.


def _garble_best(workdir: str) -> None:
  best = os.path.join(workdir, 'best')
  for root, _, files in os.walk(best):
    for name in files:
      if os.sep + checkpointing.VARIABLES + os.sep in os.path.join(root, name):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')


def test_every_cli_error_is_one_line(full_run, tiny_data, tmp_path):
  """main, export, convert, fid, predict and data.synthetic on bad paths, files, checkpoints and
  steps;
  and main on a run whose loss turns NaN. No case compiles anything new."""
  a_file = str(tmp_path / 'a_file')
  open(a_file, 'w').close()
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  corrupt = str(tmp_path / 'corrupt')
  shutil.copytree(full_run[0], corrupt)
  _garble_best(corrupt)
  poisoned = str(tmp_path / 'poisoned')
  _poisoned_copy(full_run, poisoned)
  garbage_pth = str(tmp_path / 'garbage.pth')
  with open(garbage_pth, 'wb') as f:
    f.write(b'garbage')
  images = str(tmp_path / 'images')
  os.makedirs(images)
  cv2.imwrite(os.path.join(images, '0.png'), np.zeros((8, 8, 3), np.uint8))

  main = ['asymfusion_jax.main', f'--config={tiny.REPO}/configs/demo.py', *tiny.flags(tiny_data)]
  export = ['asymfusion_jax.export', f'--out={tmp_path / "model.jax"}']
  convert = ['asymfusion_jax.convert', f'--config={tiny.REPO}/configs/demo.py',
             f'--out={tmp_path / "converted"}']
  fid = ['asymfusion_jax.fid', images, images]
  synthetic = ['asymfusion_jax.data.synthetic']
  predict = ['asymfusion_jax.predict', f'--out={tmp_path / "predicted"}']
  cases = [
      (main + ['--workdir=/proc/x'], 'main', '/proc/x: No such file or directory'),
      (main + [f'--workdir={a_file}/run'], 'main', f'{a_file}/run: Not a directory'),
      (main + [f'--workdir={empty}', '--mode=eval'], 'main', f'no checkpoints in {empty}',
       'check --workdir'),
      (main + [f'--workdir={corrupt}', '--mode=eval', '--step=7'], 'main',
       'no checkpoint for step 7', 'available: [8, 12]'),
      (main + [f'--workdir={corrupt}', '--mode=eval'], 'main', 'cannot be restored',
       '(--step=N)'),
      (main + [f'--workdir={poisoned}'], 'main', 'training loss is nan at step 9',
       'lower the learning rate'),
      (export + ['--workdir=/proc/x'], 'export failed, nothing written', 'no workdir at /proc/x'),
      (export + [f'--workdir={corrupt}', '--step=7'], 'export failed, nothing written',
       'no checkpoint for step 7'),
      (export + [f'--workdir={corrupt}'], 'export failed, nothing written', 'cannot be restored'),
      (['asymfusion_jax.export', f'--workdir={full_run[0]}', f'--out={a_file}/model.jax'],
       'export failed, nothing written', f'{a_file}/model.jax: {a_file} is a file'),
      (['asymfusion_jax.export', f'--workdir={corrupt}'], 'export failed, nothing written',
       'flag --out', '--helpfull'),
      (export + [f'--checkpoint={corrupt}'], 'export failed, nothing written',
       '--checkpoint needs --config'),
      (export + [f'--checkpoint={corrupt}', f'--config={tiny.REPO}/configs/demo.py',
                 '--step=7'], 'export failed, nothing written', '--step selects a checkpoint'),
      (convert + [f'--torch={tmp_path}/missing.pth'], 'convert', 'missing.pth'),
      (convert + [f'--torch={garbage_pth}'], 'convert', 'garbage.pth',
       'not a readable torch checkpoint'),
      (fid + [f'--weights={tmp_path}/missing.pth'], 'asymfusion_jax.fid', 'missing.pth'),
      (fid + [f'--weights={garbage_pth}'], 'asymfusion_jax.fid', 'garbage.pth'),
      (predict + [f'--workdir={full_run[0]}', f'--input=rgb={tmp_path}/missing',
                  f'--input=depth={images}'], 'predict', f'rgb={tmp_path}/missing: no such folder'),
      (predict + ['--workdir=/proc/x', f'--input=rgb={images}', f'--input=depth={images}'],
       'predict', '/proc/x'),
      (predict + [f'--workdir={full_run[0]}', '--artifact=/proc/x', f'--input=rgb={images}'],
       'predict', 'pass exactly one of --workdir', '--artifact'),
      (synthetic + ['--out=/proc/x'], 'synthetic', '/proc/x: No such file or directory'),
      (synthetic + ['--out', f'{a_file}/data'], 'synthetic', 'Not a directory'),
      (synthetic + ['--out', str(tmp_path / 'syn'), '--num_train=-1'], 'synthetic',
       'at least one train'),
      (synthetic + ['--out', str(tmp_path / 'syn'), '--kind=nyu'], 'synthetic',
       "invalid choice: 'nyu'"),
  ]
  verbose = [main + ['--workdir=/proc/x', '--verbosity=1'],
             synthetic + ['--out=/proc/x', '--verbosity=1']]
  outcomes = run_cases([case[0] for case in cases] + verbose)
  for (args, prefix, *fragments), outcome in zip(cases, outcomes):
    assert_one_line(outcome, prefix, *fragments)
  # Nothing was written where a case failed.
  for name in ('model.jax', 'converted', 'predicted'):
    assert not os.path.exists(tmp_path / name), name
  assert os.listdir(empty) == []
  # --verbosity=1 adds the traceback before the same line.
  for (message, stderr), expected in zip(outcomes[len(cases):], ('main', 'synthetic')):
    assert message == f'{expected}: /proc/x: No such file or directory; check the path'
    assert 'Traceback (most recent call last)' in stderr and 'FileNotFoundError' in stderr, stderr
