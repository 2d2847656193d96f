"""The fusion baselines (docs/method.md section 12): Concat, Average, Attention and late fusion.

Each aggregation is checked against a NumPy statement of its formula, with random parameters;
their placement in the U-Net and the ResNet, the parameter counts of every variant (from
jax.eval_shape, nothing compiled), the config values, and a few training steps of each variant
with finite losses.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from asymfusion_jax import config_lib, fusion, validation
from asymfusion_jax.models import RefineNet, UNetGenerator
from asymfusion_jax.models import build_deeplab, build_discriminator, build_generator
from asymfusion_jax.models.unet import EncoderBlock
from asymfusion_jax.tasks import base
from asymfusion_jax.tasks.segmentation import task as segmentation
from asymfusion_jax.tasks.segmentation import validation as segmentation_validation
from asymfusion_jax.tasks.translation import task as translation
from asymfusion_jax.tasks.translation import validation as translation_validation
from tests import test_config_lib

BASELINES = ('concat', 'average', 'attention', 'late')


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# NumPy statements of the formulas of docs/method.md section 12, y: (M, B, H, W, C).

def numpy_concat(y, kernel, bias):
  """y_m <- conv1x1(concat_m y_m) + bias, the same for every m; kernel (M * C, C)."""
  stacked = np.concatenate([y[m] for m in range(y.shape[0])], axis=-1)
  out = np.einsum('bhwi,io->bhwo', stacked, kernel) + bias
  return np.stack([out] * y.shape[0])


def numpy_average(y):
  return np.stack([y.mean(axis=0)] * y.shape[0])


def numpy_attention(y, scorer):
  """Per pixel w = softmax_m(y_m . scorer); y_m <- sum_m w_m y_m; scorer (C,)."""
  scores = np.einsum('mbhwc,c->mbhw', y, scorer)
  weights = np.exp(scores - scores.max(axis=0))
  weights /= weights.sum(axis=0)
  out = np.einsum('mbhw,mbhwc->bhwc', weights, y)
  return np.stack([out] * y.shape[0])


@pytest.mark.parametrize('num_modalities', [2, 3])
@pytest.mark.parametrize('method', fusion.AGGREGATIONS)
def test_aggregation_matches_numpy(method, num_modalities):
  rng = np.random.default_rng(num_modalities)
  channels = 6
  y = rng.normal(size=(num_modalities, 2, 3, 4, channels)).astype(np.float32)
  module = fusion.Aggregation(method)
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                        module.init(jax.random.key(0), y).get('params', {}))
  got = np.asarray(module.apply({'params': params}, y))
  if method == 'concat':
    assert params['conv']['kernel'].shape == (1, 1, num_modalities * channels, channels)
    want = numpy_concat(y, params['conv']['kernel'][0, 0], params['conv']['bias'])
  elif method == 'average':
    assert not params
    want = numpy_average(y)
  else:
    assert params['scorer']['kernel'].shape == (1, 1, channels, 1)  # No bias.
    want = numpy_attention(y, params['scorer']['kernel'][0, 0, :, 0])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', ['concat', 'attention'])
def test_learned_aggregations_start_as_the_average(method):
  y = np.random.default_rng(0).normal(size=(3, 1, 2, 2, 5)).astype(np.float32)
  module = fusion.Aggregation(method)
  out = module.apply(module.init(jax.random.key(0), y), y)
  np.testing.assert_allclose(out, numpy_average(y), rtol=1e-6, atol=1e-6)


def test_method_reads_the_names_only():
  """One spelling per method: the names of METHODS; booleans are refused."""
  assert [fusion.method(m) for m in fusion.METHODS] == list(fusion.METHODS)
  for bad in ('concatenate', 1, None, True, False, 'True', 'false'):
    with pytest.raises(ValueError, match='unknown fusion'):
      fusion.method(bad)


# Parameter counts (README, "Fusion baselines"): the paper-size U-Net at 256x256 and
# RefineNet-101 with 40 classes. 'asym', 'none' and 'average' add nothing; 'late' drops alpha.
UNET_COUNTS = {
    2: {'asym': 54_429_317, 'none': 54_429_317, 'concat': 56_692_741, 'average': 54_429_317,
        'attention': 54_431_749, 'late': 54_429_315},
    3: {'asym': 54_439_174, 'none': 54_439_174, 'concat': 57_833_094, 'average': 54_439_174,
        'attention': 54_441_606, 'late': 54_439_171},
}
REFINENET_COUNTS = {
    2: {'asym': 118_201_578, 'none': 118_201_578, 'concat': 129_346_538,
        'average': 118_201_578, 'attention': 118_205_418, 'late': 118_201_576},
    3: {'asym': 118_306_923, 'none': 118_306_923, 'concat': 135_022_443,
        'average': 118_306_923, 'attention': 118_310_763, 'late': 118_306_920},
}


@pytest.mark.parametrize('num_modalities', [2, 3])
def test_generator_parameter_counts(num_modalities):
  got = {}
  for method in fusion.METHODS:
    model = UNetGenerator(num_modalities, fusion=method)
    probe = jnp.zeros((num_modalities, 1, 256, 256, 3))
    got[method] = count(jax.eval_shape(lambda: model.init(jax.random.key(0), probe)))  # pylint: disable=cell-var-from-loop
  assert got == UNET_COUNTS[num_modalities]


@pytest.mark.parametrize('num_modalities', [2, 3])
def test_refinenet_parameter_counts(num_modalities):
  got = {}
  for method in fusion.METHODS:
    model = RefineNet(depth=101, num_modalities=num_modalities, fusion=method)
    probe = jnp.zeros((num_modalities, 1, 64, 64, 3))
    got[method] = count(jax.eval_shape(lambda: model.init(jax.random.key(0), probe))['params'])  # pylint: disable=cell-var-from-loop
  assert got == REFINENET_COUNTS[num_modalities]


def test_parameter_layout_of_the_baselines():
  """'asym' and 'none' keep the layout that checkpoints and converted weights have; the
  aggregations sit in the fusion blocks only; 'late' has no alpha."""
  def shapes(model, m, size):
    probe = jnp.zeros((m, 1, size, size, 3))
    tree = jax.eval_shape(lambda: model.init(jax.random.key(0), probe))['params']
    return jax.tree_util.tree_flatten_with_path(tree)[0]

  def names(leaves):
    return sorted(jax.tree_util.keystr(p) for p, _ in leaves)

  small = dict(ngf=8, num_downs=6, fusion_blocks=(2, 4))
  plain = names(shapes(UNetGenerator(2, fusion='none', **small), 2, 64))
  assert names(shapes(UNetGenerator(2, fusion='asym', **small), 2, 64)) == plain
  assert names(shapes(UNetGenerator(2, fusion='average', **small), 2, 64)) == plain
  concat = shapes(UNetGenerator(2, fusion='concat', **small), 2, 64)
  extra = sorted((jax.tree_util.keystr(p), x.shape) for p, x in concat
                 if 'aggregate' in jax.tree_util.keystr(p))
  assert extra == [("['conv2']['aggregate']['conv']['bias']", (16,)),
                   ("['conv2']['aggregate']['conv']['kernel']", (1, 1, 32, 16)),
                   ("['conv4']['aggregate']['conv']['bias']", (64,)),
                   ("['conv4']['aggregate']['conv']['kernel']", (1, 1, 128, 64))]
  late = names(shapes(UNetGenerator(2, fusion='late', **small), 2, 64))
  assert late == [n for n in plain if n != "['alpha']"]

  tiny = dict(depth=26, num_classes=3, width=4, decoder_width=8)
  attention = shapes(RefineNet(num_modalities=3, fusion='attention', **tiny), 3, 32)
  scorers = sorted(jax.tree_util.keystr(p) for p, _ in attention
                   if 'aggregate' in jax.tree_util.keystr(p))
  assert scorers == [f"['backbone']['layer{s}_1']['aggregate']['scorer']['kernel']"
                     for s in range(1, 5)]  # The last block of each of the four stages.
  refinenet_late = names(shapes(RefineNet(num_modalities=2, fusion='late', **tiny), 2, 32))
  refinenet_none = names(shapes(RefineNet(num_modalities=2, fusion='none', **tiny), 2, 32))
  assert refinenet_late == [n for n in refinenet_none if n != "['alpha']"]


def test_encoder_block_aggregates_after_the_instance_norm():
  """A fusion block's output is the aggregate of what the block gives without fusion."""
  x = np.random.default_rng(2).normal(size=(3, 2, 8, 8, 4)).astype(np.float32)
  kwargs = dict(features=8, num_modalities=3, activation=True, norm=True)
  plain = EncoderBlock(fusion='none', **kwargs)
  params = plain.init(jax.random.key(0), x)['params']
  params['insnorm_conv']['scale'] = np.random.default_rng(3).uniform(
      0.5, 1.5, (3, 8)).astype(np.float32)  # Per-modality norms that differ.
  unfused = np.asarray(plain.apply({'params': params}, x))
  averaged = EncoderBlock(fusion='average', **kwargs).apply({'params': params}, x)
  np.testing.assert_allclose(averaged, numpy_average(unfused), rtol=1e-5, atol=1e-6)
  attention = EncoderBlock(fusion='attention', **kwargs)
  scorer = np.random.default_rng(4).normal(size=(1, 1, 8, 1)).astype(np.float32)
  got = attention.apply({'params': {**params, 'aggregate': {'scorer': {'kernel': scorer}}}}, x)
  np.testing.assert_allclose(got, numpy_attention(unfused, scorer[0, 0, :, 0]), rtol=1e-5,
                             atol=1e-6)


def test_late_fusion_ensemble_is_the_plain_mean_with_gradient():
  small = dict(ngf=4, num_downs=4)
  x = jax.random.uniform(jax.random.key(1), (2, 1, 16, 16, 3), minval=-1, maxval=1)
  model = UNetGenerator(2, fusion='late', **small)
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  out = jax.jit(model.apply)({'params': params}, x)
  np.testing.assert_allclose(out[2], (out[0] + out[1]) / 2, rtol=1e-6, atol=1e-7)
  # The branches are those of the unfused model with the same weights.
  plain = UNetGenerator(2, fusion='none', **small)
  np.testing.assert_allclose(
      jax.jit(plain.apply)({'params': {**params, 'alpha': jnp.ones(2)}}, x)[:2], out[:2],
      rtol=1e-6, atol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x)[2])))(params)
  assert float(jnp.abs(grads['conv1']['conv']['kernel']).sum()) > 0


def test_configs_take_the_method_names(tmp_path):
  """Config files hold the method's name, so --config.model.fusion=concat overrides it; the
  checks accept the names, and name a wrong value (a boolean included). DeepLab takes 'asym' or
  'none' only, and says so."""
  for name, value in (('nyudv2_refinenet101', 'concat'), ('taskonomy_shade_depth', 'late')):
    result = test_config_lib.run_python("""
        from absl import app
        from asymfusion_jax import config_lib
        flag = config_lib.DEFINE_config_file('config')
        app.run(lambda argv: print(repr(flag.value.model.fusion)))
        """, tmp_path, f'--config=configs/{name}.py', f'--config.model.fusion={value}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(value)
  assert config_lib.get_config('nyudv2_refinenet101_nofusion').model.fusion == 'none'
  assert config_lib.get_config('demo_translation:nofusion').model.fusion == 'none'

  segmentation_config = config_lib.get_config('nyudv2_refinenet101')
  translation_config = config_lib.get_config('taskonomy_shade_normal_edge')
  for value in fusion.METHODS:
    segmentation_config.model.fusion = value
    translation_config.model.fusion = value
    segmentation_validation.check_config(segmentation_config)
    translation_validation.check_config(translation_config)
  for check, config in ((segmentation_validation.check_config, segmentation_config),
                        (translation_validation.check_config, translation_config)):
    for bad in ('mmf', True):
      as_dict = config.to_dict()
      as_dict['model']['fusion'] = bad
      with pytest.raises(validation.ConfigError,
                         match=rf"config.model.fusion={bad!r} must be one of"):
        check(ml_collections.ConfigDict(as_dict))

  deeplab = config_lib.get_config('cityscapes_deeplab_xception65').to_dict()
  assert build_deeplab(ml_collections.ConfigDict(deeplab)).fusion is True
  deeplab['model']['fusion'] = 'none'
  assert build_deeplab(ml_collections.ConfigDict(deeplab)).fusion is False
  deeplab['model']['fusion'] = 'concat'
  with pytest.raises(ValueError, match="fusion='concat'"):
    build_deeplab(ml_collections.ConfigDict(deeplab))
  with pytest.raises(validation.ConfigError,
                     match=r"config.model.fusion='concat' must be 'asym' or 'none': DeepLab has "
                           r'AsymFusion or no fusion; the fusion baselines are built for '
                           r'RefineNet and the translation U-Net'):
    segmentation_validation.check_config(ml_collections.ConfigDict(deeplab))


@pytest.mark.parametrize('method', BASELINES)
def test_translation_baselines_train_with_finite_losses(method):
  """Three steps of the real D-then-G step on a tiny generator (4 levels, 32x32, ngf 4; the
  discriminator's five convs need 32 pixels)."""
  config = config_lib.get_config('demo_translation')
  config.model.fusion = method
  config.model.ngf, config.model.ndf, config.model.num_downs = 4, 4, 4
  config.model.fusion_blocks = (2, 3)
  params = jax.jit(lambda key: translation.init_params(config, key))(jax.random.key(0))
  tx = translation.make_optimizer(config)
  state = base.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                          opt_state={k: tx.init(v) for k, v in params.items()},
                          rng=jax.random.key(1))
  step = jax.jit(lambda s, b: translation.train_step(
      s, b, generator=build_generator(config), discriminator=build_discriminator(config),
      tx=tx, l1_weight=100.0))
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.uniform(-1, 1, (2, 1, 32, 32, 3)).astype(np.float32),
           'target': rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)}
  first = params['generator']
  for _ in range(3):
    state, metrics = step(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  if method in ('concat', 'attention'):  # The first aggregation learns (block 3 sees inputs
    # that block 2 made equal but for the per-modality IN; at init those are equal too).
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           first['conv2']['aggregate'],
                           state.params['generator']['conv2']['aggregate'])
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize('method', ['concat', 'late'])
def test_segmentation_baselines_train_with_finite_losses(method):
  """Three SGD steps of a tiny RefineNet (ResNet-26, width 4) with the baseline.

  Each compile of the tiny RefineNet's step takes 20 s or more on two cores, so this runs the
  two paths that are new to RefineNet: an aggregation at the four fusion points (concat, the
  one with the most parameters; 'average' and 'attention' take the same path with another
  Aggregation, which the translation test trains) and the late ensemble.
  """
  model = RefineNet(depth=26, num_classes=3, num_modalities=2, fusion=method, width=4,
                    decoder_width=8, frozen_bn=True)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(2, 2, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 3, (2, 32, 32)).astype(np.int32)}
  variables = jax.jit(model.init)(jax.random.key(0), batch['image'])
  tx = optax.sgd(0.01, momentum=0.9)
  state = base.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                          batch_stats=variables['batch_stats'],
                          opt_state=tx.init(variables['params']), rng=jax.random.key(1))
  step = jax.jit(lambda s, b: segmentation.train_step(s, b, model=model, tx=tx,
                                                      ignore_label=255))
  for _ in range(3):
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss']))
  if method in fusion.AGGREGATIONS and method != 'average':
    first = variables['params']['backbone']['layer4_1']['aggregate']
    last = state.params['backbone']['layer4_1']['aggregate']
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), first, last)))


def test_torchvision_weights_convert_for_a_baseline_config(tmp_path):
  """A torchvision ResNet converts for a Concat config (the aggregations, which torchvision
  lacks, keep their initialisation when the file is loaded) as for AsymFusion."""
  import torch  # pylint: disable=g-import-not-at-top
  from asymfusion_jax import convert, variables_io  # pylint: disable=g-import-not-at-top
  from tests import test_convert  # pylint: disable=g-import-not-at-top
  state_dict = test_convert.torchvision_layout(test_convert.reference_state_dict(1))
  torch.save({'state_dict': state_dict}, tmp_path / 'resnet.pth')
  convert.convert_file(str(tmp_path / 'resnet.pth'), test_convert.tiny_config(**{
      'model.fusion': 'concat'}), str(tmp_path / 'out'))
  backbone = convert.resnet_from_torch(state_dict, 2)
  test_convert.assert_trees_equal(
      variables_io.load_variables(tmp_path / 'out'),
      {name: {'backbone': backbone[name]} for name in ('params', 'batch_stats')})
