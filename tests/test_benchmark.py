"""experiments/benchmark.py end to end on a tiny config, in both modes, as a user runs it.

No timing is asserted (CI machines vary); the harness must run the library's step, print its
table and end with one JSON line whose figures are positive and finite. The last test guards
the max-pool rewrite the benchmark led to (see experiments/RESULTS.md): the same bits as XLA's
own gradient.
"""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asymfusion_jax import hlo_summary
from asymfusion_jax.models import layers
from tests import tiny


TINY_FLAGS = ['--config=configs/demo.py', '--config.model.width=8',
              '--config.model.decoder_width=16', '--config.crop_size=32',
              '--config.batch_size=2', '--steps=2', '--warmup=1']
POSITIVE = ('compile_s', 'step_ms', 'images_per_s', 'tflop_per_step', 'peak_memory_gb',
            'achieved_tflops', 'step_ms_min', 'step_ms_max')


def run(args):
  # No timing is asserted; conftest's XLA_FLAGS skip LLVM's optimisations (half the compile time).
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, 'experiments/benchmark.py'] + args, cwd=tiny.REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout.strip().splitlines()


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_prints_a_table_and_ends_with_one_json_line(mode, tmp_path):
  lines = run(TINY_FLAGS + [f'--mode={mode}', '--peak_tflops=1.0', f'--dump_hlo={tmp_path}'])
  result = json.loads(lines[-1])
  for line in lines[:-1]:
    assert not line.startswith('{'), line  # Exactly one JSON line, the last.
  assert any(line.startswith('step_ms ') for line in lines[:-1])

  assert list(result)[:5] == ['compile_s', 'step_ms', 'images_per_s', 'tflop_per_step',
                              'peak_memory_gb']
  for key in POSITIVE:
    assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
  assert 0 < result['peak_fraction'] < 1  # A tiny model on a CPU is far from 1 TFLOP/s.
  assert result['images_per_s'] == pytest.approx(2 / (result['step_ms'] / 1e3))
  assert result['peak_memory_source']  # Says where the memory figure comes from.
  assert (result['mode'], result['batch_size'], result['crop_size'], result['steps'],
          result['warmup']) == (mode, 2, 32, 2, 1)

  # The HLO summary: every forward convolution batches both modalities (M * B = 4 images).
  hlo = result['hlo']
  assert hlo['lowered']['conv_dtypes'] == {'f32': hlo['lowered']['convolutions']}
  assert hlo['optimised']['convolutions'] > 0
  if mode == 'eval':
    assert hlo['lowered']['conv_lhs_batch'] == {'4': hlo['lowered']['convolutions']}
  else:
    assert hlo['lowered']['conv_lhs_batch']['4'] > 0
  for name in ('lowered.stablehlo.mlir', 'optimised.hlo.txt', 'summary.json'):
    assert (tmp_path / f'{mode}_{name}').stat().st_size > 0


# Optimised HLO as XLA:GPU prints it: cuDNN convolutions are custom calls with tuple results,
# operands are named, not typed.
GPU_STYLE_HLO = """HloModule jit_train_step, is_scheduled=true

%fused_add (param_0: bf16[4,8,8,16], param_1: bf16[4,8,8,16]) -> bf16[4,8,8,16] {
  %param_0 = bf16[4,8,8,16]{3,2,1,0} parameter(0)
  %param_1 = bf16[4,8,8,16]{3,2,1,0} parameter(1)
  ROOT %add.1 = bf16[4,8,8,16]{3,2,1,0} add(%param_0, %param_1)
}

ENTRY %main (p0: bf16[4,8,8,16], p1: bf16[3,3,16,16], p2: f32[4,8,8,16]) -> bf16[4,8,8,16] {
  %p0 = bf16[4,8,8,16]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,16,16]{3,2,1,0} parameter(1)
  %p2 = f32[4,8,8,16]{3,2,1,0} parameter(2)
  %cudnn-conv.1 = (bf16[4,8,8,16]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward"
  %get-tuple-element.1 = bf16[4,8,8,16]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %transpose.1 = bf16[4,8,16,8]{3,2,1,0} transpose(%p0), dimensions={0,1,3,2}
  %convert.1 = bf16[4,8,8,16]{3,2,1,0} convert(%p2)
  %multiply.1 = bf16[4,8,8,16]{3,2,1,0} multiply(%convert.1, %p0)
  ROOT %fusion.1 = bf16[4,8,8,16]{3,2,1,0} fusion(%get-tuple-element.1, %multiply.1), kind=kLoop, calls=%fused_add
}
"""


def test_hlo_summary_reads_gpu_convolutions_and_unfused_ops():
  summary = hlo_summary.summarize_hlo(GPU_STYLE_HLO)
  assert (summary['convolutions'], summary['custom_call_convolutions']) == (1, 1)
  assert summary['conv_dtypes'] == {'bf16': 1} and summary['conv_lhs_batch'] == {4: 1}
  assert summary['converts'] == {'f32->bf16': 1}
  assert summary['top_level_transposes'] == 1
  assert summary['unfused_elementwise'] == 2  # convert and multiply; the add is fused.
  assert summary['fusions'] == 1


# The rewrites the benchmark led to must not change a bit of what they compute.


@pytest.mark.parametrize('window,stride,shape', [(5, 1, (2, 9, 11, 3)), (3, 2, (1, 15, 13, 2)),
                                                 (3, 2, (2, 16, 16, 4))])
@pytest.mark.parametrize('values', ['normal', 'relu', 'few'])
def test_max_pool_gradient_is_bitwise_that_of_select_and_scatter(window, stride, shape, values):
  """Ties (ReLU zeros, a few distinct values) must route the gradient to the same element."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  if values == 'relu':
    x = np.maximum(x, 0)
  elif values == 'few':
    x = rng.integers(0, 3, size=shape).astype(np.float32)
  pad = window // 2

  def xla_pool(y):
    return nn.max_pool(y, (window, window), strides=(stride, stride),
                       padding=((pad, pad), (pad, pad)))

  want, xla_vjp = jax.vjp(xla_pool, x)
  got, our_vjp = jax.vjp(lambda y: layers.max_pool(y, window, stride), x)
  g = rng.normal(size=want.shape).astype(np.float32)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(jax.jit(our_vjp)(g)[0], jax.jit(xla_vjp)(g)[0])


@pytest.mark.parametrize('stride,shape,dtype', [(1, (2, 3, 7, 9, 5), np.float32),
                                                (2, (2, 1, 9, 8, 6), np.float32),
                                                (2, (1, 2, 7, 7, 4), jnp.bfloat16)])
def test_1x1_convolution_is_a_matrix_product_with_conv_results(stride, shape, dtype):
  """shared_conv's 1x1 kernels run as dot_general (no convolution left in the program) and give
  lax.conv's outputs and gradients to float32 rounding, at odd sizes and stride 2."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), dtype)
  conv = layers.shared_conv(7, 1, stride=stride, use_bias=True, dtype=dtype, name='c')
  variables = conv.init(jax.random.PRNGKey(0), x)
  kernel = variables['params']['kernel']
  assert kernel.shape == (1, 1, shape[-1], 7)  # nn.Conv's parameters, unchanged.

  def ours(params, x):
    return jnp.sum(conv.apply({'params': params}, x).astype(jnp.float32) ** 2)

  def reference(params, x):
    flat = x.reshape((-1,) + x.shape[2:])
    y = jax.lax.conv_general_dilated(flat, params['kernel'].astype(dtype), (stride, stride),
                                     ((0, 0), (0, 0)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y + params['bias'].astype(dtype)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  text = jax.jit(jax.grad(ours, argnums=(0, 1))).lower(variables['params'], x).as_text()
  assert 'stablehlo.convolution' not in text and 'stablehlo.dot_general' in text
  got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(variables['params'], x)
  want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(variables['params'], x)
  tol = 1e-5 if dtype == np.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), (a, b)


def test_other_convolutions_stay_convolutions():
  """3x3 kernels (and padded or dilated ones) keep lax.conv_general_dilated."""
  x = jnp.ones((1, 2, 8, 8, 3))
  conv = layers.shared_conv(4, 3, name='c')
  variables = conv.init(jax.random.PRNGKey(0), x)
  assert 'stablehlo.convolution' in jax.jit(conv.apply).lower(variables, x).as_text()


def test_side_by_side_with_pytorch_times_both_and_gives_their_ratio():
  """experiments/benchmark_torch.py on the tiny model, as a user runs it: both frameworks' step,
  the ratio of the two, and the machine it ran on. No timing is asserted."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, 'experiments/benchmark_torch.py', '--config=configs/demo.py',
       '--config.model.width=8', '--config.model.decoder_width=16', '--config.crop_size=32',
       '--config.batch_size=2', '--config.frozen_bn=True', '--rounds=1', '--steps=1',
       '--warmup=1', '--cores=1'], cwd=tiny.REPO, env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  *report, last = proc.stdout.strip().splitlines()
  result = json.loads(last)
  for name in ('jax', 'torch'):
    assert result[name]['steps'] == 1 and result[name]['step_ms_best'] > 0, result
    assert result[name]['cpu_s_per_step_best'] > 0, result
  assert result['ratio_step_ms_best'] == pytest.approx(
      result['jax']['step_ms_best'] / result['torch']['step_ms_best'])
  assert result['torch_threads'] == 1 and result['cores'] == 1
  assert (result['task'], result['model'], result['mode']) == ('segmentation', 'refinenet', 'train')
  assert result['cpu_model'] and result['torch']['version'].startswith('2.')
  report = '\n'.join(report)
  assert 'JAX / PyTorch' in report and result['cpu_model'] in report


def test_transposed_convolution_matches_flax_and_has_one_dilated_input():
  """layers.ConvTranspose4x4 = nn.ConvTranspose(k=4, s=2, p=2, transpose_kernel=True): same
  parameters, outputs and gradients, but its kernel gradient is a convolution with a dilated
  window, not one over a stride-dilated input (which XLA:CPU ran 33x slower): only the forward
  keeps lhs_dilate = [2, 2]."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 1, 5, 7, 6)), jnp.float32)
  flax_conv = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                               transpose_kernel=True)
  ours = layers.ConvTranspose4x4(5)
  variables = flax_conv.init(jax.random.PRNGKey(0), x)
  variables = jax.tree.map(lambda v: v + 0.1 * jnp.asarray(rng.normal(size=v.shape), v.dtype),
                           variables)  # A non-zero bias.
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
      jnp.shape, variables)

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

  got = jax.jit(jax.value_and_grad(loss(ours), argnums=(0, 1)))(variables, x)
  want = jax.jit(jax.value_and_grad(loss(flax_conv), argnums=(0, 1)))(variables, x)
  assert ours.apply(variables, x).shape == (2, 1, 10, 14, 5)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
  text = jax.jit(jax.grad(loss(ours), argnums=(0, 1))).lower(variables, x).as_text()
  convs = [line for line in text.splitlines() if 'stablehlo.convolution' in line]
  assert len(convs) == 3 and sum('lhs_dilate = [2, 2]' in line for line in convs) == 1
