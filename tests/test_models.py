"""Model structure: exact parameter counts (docs/method.md section 7), shapes, per-modality BN
and fusion."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asymfusion_jax import config_lib, validation
from asymfusion_jax.tasks.translation import validation as translation_validation
from asymfusion_jax.models import ModalBatchNorm, RefineNet, ResNet, UNetGenerator, layers
from asymfusion_jax.models import random_variables

TINY = dict(depth=26, width=8, decoder_width=16)


def count_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('depth,modalities,expected', [
    (101, 2, 118_201_578),
    (101, 1, 118_096_233),
    (101, 3, 118_306_923),
    (152, 2, 133_891_306),
    (50, 2, 99_157_226),
])
def test_parameter_counts_match_spec(depth, modalities, expected):
  model = RefineNet(depth=depth, num_classes=40, num_modalities=modalities)
  assert count_params(model, (modalities, 1, 64, 64, 3)) == expected
  assert count_params(model, (modalities, 2, 97, 129, 3)) == expected


def test_parameter_count_independent_of_fusion():
  fused = RefineNet(depth=50, num_modalities=2, fusion='asym')
  plain = RefineNet(depth=50, num_modalities=2, fusion='none')
  assert count_params(fused, (2, 1, 64, 64, 3)) == count_params(plain, (2, 1, 64, 64, 3))


def init_tiny(num_modalities=2, fusion='asym', shape=(2, 65, 47), classes=5, **kw):
  model = RefineNet(num_classes=classes, num_modalities=num_modalities, fusion=fusion, **TINY, **kw)
  x = jax.random.normal(jax.random.key(1), (num_modalities,) + shape + (3,))
  return model, model.init(jax.random.key(0), x), x


def test_output_shape_and_ensemble():
  model, variables, x = init_tiny()
  variables = flax.core.unfreeze(variables)
  variables['params']['alpha'] = jnp.array([0.3, -1.2])
  out = model.apply(variables, x)
  assert out.shape == (3, 2, 17, 12, 5) and out.dtype == jnp.float32
  w = jax.nn.softmax(jnp.array([0.3, -1.2]))
  np.testing.assert_allclose(out[2], w[0] * out[0] + w[1] * out[1], rtol=1e-5, atol=1e-6)


def test_batchnorm_state_is_per_modality():
  _, variables, _ = init_tiny(num_modalities=3)
  bn = variables['batch_stats']['backbone']['bn1']
  assert bn['mean'].shape == (3, 8) and bn['var'].shape == (3, 8)
  assert variables['params']['backbone']['bn1']['scale'].shape == (3, 8)
  # Convolutions are shared: their kernels carry no modality axis.
  assert variables['params']['backbone']['conv1']['kernel'].shape == (7, 7, 3, 8)


def test_modal_batchnorm_training_matches_pytorch_semantics():
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 4, 5, 6, 3)).astype(np.float32)
  x[1] *= 10.0
  bn = ModalBatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)
  y, state = bn.apply(variables, x, mutable=['batch_stats'])
  for m in range(2):
    flat = x[m].reshape(-1, 3)
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y[m]).reshape(-1, 3), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state['batch_stats']['mean'][m], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state['batch_stats']['var'][m],
                               0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)


def test_modal_batchnorm_statistics_are_stable_at_large_means():
  """mean/std = 300: the one-pass E[x^2] - E[x]^2 was 2e-2 off in float32; two passes are not."""
  rng = np.random.default_rng(1)
  x = (300.0 + rng.normal(0.0, 1.0, size=(2, 4, 16, 16, 8))).astype(np.float32)
  x[1] = x[1] * 7.0 - 5000.0  # mean -2900, std 7
  bn = ModalBatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)
  y, state = bn.apply(variables, x, mutable=['batch_stats'])
  for m in range(2):
    flat = x[m].reshape(-1, 8).astype(np.float64)  # PyTorch's two-pass statistics, in float64.
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y[m]).reshape(-1, 8), expected, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(state['batch_stats']['var'][m], 0.9 + 0.1 * flat.var(0, ddof=1),
                               rtol=1e-4)


def test_each_modality_is_normalised_on_its_own():
  """With fusion off, modality m's output depends on modality m's input only."""
  model, variables, x = init_tiny(fusion='none')
  out = model.apply(variables, x)
  x2 = x.at[1].multiply(-3.0)
  out2 = model.apply(variables, x2)
  np.testing.assert_allclose(out[0], out2[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[1], out2[1])


def test_fusion_mixes_modalities():
  model, variables, x = init_tiny(fusion='asym')
  out = model.apply(variables, x)
  out2 = model.apply(variables, x.at[1].multiply(-3.0))
  assert not np.allclose(out[0], out2[0], atol=1e-4)


def test_single_modality_ignores_fusion_switch():
  model_f, variables, x = init_tiny(num_modalities=1, fusion='asym')
  model_n = RefineNet(num_classes=5, num_modalities=1, fusion='none', **TINY)
  np.testing.assert_array_equal(model_f.apply(variables, x), model_n.apply(variables, x))


def test_backbone_feature_dict():
  model = ResNet(depth=26, width=8)
  x = jnp.zeros((2, 1, 64, 64, 3))
  feats, _ = model.init_with_output(jax.random.key(0), x)
  shapes = {k: v.shape for k, v in feats.items()}
  assert shapes == {'stem': (2, 1, 32, 32, 8), 'l1': (2, 1, 16, 16, 32), 'l2': (2, 1, 8, 8, 64),
                    'l3': (2, 1, 4, 4, 128), 'l4': (2, 1, 2, 2, 256)}


def test_training_mode_needs_dropout_rng_and_updates_stats():
  model, variables, x = init_tiny()
  out, state = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(3)},
                           mutable=['batch_stats'])
  assert out.shape == (3, 2, 17, 12, 5)
  before = variables['batch_stats']['backbone']['bn1']['mean']
  assert not np.allclose(state['batch_stats']['backbone']['bn1']['mean'], before)
  out_b, _ = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(4)},
                         mutable=['batch_stats'])
  assert not np.allclose(out, out_b)  # Dropout draws differ.


def test_frozen_bn_uses_running_stats_in_training():
  model, variables, x = init_tiny(frozen_bn=True)
  model_eval = RefineNet(num_classes=5, num_modalities=2, dropout_rate=0.0, **TINY)
  model_frozen = RefineNet(num_classes=5, num_modalities=2, dropout_rate=0.0, frozen_bn=True, **TINY)
  train_out = model_frozen.apply(variables, x, train=True, rngs={'dropout': jax.random.key(0)})
  np.testing.assert_allclose(train_out, model_eval.apply(variables, x), rtol=1e-5, atol=1e-6)


def test_wrong_modality_count_is_a_clear_error():
  model, variables, x = init_tiny()
  with pytest.raises(ValueError, match='num_modalities=2'):
    model.apply(variables, jnp.concatenate([x, x[:1]]))


# config.model.kernels: the CPU rewrites ('cpu') against the stock XLA ops ('xla'), and 'auto'.


def _project(y):
  """A fixed linear functional of y, so that gradients stay well conditioned."""
  return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape))


def _kernel_programs(kernels):
  """{name: (gradient function, example arguments)} of tiny programs whose rewritable ops run
  as `kernels` says: a ResNet's features (1x1 and strided 1x1 convolutions, the stem's 3x3/2
  max-pool), the 5x5/1 max-pool of RefineNet's CRP and a U-Net (transposed convolutions).

  Separate programs: with the suite's --xla_backend_optimization_level=0, XLA:CPU computed the
  gradient of ResNet features + a max-pool of them in one program up to 14% away from the sum
  of the two gradients computed apart (with both kernels); with default flags they agree.
  """
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 1, 32, 32, 3)).astype(np.float32)
  x_unet = rng.normal(size=(2, 1, 16, 16, 3)).astype(np.float32)
  resnet = ResNet(depth=26, width=4, kernels=kernels)
  unet = UNetGenerator(num_modalities=2, ngf=4, num_downs=3, fusion_blocks=(2,), kernels=kernels)
  programs = {
      'resnet': (lambda v, x: sum(_project(f) for f in resnet.apply(v, x).values()),
                 (random_variables(resnet, x.shape), x)),
      'unet': (lambda p, x: _project(unet.apply({'params': p}, x)),
               (random_variables(unet, x_unet.shape)['params'], x_unet)),
      'crp_pool': (lambda x: _project(layers.max_pool(x, 5, 1, kernels)),
                   (np.maximum(rng.normal(size=(2, 1, 12, 12, 8)), 0).astype(np.float32),)),
  }
  return {name: (jax.value_and_grad(f, argnums=tuple(range(len(args)))), args)
          for name, (f, args) in programs.items()}


@pytest.fixture(scope='module')
def kernel_programs():
  """{kernels: {program: (CPU-lowered StableHLO text, outputs)}} for 'cpu' and 'xla'."""
  results = {}
  for kernels in ('cpu', 'xla'):
    results[kernels] = {}
    for name, (f, args) in _kernel_programs(kernels).items():
      lowered = jax.jit(f).lower(*args)
      results[kernels][name] = lowered.as_text(), jax.device_get(lowered.compile()(*args))
  return results


def _op_counts(text):
  counts = {op: len(re.findall(rf'stablehlo\.{op}\b', text))
            for op in ('convolution', 'dot_general', 'select_and_scatter')}
  # JAX's kernel gradient of a transposed convolution: over the stride-dilated input.
  counts['dilated_kernel_gradient'] = len(re.findall(
      r'convolution.*\[f, 0, 1, b\].*lhs_dilate = \[2, 2\]', text))
  return counts


def test_xla_and_cpu_kernels_agree_in_outputs_and_gradients(kernel_programs):
  cpu, xla = kernel_programs['cpu'], kernel_programs['xla']
  # The variants differ: 1x1 convolutions as matrix products, JAX's max-pool gradient, the
  # transposed convolution's kernel gradient over the stride-dilated input.
  resnet_cpu, resnet_xla = _op_counts(cpu['resnet'][0]), _op_counts(xla['resnet'][0])
  assert resnet_cpu['dot_general'] > resnet_xla['dot_general']
  assert resnet_cpu['convolution'] < resnet_xla['convolution']
  assert resnet_cpu['select_and_scatter'] == 0 < resnet_xla['select_and_scatter']
  unet_cpu, unet_xla = _op_counts(cpu['unet'][0]), _op_counts(xla['unet'][0])
  assert unet_cpu['dilated_kernel_gradient'] == 0 < unet_xla['dilated_kernel_gradient']
  for name in cpu:
    leaves_cpu, leaves_xla = jax.tree.leaves(cpu[name][1]), jax.tree.leaves(xla[name][1])
    assert len(leaves_cpu) == len(leaves_xla) >= 2
    # The biases before an InstanceNorm have a zero gradient, rounding noise: a program-wide atol.
    scale = max(np.abs(leaf).max() for leaf in leaves_cpu[1:])
    for got, want in zip(leaves_xla, leaves_cpu):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_auto_kernels_follow_the_platform_lowered_for(kernel_programs):
  """'auto' lowered for cuda is the stock program, lowered for cpu the rewrites; the choice is
  made when lowering (here, on a CPU-only machine), not from the host's backend."""
  for name, (f, args) in _kernel_programs('auto').items():
    for platform, kernels in (('cuda', 'xla'), ('cpu', 'cpu')):
      text = jax.export.export(jax.jit(f), platforms=(platform,))(*args).mlir_module()
      want = kernel_programs[kernels][name][0]
      assert _op_counts(text) == _op_counts(want), (name, platform)
  # Run on this CPU, 'auto' is the rewrites bit for bit (the demo's numbers are unchanged).
  f, args = _kernel_programs('auto')['resnet']
  for got, want in zip(jax.tree.leaves(jax.jit(f)(*args)),
                       jax.tree.leaves(kernel_programs['cpu']['resnet'][1])):
    np.testing.assert_array_equal(got, want)


def test_unknown_kernels_name_the_config_key():
  x = jnp.zeros((2, 1, 32, 32, 3))
  for model in (RefineNet(num_modalities=2, kernels='gpu', **TINY),
                UNetGenerator(num_modalities=2, ngf=4, num_downs=3, kernels='gpu')):
    with pytest.raises(ValueError, match=r"config\.model\.kernels='gpu': choose one of "
                                         r"\('auto', 'xla', 'cpu'\)"):
      jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x))
  config = config_lib.get_config('demo_translation')
  config.model.kernels = 'gpu'
  with pytest.raises(validation.ConfigError, match=r"config\.model\.kernels='gpu' must be one"):
    translation_validation.check_config(config)
