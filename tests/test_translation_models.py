"""The image-translation models: UNetGenerator, PatchDiscriminator and their builders.

Full-size parameter counts come from jax.eval_shape (nothing is compiled); the numerical tests
run a small generator (ngf 8, 6 levels, 64x64). Equivalence with PyTorch is in
tests/test_translation_convert.py.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from asymfusion_jax import fusion
from asymfusion_jax import models
from asymfusion_jax.models import InstanceNorm, ModalInstanceNorm, PatchDiscriminator
from asymfusion_jax.models import UNetGenerator

SMALL = dict(ngf=8, num_downs=6, fusion_blocks=(2, 3, 4, 5))
SIZE = 64
GENERATOR_BLOCKS = ['alpha'] + [f'conv{k}' for k in range(1, 9)] + [
    f'deconv{k}' for k in range(1, 9)]


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def abstract_generator(num_modalities, size=256, **kwargs):
  model = UNetGenerator(num_modalities, **kwargs)
  probe = jnp.zeros((num_modalities, 1, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), probe))


@pytest.mark.parametrize('num_modalities,expected', [
    (1, 54_419_460), (2, 54_429_317), (3, 54_439_174)])
def test_generator_parameter_count(num_modalities, expected):
  variables = abstract_generator(num_modalities)
  assert list(variables) == ['params']  # No batch_stats: InstanceNorms keep no state.
  assert sorted(variables['params']) == sorted(GENERATOR_BLOCKS)
  assert count(variables) == expected


def test_discriminator_parameter_count_and_layout():
  variables = jax.eval_shape(lambda: PatchDiscriminator().init(
      jax.random.key(0), jnp.zeros((1, 256, 256, 6))))
  assert count(variables) == 2_769_601
  shapes = jax.tree.map(lambda x: x.shape, variables['params'])
  assert sorted(shapes) == [f'conv{k}' for k in range(1, 6)]
  assert shapes['conv2']['insnorm'] == {'scale': (128,), 'bias': (128,)}  # Shared by all inputs.
  assert 'insnorm' not in shapes['conv1'] and 'insnorm' not in shapes['conv5']


def test_generator_layout_follows_the_blocks():
  """IN on encoder blocks 2..n-1 and decoder blocks 1..n-1, per modality (M, C); transposed
  kernels are (kh, kw, out, in)."""
  shapes = jax.tree.map(lambda x: x.shape, abstract_generator(3, SIZE, **SMALL)['params'])
  assert sorted(shapes) == sorted(GENERATOR_BLOCKS[:7] + [f'deconv{k}' for k in range(1, 7)])
  assert [k for k in range(1, 7) if 'insnorm_conv' in shapes[f'conv{k}']] == [2, 3, 4, 5]
  assert [k for k in range(1, 7) if 'insnorm_deconv' in shapes[f'deconv{k}']] == [1, 2, 3, 4, 5]
  assert shapes['conv3']['insnorm_conv']['scale'] == (3, 32)
  assert shapes['conv6']['conv']['kernel'] == (4, 4, 64, 64)  # Widths stop growing at 8 * ngf.
  assert shapes['deconv5']['deconv']['kernel'] == (4, 4, 8, 32)  # [dec 16, enc 16] -> 8.
  assert shapes['deconv6']['deconv']['kernel'] == (4, 4, 3, 16)
  assert shapes['alpha'] == (3,)


@pytest.fixture(scope='module')
def small():
  """A 2-modality small generator with fusion, its initial params, inputs and jitted apply."""
  model = UNetGenerator(2, **SMALL)
  x = jax.random.uniform(jax.random.key(1), (2, 2, SIZE, SIZE, 3), minval=-1, maxval=1)
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  apply = jax.jit(model.apply, static_argnames='train')
  return model, params, x, apply


def test_init_follows_pix2pix_and_pytorch(small):
  """Kernels N(0, 0.02), biases U(+-1/sqrt(fan_in)) with PyTorch's fan_in (out * 16 for a
  transposed conv), IN scale 1 and bias 0, alpha 1, all float32."""
  _, params, _, _ = small
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  kernels = np.concatenate([np.ravel(params[b][c]['kernel']) for b, c in (
      ('conv4', 'conv'), ('conv5', 'conv'), ('deconv2', 'deconv'), ('deconv3', 'deconv'))])
  assert abs(kernels.std() - 0.02) < 0.001 and abs(kernels.mean()) < 0.001
  conv_bias = np.abs(params['conv4']['conv']['bias'])  # 32 -> 64 channels.
  assert conv_bias.max() <= 1 / math.sqrt(32 * 16) and conv_bias.max() > 0.5 / math.sqrt(32 * 16)
  deconv_bias = np.abs(params['deconv5']['deconv']['bias'])  # 32 -> 8 channels.
  assert deconv_bias.max() <= 1 / math.sqrt(8 * 16)
  assert deconv_bias.max() > 1 / math.sqrt(32 * 16)  # Not the Conv2d rule.
  norm = params['deconv1']['insnorm_deconv']
  np.testing.assert_array_equal(norm['scale'], np.ones((2, 64)))
  np.testing.assert_array_equal(norm['bias'], np.zeros((2, 64)))
  np.testing.assert_array_equal(params['alpha'], np.ones(2))


def test_outputs_branches_and_ensemble(small):
  model, params, x, apply = small
  params = {**params, 'alpha': jnp.array([0.3, -0.4])}
  out = apply({'params': params}, x)
  assert out.shape == (3, 2, SIZE, SIZE, 3) and out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out))) <= 1
  weights = jax.nn.softmax(params['alpha'])
  np.testing.assert_allclose(out[2], weights[0] * out[0] + weights[1] * out[1], atol=1e-6)

  # Only alpha learns from the ensemble: the branches enter it through stop_gradient.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x)[2] ** 2)))(params)
  assert float(jnp.max(jnp.abs(grads['alpha']))) > 0
  assert all(float(jnp.max(jnp.abs(g))) == 0
             for name, g in jax.tree_util.tree_leaves_with_path(grads)
             if jax.tree_util.keystr(name) != "['alpha']")


def test_dropout_only_in_training(small):
  _, params, x, apply = small
  variables = {'params': params}
  evaluation = apply(variables, x)
  np.testing.assert_array_equal(apply(variables, x, train=False), evaluation)
  first = apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
  second = apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert float(jnp.max(jnp.abs(first - evaluation))) > 1e-3
  assert float(jnp.max(jnp.abs(first - second))) > 1e-3
  # With no dropout the training pass is the evaluation pass: IN has no train/eval modes.
  no_dropout = UNetGenerator(2, **SMALL, dropout_rate=0.0)
  np.testing.assert_allclose(no_dropout.apply(variables, x, train=True), evaluation, atol=1e-6)


def test_fusion_changes_only_multimodal_outputs(small):
  """Fusion mixes the modalities at M >= 2 and is skipped at M = 1 (where the roll of the
  shifted features would add a modality's own features to itself)."""
  _, params, x, apply = small
  plain = UNetGenerator(2, **SMALL, fusion='none').apply({'params': params}, x)
  assert float(jnp.max(jnp.abs(plain - apply({'params': params}, x)))) > 1e-2

  # The one-modality generator with modality 0's norms and alpha computes branch 0 of the
  # unfused two-modality one, with fusion on or off.
  def first_row(path, leaf):
    name = jax.tree_util.keystr(path)
    return leaf[:1] if 'insnorm' in name or 'alpha' in name else leaf
  single = {'params': jax.tree_util.tree_map_with_path(first_row, params)}
  fused = UNetGenerator(1, **SMALL).apply(single, x[:1])
  unfused = UNetGenerator(1, **SMALL, fusion='none').apply(single, x[:1])
  np.testing.assert_array_equal(fused, unfused)
  np.testing.assert_allclose(fused[0], plain[0], atol=1e-6)


def test_fusion_follows_the_in_of_the_named_blocks(small):
  """Block 3's output with fusion on block 3 is fusion.fuse of its output without."""
  _, params, x, _ = small
  def block3(fusion_blocks):
    model = UNetGenerator(2, **{**SMALL, 'fusion_blocks': fusion_blocks})
    _, state = model.apply({'params': params}, x, capture_intermediates=True)
    return state['intermediates']['conv3']['__call__'][0]
  expected = fusion.channel_shuffle(block3((2,))) + jnp.roll(
      fusion.pixel_shift(block3((2,))), -1, axis=0)
  np.testing.assert_allclose(block3((2, 3)), expected, atol=1e-6)


@pytest.mark.parametrize('shape,message', [
    ((2, 1, 64, 48, 3), r'divisible by 2\*\*num_downs = 64, got H x W = 64 x 48'),
    ((2, 1, 96, 64, 3), r'divisible by 2\*\*num_downs = 64, got H x W = 96 x 64'),
    ((3, 1, 64, 64, 3), r'num_modalities=2\) expects input of shape \(M=2'),
])
def test_generator_rejects_bad_inputs(shape, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: UNetGenerator(2, **SMALL).init(jax.random.key(0), jnp.zeros(shape)))


def test_generator_rejects_fusion_blocks_without_norm():
  model = UNetGenerator(2, ngf=8, num_downs=6)  # The default blocks 2..7 are for 8 levels.
  with pytest.raises(ValueError, match=r'blocks \[6, 7\] without an InstanceNorm; with '
                                       r'num_downs=6 choose from 2\.\.5'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 1, 64, 64, 3))))
  unfused = UNetGenerator(2, ngf=8, num_downs=6, fusion='none')  # Ignored without fusion.
  jax.eval_shape(lambda: unfused.init(jax.random.key(0), jnp.zeros((2, 1, 64, 64, 3))))


def test_bfloat16_compute_keeps_float32_params_and_outputs(small):
  _, params, x, apply = small
  model = UNetGenerator(2, **SMALL, dtype=jnp.bfloat16)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(abstract))
  out = jax.jit(model.apply)({'params': params}, x)
  assert out.dtype == jnp.float32
  reference = apply({'params': params}, x)
  error = float(jnp.max(jnp.abs(out - reference)))
  assert 0 < error < 0.1, error
  assert float(jnp.mean(jnp.abs(out - reference))) < 0.01

  discriminator = PatchDiscriminator(8, dtype=jnp.bfloat16)
  pair = jnp.concatenate([x[0], reference[0]], axis=-1)
  d_params = discriminator.init(jax.random.key(0), pair)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(d_params))
  logits = discriminator.apply(d_params, pair)
  assert logits.dtype == jnp.float32
  reference_logits = PatchDiscriminator(8).apply(d_params, pair)
  np.testing.assert_allclose(logits, reference_logits, atol=0.05 * float(
      jnp.max(jnp.abs(reference_logits))))


def test_discriminator_returns_patch_logits():
  x = jax.random.normal(jax.random.key(0), (2, 64, 96, 6))
  model = PatchDiscriminator(ndf=8)
  variables = model.init(jax.random.key(1), x)
  logits = model.apply(variables, x)
  assert logits.shape == (2, 6, 10, 1) and logits.dtype == jnp.float32
  assert float(jnp.min(logits)) < 0 or float(jnp.max(logits)) > 1  # Logits, not probabilities.


def test_instance_norms_use_each_images_own_statistics():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 3, 5, 4, 6))
  y = ModalInstanceNorm(2).apply({'params': {'scale': jnp.ones((2, 6)),
                                             'bias': jnp.zeros((2, 6))}}, x)
  np.testing.assert_allclose(jnp.mean(y, axis=(2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(jnp.var(y, axis=(2, 3)), 1, atol=1e-3)
  scale, bias = jnp.arange(1.0, 7.0), jnp.arange(6.0)
  z = InstanceNorm().apply({'params': {'scale': scale, 'bias': bias}}, x[0])
  np.testing.assert_allclose(z, y[0] * scale + bias, atol=1e-5)
  with pytest.raises(ValueError, match=r'ModalInstanceNorm\(num_modalities=3\)'):
    ModalInstanceNorm(3).init(jax.random.key(0), x)


def translation_config(**model):
  c = ml_collections.ConfigDict()
  c.modalities = ('reshading', 'depth_euclidean', 'normal')
  c.compute_dtype = 'bfloat16'
  c.model = ml_collections.ConfigDict({
      'name': 'unet', 'ngf': 16, 'ndf': 32, 'num_downs': 7, 'fusion': 'none',
      'fusion_blocks': [2, 3], 'dropout_rate': 0.25, 'kernels': 'auto', **model})
  return c


def test_builders_follow_the_config():
  generator = models.build_generator(translation_config())
  assert generator == UNetGenerator(num_modalities=3, ngf=16, num_downs=7, fusion='none',
                                    fusion_blocks=(2, 3), dropout_rate=0.25, dtype=jnp.bfloat16)
  assert models.build_discriminator(translation_config()) == PatchDiscriminator(
      ndf=32, dtype=jnp.bfloat16)
  assert models.MODELS['unet'] is models.build_generator
  assert models.build_model(translation_config()) == generator  # Through the registry.
  with pytest.raises(ValueError, match=r"config.model.name='unet3d' is not a model: choose one "
                                       r"of \('refinenet', 'deeplab', 'unet'\)"):
    models.build_model(translation_config(name='unet3d'))
