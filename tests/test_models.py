"""Model structure: exact parameter counts (docs/method.md section 7), shapes, per-modality BN
and fusion."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asymfusion_jax.models import ModalBatchNorm, RefineNet, ResNet

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
