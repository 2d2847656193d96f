"""python -m asymfusion_jax.export on one tiny demo run: the jax.export artifact run by a process
that never imports asymfusion_jax, the reference-layout .pth read by torch and run by the torch
reference model, converted checkpoints, and bad input that must leave nothing behind."""

import json
import os
import re
import subprocess
import sys
import zipfile

from absl import flags
import jax
import numpy as np
import pytest
import torch

from asymfusion_jax import config_io, convert, export, torch_pickle, train, variables_io
from asymfusion_jax.data import modalities
from asymfusion_jax.data.nyudv2 import synthetic
from asymfusion_jax.models import build_model
from tests import tiny, torch_reference

torch.set_num_threads(2)
SUBPROCESS_ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
K = synthetic.NUM_CLASSES

# Runs an artifact given only its bytes: argv = artifact, then (input .npy, output .npy) pairs.
CHILD = """
import sys
import jax
import numpy as np
with open(sys.argv[1], 'rb') as f:
  exported = jax.export.deserialize(bytearray(f.read()))
for src, dst in zip(sys.argv[2::2], sys.argv[3::2]):
  np.save(dst, np.asarray(exported.call(np.load(src))))
assert 'asymfusion_jax' not in sys.modules, 'the artifact must run without asymfusion_jax'
print('in_avals', exported.in_avals)
"""


def run_export(*args):
  return subprocess.run([sys.executable, '-m', 'asymfusion_jax.export', *args], cwd=tiny.REPO,
                        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
                        check=False)


def run_artifact(artifact, inputs, tmp_path):
  """Outputs of the artifact on each input array, computed in a fresh process."""
  args = []
  for i, x in enumerate(inputs):
    np.save(tmp_path / f'in{i}.npy', x)
    args += [str(tmp_path / f'in{i}.npy'), str(tmp_path / f'out{i}.npy')]
  result = subprocess.run([sys.executable, '-c', CHILD, str(artifact)] + args, cwd=tmp_path,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return [np.load(tmp_path / f'out{i}.npy') for i in range(len(inputs))]


def forward(source, x):
  return np.asarray(build_model(source.config).apply(source.variables, x, train=False))


def images(batch, height=48, width=64, seed=0):
  return np.random.default_rng(seed).normal(size=(2, batch, height, width, 3)).astype(np.float32)


def relative_error(actual, expected):
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def listing(directory):
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.fixture(scope='module')
def workdir(full_run):
  return full_run[0]


@pytest.fixture(scope='module')
def best(workdir):
  return export.from_workdir(workdir)


@pytest.fixture(scope='module')
def artifact(workdir, tmp_path_factory):
  """The CLI's default export of the workdir, with --compute_dtype=auto (the demo config says
  float32): (artifact path, sidecar dict)."""
  out = tmp_path_factory.mktemp('jax') / 'model.jax'
  result = run_export(f'--workdir={workdir}', f'--out={out}', '--compute_dtype=auto')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(export.sidecar_path(str(out))) as f:
    return out, json.load(f)


# --format=jax.


def test_artifact_runs_without_asymfusion_jax_at_any_batch_size(artifact, best, tmp_path):
  inputs = [images(1, seed=1), images(3, seed=2)]
  outputs = run_artifact(artifact[0], inputs, tmp_path)
  for x, got in zip(inputs, outputs):
    want = forward(best, x)
    assert got.shape == want.shape == (3, x.shape[1], 12, 16, K)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_sidecar_describes_the_artifact(artifact, best, workdir):
  out, meta = artifact
  normalisation = modalities.to_json(('rgb', 'depth'))
  assert {k: meta[k] for k in normalisation} == json.loads(json.dumps(normalisation))
  assert meta['artifact'] == out.name and meta['format'] == 'jax.export'
  assert meta['outputs'] == ['rgb', 'depth', 'ensemble']
  assert (meta['num_classes'], meta['ignore_label'], meta['output_stride']) == (K, 255, 4)
  # The default size is the synthetic images' size (tiny: 48x64); the batch is symbolic.
  assert meta['input_shape'] == [2, 'b', 48, 64, 3] and meta['input_dtype'] == 'float32'
  assert meta['output_shape'] == [3, 'b', 12, 16, K] and meta['output_dtype'] == 'float32'
  assert meta['platforms'] == ['cpu', 'cuda', 'tpu']
  assert meta['compute_dtype'] == {'cpu': 'float32', 'cuda': 'bfloat16', 'tpu': 'bfloat16'}
  assert meta['step'] == best.step and best.step in (4, 8, 12)
  assert meta['source'] == f'workdir {os.path.abspath(workdir)}'
  assert meta['model']['width'] == 8 and meta['model']['num_classes'] == K


def test_step_size_and_platforms(workdir, tmp_path):
  """--step picks a periodic checkpoint; any fixed size; the ceil(H/4) output of odd sizes."""
  source = export.from_workdir(workdir, step=8)
  out = str(tmp_path / 'model.jax')
  meta = export.write_jax(source, out, height=37, width=45, platforms=['cpu'])
  assert (meta['step'], meta['platforms']) == (8, ['cpu'])
  assert meta['input_shape'] == [2, 'b', 37, 45, 3]
  assert meta['output_shape'] == [3, 'b', 10, 12, K]
  with open(out, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  x = images(2, 37, 45)
  np.testing.assert_allclose(np.asarray(exported.call(x)), forward(source, x), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match='Shape mismatch'):
    exported.call(images(2, 48, 64))


def test_converted_checkpoint_exports_the_same_program(artifact, best, tiny_data, tmp_path):
  """--checkpoint with --config, as for a .pth converted with `python -m asymfusion_jax.convert`."""
  variables_io.save_variables(tmp_path / 'ckpt', best.variables)
  out = tmp_path / 'converted.jax'
  result = run_export(f'--checkpoint={tmp_path / "ckpt"}', '--config=configs/demo.py',
                      f'--out={out}', '--platforms=cpu', *tiny.flags(tiny_data))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(export.sidecar_path(str(out))) as f:
    meta = json.load(f)
  assert meta['step'] is None and meta['source'] == f'checkpoint {tmp_path / "ckpt"}'
  assert meta['input_shape'] == artifact[1]['input_shape']
  with open(out, 'rb') as f:
    converted = jax.export.deserialize(bytearray(f.read()))
  x = images(1, seed=3)
  np.testing.assert_allclose(np.asarray(converted.call(x)), forward(best, x), rtol=1e-5,
                             atol=1e-5)


# --format=torch.


def test_torch_format_loads_into_the_torch_reference(best, workdir, tmp_path):
  out = tmp_path / 'refinenet.pth'
  result = run_export(f'--workdir={workdir}', '--format=torch', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  expected = convert.refinenet_to_torch(best.variables)
  loaded = torch.load(out)  # weights_only=True: only tensors, no code.
  assert list(loaded) == list(expected)
  for key, value in expected.items():
    assert loaded[key].numpy().dtype == value.dtype and loaded[key].shape == value.shape, key
    np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)
  reader = torch_pickle.load_state_dict(str(out))
  assert all(np.array_equal(reader[k], v) for k, v in expected.items())

  model = torch_reference.RefineNet(blocks=(2, 2, 2, 2), num_classes=K, num_parallel=2,
                                    width=8, decoder_width=16).eval()
  model.load_state_dict(loaded, strict=True)
  x = images(3, seed=4)
  with torch.no_grad():
    outputs = model([torch.from_numpy(m.transpose(0, 3, 1, 2).copy()) for m in x])
  theirs = np.stack([o.numpy().transpose(0, 2, 3, 1) for o in outputs])
  ours = forward(best, x)
  assert theirs.shape == ours.shape == (3, 3, 12, 16, K)
  assert relative_error(ours, theirs) < 1e-5


def test_state_dict_writer_dtypes_shapes_and_alignment(tmp_path):
  state_dict = {
      'w': np.arange(24, dtype=np.float32).reshape(2, 3, 4),
      'transposed': np.arange(6, dtype=np.float64).reshape(2, 3).T,  # Not C-contiguous.
      'count': np.asarray(2**40, np.int64),
      'half': np.linspace(-1, 1, 5).astype(np.float16),
      'mask': np.asarray([True, False]),
      'empty': np.zeros((0, 3), np.int32),
      'unicodé': np.asarray([-7], np.int8),
  }
  path = tmp_path / 'x.pth'
  torch_pickle.save_state_dict(str(path), state_dict)
  loaded = torch.load(path)
  assert list(loaded) == list(state_dict)
  for key, value in state_dict.items():
    assert tuple(loaded[key].shape) == value.shape, key
    np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)
  mapped = torch.load(path, mmap=True)
  assert all(torch.equal(mapped[k], loaded[k]) for k in loaded)
  with zipfile.ZipFile(path) as archive, open(path, 'rb') as f:
    for info in archive.infolist():
      if '/data/' in info.filename:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), '<u2')
        assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


# Bad input: a clear error, and nothing written.


def test_unknown_format_writes_nothing(workdir, best, tmp_path):
  result = run_export(f'--workdir={workdir}', '--format=onnx', f'--out={tmp_path / "m.onnx"}')
  assert result.returncode != 0 and 'jax|torch' in result.stderr
  with pytest.raises(ValueError, match="unknown export format 'onnx'"):
    export.export(best, str(tmp_path / 'm.onnx'), 'onnx')
  assert listing(tmp_path) == []


def test_workdir_without_config_writes_nothing(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  out = tmp_path / 'out' / 'model.jax'
  result = run_export(f'--workdir={empty}', f'--out={out}')
  assert result.returncode != 0
  assert 'has no config.json' in result.stderr and 'nothing written' in result.stderr
  assert listing(empty) == [] and not os.path.exists(tmp_path / 'out')


def test_missing_checkpoints_are_named(workdir, tiny_data, tmp_path):
  with pytest.raises(FileNotFoundError, match='no workdir at'):
    export.from_workdir(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match=r'no checkpoint for step 7 .* available: \[8, 12\]'):
    export.from_workdir(workdir, step=7)
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  train.write_config(tiny.config(tiny_data), str(untrained))
  with pytest.raises(FileNotFoundError, match=r'no checkpoints in .*untrained \(neither checkpoints/ nor best/\)'):
    export.from_workdir(str(untrained))
  assert listing(untrained) == ['config.json']
  config = tiny.config(tiny_data)
  with pytest.raises(FileNotFoundError, match='no variables checkpoint at'):
    export.from_checkpoint(str(tmp_path / 'nowhere'), config)


def test_checkpoint_of_another_model_is_refused(best, tiny_data, tmp_path):
  variables_io.save_variables(tmp_path / 'ckpt', best.variables)
  config = tiny.config(tiny_data)
  config.model.num_classes = K + 1
  with pytest.raises(ValueError, match='clf_conv'):
    export.from_checkpoint(str(tmp_path / 'ckpt'), config)


def _convolution_dtypes(mlir_module: str) -> list[str]:
  """The result element type of every convolution of a lowered module, in order."""
  return re.findall(r'stablehlo\.convolution.*-> tensor<[^>]*x(f32|bf16)>', mlir_module)


def test_auto_compute_dtype_is_resolved_per_platform(artifact, best):
  """Exported on this CPU, an 'auto' artifact computes in bfloat16 where it runs on cuda or tpu
  and in float32 on cpu (test_artifact_runs_without_asymfusion_jax_at_any_batch_size runs it
  here, against the float32 model)."""
  with open(artifact[0], 'rb') as f:
    module = jax.export.deserialize(bytearray(f.read())).mlir_module()
  assert set(_convolution_dtypes(module)) == {'f32', 'bf16'}  # Both, chosen per platform.
  for platform, dtype in (('cuda', 'bf16'), ('cpu', 'f32')):
    lowered = export.export_forward(best, 48, 64, [platform], compute_dtype='auto')
    dtypes = _convolution_dtypes(lowered.mlir_module())
    assert dtypes and set(dtypes) == {dtype}, platform
    assert lowered.out_avals[0].dtype == np.float32  # Outputs are float32 everywhere.
  # An explicit dtype holds on every platform; the config's 'float32' is the default.
  assert export.compute_dtypes(best.config, ['cpu', 'cuda']) == {'cpu': 'float32',
                                                                 'cuda': 'float32'}
  assert set(export.compute_dtypes(best.config, ['cpu', 'tpu'], 'bfloat16').values()) == {
      'bfloat16'}


def test_bad_jax_options(best, tmp_path):
  with pytest.raises(ValueError, match='--platforms'):
    export.write_jax(best, str(tmp_path / 'm.jax'), platforms=['cpu', 'metal'])
  with pytest.raises(ValueError, match='--compute_dtype'):
    export.write_jax(best, str(tmp_path / 'm.jax'), platforms=['cpu'], compute_dtype='fp16')
  with pytest.raises(ValueError, match='only apply to --format=jax'):
    export.export(best, str(tmp_path / 'm.pth'), 'torch', height=64)
  assert listing(tmp_path) == []


def test_failure_while_writing_leaves_nothing(best, tmp_path, monkeypatch):
  def broken(path, state_dict):
    del state_dict
    with open(path, 'wb') as f:
      f.write(b'half a file')
    raise OSError('disk full')

  monkeypatch.setattr(torch_pickle, 'save_state_dict', broken)
  with pytest.raises(OSError, match='disk full'):
    export.write_torch(best, str(tmp_path / 'refinenet.pth'))
  assert listing(tmp_path) == []


def test_a_failed_move_puts_the_old_pair_back(tmp_path, monkeypatch):
  """The sidecar is in place and the artifact's move fails: the old pair comes back."""
  out, meta = tmp_path / 'model.jax', tmp_path / 'model.jax.json'
  out.write_text('old artifact')
  meta.write_text('old sidecar')
  real_replace = os.replace

  def flaky_replace(src, dst):
    if os.fspath(dst) == str(out) and os.fspath(src).endswith('.tmp'):
      raise OSError('device gone')
    return real_replace(src, dst)

  monkeypatch.setattr(os, 'replace', flaky_replace)
  with pytest.raises(OSError, match='device gone'):
    with export._replaced_atomically([str(meta), str(out)]) as (meta_temp, out_temp):  # pylint: disable=protected-access
      for temp in (meta_temp, out_temp):
        with open(temp, 'w') as f:
          f.write('new')
  assert (out.read_text(), meta.read_text()) == ('old artifact', 'old sidecar')
  assert listing(tmp_path) == ['model.jax', 'model.jax.json']


def test_folders_made_for_a_failed_export_are_removed(tmp_path):
  out = tmp_path / 'new' / 'deeper' / 'refinenet.pth'
  with pytest.raises(RuntimeError, match='failed'):
    with export._replaced_atomically([str(out)]):  # pylint: disable=protected-access
      raise RuntimeError('failed')
  assert listing(tmp_path) == []


def test_out_that_is_a_folder_fails_before_exporting(workdir, tmp_path):
  (tmp_path / 'model.jax').mkdir()
  result = run_export(f'--workdir={workdir}', f'--out={tmp_path / "model.jax"}')
  assert result.returncode != 0
  assert 'export failed, nothing written: cannot write' in result.stderr
  assert 'it is a folder' in result.stderr
  assert listing(tmp_path) == ['model.jax'] and listing(tmp_path / 'model.jax') == []


# The library around the CLI.


def test_importing_export_defines_no_flags():
  assert 'checkpoint' not in flags.FLAGS and 'platforms' not in flags.FLAGS


def test_workdir_config_reads_back_equal(workdir, tiny_data):
  written = train.resolve_data_paths(tiny.config(tiny_data), workdir)
  read = config_io.load_workdir_config(workdir)
  assert read.to_dict() == written.to_dict()
  assert read.data.synthetic_image_size == (48, 64) and read.modalities == ('rgb', 'depth')


def test_workdir_config_of_an_older_version_gets_new_defaults(tiny_data, tmp_path):
  """A config.json written before compute_dtype and model.remat existed still builds a model."""
  old = json.loads(tiny.config(tiny_data).to_json_best_effort())
  del old['compute_dtype'], old['model']['remat']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  read = config_io.load_workdir_config(str(tmp_path))
  assert read.compute_dtype == 'auto' and read.model.remat == 'none'
  assert read.model.width == 8 and read.model.num_classes == K  # Its own values win.
  build_model(read)
  (tmp_path / 'config.json').write_text('{"model": ')
  with pytest.raises(ValueError, match=r'config\.json is not valid JSON'):
    config_io.load_workdir_config(str(tmp_path))
