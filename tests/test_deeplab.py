"""DeepLabv3+ / Xception-65 (models.deeplab): parameter counts, shapes, and the TF-DeepLab import
(convert.deeplab_from_tf) checked against a TensorFlow network built here from tf.nn ops.

The reference network, `TFDeepLab`, is written from TF-DeepLab's core/xception.py and model.py
(not from our Flax code): it creates its variables under TF-DeepLab's names as it runs, so the
checkpoint it saves has exactly the names and TF layouts (depthwise kernels (k, k, C, 1)) that
the import must map. It has the real structure at small widths (width_divisor) and two middle
flow units instead of 16.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from asymfusion_jax import convert, export, variables_io
from asymfusion_jax.data.cityscapes import layout as cityscapes
from asymfusion_jax.models import DeepLab, build_model, random_variables
from asymfusion_jax.tasks.segmentation import task as segmentation
from configs import cityscapes_deeplab_xception65, cityscapes_deeplab_xception65_rgb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(width_divisor=8, middle_flow_units=2, num_classes=5)
HEIGHT, WIDTH = 129, 97
# The OS 8 comparison runs at an even size, where TF-DeepLab's fixed padding of the strided
# convolutions (1 before, 1 after) differs from TF's 'SAME' (0 before, 1 after); at 129x97 every
# strided layer sees an odd size, where they agree.
SIZES = {16: (HEIGHT, WIDTH), 8: (HEIGHT + 1, WIDTH + 1)}


def count_params(model, num_modalities):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((num_modalities, 1, 65, 65, 3))))
  return {name: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))
          for name, tree in variables['params'].items()}


@pytest.mark.parametrize('num_modalities,expected', [
    (1, 41_054_899), (2, 41_257_699), (3, 41_460_499)])
def test_parameter_counts(num_modalities, expected):
  """docs/method.md section 13's count at M = 1; every extra modality adds BN scale and offset."""
  counts = count_params(DeepLab(num_classes=19, num_modalities=num_modalities), num_modalities)
  assert counts.pop('alpha') == num_modalities  # The ensemble weights, not in TF-DeepLab.
  assert sum(counts.values()) == expected
  if num_modalities == 1:
    assert counts['backbone'] == 37_867_312
    aspp = ('image_pooling', 'aspp0', 'aspp1', 'aspp2', 'aspp3', 'concat_projection')
    assert sum(counts[k] for k in aspp) == 3_019_776
    decoder = ('decoder_feature_projection0', 'decoder_conv0', 'decoder_conv1')
    assert sum(counts[k] for k in decoder) == 162_928
    assert counts['logits_semantic'] == 4_883


# The TensorFlow reference.


class TFDeepLab:
  """TF-DeepLab's xception_65 + DeepLabv3+ in eval mode, from tf.nn ops, at M = 1.

  Variables are created on first use under TF-DeepLab's names, with random values (BatchNorm
  statistics included), from `seed`.
  """

  def __init__(self, num_classes, width_divisor, middle_flow_units, seed=0):
    self.num_classes, self.div, self.middle = num_classes, width_divisor, middle_flow_units
    self.rng = np.random.default_rng(seed)
    self.variables = {}

  def var(self, name, shape, fan_in=None):
    if name not in self.variables:
      if fan_in is not None:
        value = self.rng.normal(0, np.sqrt(2.0 / fan_in), shape)
      elif name.endswith(('gamma', 'moving_variance')):
        value = self.rng.uniform(0.5, 1.5, shape)
      else:
        value = self.rng.normal(0, 0.2, shape)
      self.variables[name] = value.astype(np.float32)
    assert self.variables[name].shape == tuple(shape), name
    return tf.constant(self.variables[name])

  def batch_norm(self, x, scope, eps):
    c = x.shape[-1]
    return tf.nn.batch_normalization(
        x, self.var(f'{scope}/BatchNorm/moving_mean', [c]),
        self.var(f'{scope}/BatchNorm/moving_variance', [c]),
        self.var(f'{scope}/BatchNorm/beta', [c]), self.var(f'{scope}/BatchNorm/gamma', [c]), eps)

  @staticmethod
  def fixed_padding(x, kernel, rate):
    total = kernel + (kernel - 1) * (rate - 1) - 1
    beg = total // 2
    return tf.pad(x, [[0, 0], [beg, total - beg], [beg, total - beg], [0, 0]])

  def conv(self, x, depth, kernel, scope, stride=1, eps=1e-3, relu=True, explicit=True):
    """slim.conv2d + BN (+ ReLU); resnet_utils.conv2d_same's explicit padding when strided."""
    w = self.var(f'{scope}/weights', [kernel, kernel, x.shape[-1], depth],
                 kernel * kernel * x.shape[-1])
    if stride > 1 and explicit:
      x = tf.nn.conv2d(self.fixed_padding(x, kernel, 1), w, stride, 'VALID')
    else:
      x = tf.nn.conv2d(x, w, stride, 'SAME')
    x = self.batch_norm(x, scope, eps)
    return tf.nn.relu(x) if relu else x

  def separable(self, x, depth, scope, stride=1, rate=1, eps=1e-3, relu=False):
    """separable_conv2d_same: depthwise + BN [+ ReLU], pointwise + BN [+ ReLU]."""
    c = x.shape[-1]
    w = self.var(f'{scope}_depthwise/depthwise_weights', [3, 3, c, 1], 9)
    if stride > 1:
      x = tf.nn.depthwise_conv2d(self.fixed_padding(x, 3, rate), w, [1, stride, stride, 1],
                                 'VALID')
    else:
      x = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], 'SAME', dilations=[rate, rate])
    x = self.batch_norm(x, f'{scope}_depthwise', eps)
    if relu:
      x = tf.nn.relu(x)
    x = tf.nn.conv2d(x, self.var(f'{scope}_pointwise/weights', [1, 1, c, depth], c), 1, 'SAME')
    x = self.batch_norm(x, f'{scope}_pointwise', eps)
    return tf.nn.relu(x) if relu else x

  def xception_module(self, x, depths, skip, stride, rate, relu_inside, scope):
    residual, end_points = x, {}
    for i in range(3):
      if not relu_inside:
        residual = tf.nn.relu(residual)
      name = f'{scope}/separable_conv{i + 1}'
      residual = self.separable(residual, depths[i], name, stride if i == 2 else 1, rate,
                                relu=relu_inside)
      end_points[f'{name}_pointwise'] = residual
    if skip == 'conv':
      residual += self.conv(x, depths[-1], 1, f'{scope}/shortcut', stride, relu=False,
                            explicit=False)
    elif skip == 'sum':
      residual += x
    return residual, end_points

  def xception_65(self, x, output_stride):
    d = lambda n: n // self.div
    blocks = [
        ('entry_flow/block1', [d(128)] * 3, 'conv', 1, 2, False),
        ('entry_flow/block2', [d(256)] * 3, 'conv', 1, 2, False),
        ('entry_flow/block3', [d(728)] * 3, 'conv', 1, 2, False),
        ('middle_flow/block1', [d(728)] * 3, 'sum', self.middle, 1, False),
        ('exit_flow/block1', [d(728), d(1024), d(1024)], 'conv', 1, 2, False),
        ('exit_flow/block2', [d(1536), d(1536), d(2048)], 'none', 1, 1, True),
    ]
    output_stride //= 2  # The root block's stride, as xception_65 does.
    x = self.conv(x, d(32), 3, 'xception_65/entry_flow/conv1_1', stride=2)
    x = self.conv(x, d(64), 3, 'xception_65/entry_flow/conv1_2')
    current_stride, rate, end_points = 1, 1, {}
    for scope, depths, skip, units, stride, relu_inside in blocks:  # stack_blocks_dense
      for i in range(units):
        unit_scope = f'xception_65/{scope}/unit_{i + 1}/xception_module'
        if current_stride == output_stride:
          x, ends = self.xception_module(x, depths, skip, 1, rate, relu_inside, unit_scope)
          rate *= stride
        else:
          x, ends = self.xception_module(x, depths, skip, stride, 1, relu_inside, unit_scope)
          current_stride *= stride
        end_points.update(ends)
    return x, end_points

  def __call__(self, image, output_stride=16):
    height, width = image.shape[1:3]
    resize = lambda t, size: tf.compat.v1.image.resize_bilinear(t, size, align_corners=True)
    features, end_points = self.xception_65(image, output_stride)
    depth, eps = 256 // self.div, 1e-5
    pooled = tf.reduce_mean(features, [1, 2], keepdims=True)
    pooled = self.conv(pooled, depth, 1, 'image_pooling', eps=eps)
    branches = [resize(pooled, features.shape[1:3]),
                self.conv(features, depth, 1, 'aspp0', eps=eps)]
    rates = {16: (6, 12, 18), 8: (12, 24, 36)}[output_stride]
    for i, rate in enumerate(rates, 1):
      branches.append(self.separable(features, depth, f'aspp{i}', rate=rate, eps=eps, relu=True))
    y = self.conv(tf.concat(branches, 3), depth, 1, 'concat_projection', eps=eps)
    low = end_points['xception_65/entry_flow/block2/unit_1/xception_module/'
                     'separable_conv2_pointwise']
    size = [int((height - 1) / 4 + 1), int((width - 1) / 4 + 1)]  # scale_dimension
    parts = [resize(y, size),
             resize(self.conv(low, 48 // self.div, 1, 'decoder/feature_projection0', eps=eps),
                    size)]
    y = self.separable(tf.concat(parts, 3), depth, 'decoder/decoder_conv0', eps=eps, relu=True)
    y = self.separable(y, depth, 'decoder/decoder_conv1', eps=eps, relu=True)
    w = self.var('logits/semantic/weights', [1, 1, depth, self.num_classes], depth)
    logits = tf.nn.conv2d(y, w, 1, 'SAME') + self.var('logits/semantic/biases',
                                                         [self.num_classes])
    return resize(logits, [height, width]).numpy()


def save_tf_checkpoint(variables, prefix):
  """A name-based checkpoint as TF1's Saver writes it (PREFIX.index, PREFIX.data-*)."""
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(variables[n]) for n in names])
  return prefix


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(TF variables, checkpoint prefix, {output_stride: image}, {output_stride: TF logits}).

  M = 1; images of SIZES.
  """
  net = TFDeepLab(**SMALL)
  rng = np.random.default_rng(1)
  images = {os_: rng.uniform(-1, 1, (1, *size, 3)).astype(np.float32)
            for os_, size in SIZES.items()}
  logits = {os_: net(image, os_) for os_, image in images.items()}
  prefix = save_tf_checkpoint(net.variables,
                              str(tmp_path_factory.mktemp('tf_deeplab') / 'model.ckpt'))
  return net.variables, prefix, images, logits


@pytest.mark.parametrize('output_stride', [16, 8])
def test_matches_tensorflow_reference(reference, output_stride):
  _, prefix, images, expected = reference
  model = DeepLab(num_modalities=1, output_stride=output_stride, **SMALL)
  variables, skipped = convert.deeplab_from_tf(prefix, model)
  assert not skipped
  logits = jax.jit(lambda v, x: model.apply(v, x))(variables, images[output_stride][None])
  assert logits.shape == (2, 1, *SIZES[output_stride], SMALL['num_classes'])
  scale = np.abs(expected[output_stride]).max()
  for row in (0, 1):  # The branch and the ensemble of one branch.
    np.testing.assert_allclose(logits[row] / scale, expected[output_stride] / scale, atol=1e-4)


def test_every_variable_lands_where_it_belongs(reference):
  """Layouts by hand, at M = 2: depthwise (k, k, C, 1) -> (k, k, 1, C), BN rows per modality."""
  tf_vars, prefix, _, _ = reference
  variables, _ = convert.deeplab_from_tf(prefix, DeepLab(num_modalities=2, **SMALL))
  params, stats = variables['params'], variables['batch_stats']
  unit = params['backbone']['entry_flow_block2_unit_1']['separable_conv1']
  tf_unit = 'xception_65/entry_flow/block2/unit_1/xception_module/separable_conv1'
  depthwise = tf_vars[f'{tf_unit}_depthwise/depthwise_weights']  # (3, 3, C, 1)
  kernel = unit['depthwise']['conv']['kernel']
  assert kernel.shape == (3, 3, 1, depthwise.shape[2])
  np.testing.assert_array_equal(kernel[1, 2, 0, 5], depthwise[1, 2, 5, 0])
  np.testing.assert_array_equal(unit['pointwise']['conv']['kernel'],
                                tf_vars[f'{tf_unit}_pointwise/weights'])
  bn_stats = stats['backbone']['entry_flow_block2_unit_1']['separable_conv1']['pointwise']
  for m in range(2):
    np.testing.assert_array_equal(bn_stats['BatchNorm']['var'][m],
                                  tf_vars[f'{tf_unit}_pointwise/BatchNorm/moving_variance'])
    np.testing.assert_array_equal(params['aspp2']['depthwise']['BatchNorm']['scale'][m],
                                  tf_vars['aspp2_depthwise/BatchNorm/gamma'])
  np.testing.assert_array_equal(params['decoder_feature_projection0']['conv']['kernel'],
                                tf_vars['decoder/feature_projection0/weights'])
  np.testing.assert_array_equal(params['alpha'], np.ones(2))
  # Every TF value is used exactly once: the sum of all leaves matches (M = 2 BN rows twice).
  total = sum(float(np.sum(v)) * (2 if '/BatchNorm/' in k else 1) for k, v in tf_vars.items())
  leaves = jax.tree.leaves({'params': {k: v for k, v in params.items() if k != 'alpha'},
                            'batch_stats': stats})
  np.testing.assert_allclose(sum(float(np.sum(v)) for v in leaves), total, rtol=1e-5)


def test_backbone_checkpoint_loads_partially(reference, tmp_path):
  """An ImageNet-style checkpoint: backbone, its classifier, optimiser slots and a step."""
  tf_vars, _, _, _ = reference
  ckpt = {k: v for k, v in tf_vars.items() if k.startswith('xception_65/')}
  extra = {'xception_65/logits/weights': np.zeros((1, 1, 256, 1001), np.float32),
           'xception_65/logits/biases': np.zeros((1001,), np.float32),
           'global_step': np.array(7, np.int64),
           'xception_65/entry_flow/conv1_1/weights/Momentum': np.zeros((3, 3, 3, 4), np.float32)}
  prefix = save_tf_checkpoint({**ckpt, **extra}, str(tmp_path / 'model.ckpt'))
  model = DeepLab(num_modalities=2, **SMALL)
  variables, skipped = convert.deeplab_from_tf(prefix, model)
  assert sorted(skipped) == sorted(extra)
  assert set(variables['params']) == {'backbone'} and set(variables['batch_stats']) == {'backbone'}
  np.testing.assert_array_equal(
      variables['params']['backbone']['entry_flow_conv1_1']['conv']['kernel'],
      tf_vars['xception_65/entry_flow/conv1_1/weights'])


def test_config_init_tf_checkpoint_starts_a_run_from_tf_deeplab(reference):
  """config.init.tf_checkpoint: a run without a checkpoint starts from the TF-DeepLab model."""
  from asymfusion_jax import initialization  # pylint: disable=g-import-not-at-top
  from asymfusion_jax.tasks import TrainState  # pylint: disable=g-import-not-at-top
  _, prefix, _, _ = reference
  config = cityscapes_deeplab_xception65.get_config()
  config.model.width_divisor, config.model.middle_flow_units = 8, 2
  config.model.num_classes = SMALL['num_classes']
  config.init.tf_checkpoint = prefix
  model = build_model(config)
  fresh = jax.device_put(random_variables(model, (2, 1, 33, 33, 3)))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=fresh['params'],
                     batch_stats=fresh['batch_stats'], opt_state=(), rng=jnp.zeros((2,)))
  loaded = initialization.from_pretrained(state, config)
  expected, _ = convert.deeplab_from_tf(prefix, model)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params), expected['params'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.batch_stats),
               expected['batch_stats'])


def test_mismatches_are_listed_by_name(reference):
  tf_vars, _, _, _ = reference
  bad = dict(tf_vars)
  del bad['aspp1_depthwise/depthwise_weights']
  bad['aspp9/weights'] = np.zeros((1, 1, 2, 2), np.float32)
  bad['logits/semantic/biases'] = np.zeros((7,), np.float32)
  with pytest.raises(ValueError) as e:
    convert.deeplab_from_tf(bad, DeepLab(num_modalities=1, **SMALL))
  message = str(e.value)
  assert 'missing variables (1):\n    aspp1_depthwise/depthwise_weights' in message
  assert 'unexpected variables (1):\n    aspp9/weights' in message
  assert 'logits/semantic/biases: got (7,), expected (5,)' in message
  with pytest.raises(ValueError, match=r'xception_65/middle_flow/block1/unit_3'):
    convert.deeplab_from_tf(tf_vars, DeepLab(num_modalities=1, **{**SMALL,
                                                                    'middle_flow_units': 3}))


def test_multimodal_shapes_fusion_and_stride4_logits():
  """M = 2 on an odd size: input-size logits, stride-4 logits, fusion changes the branches."""
  x = jax.random.normal(jax.random.key(0), (2, 1, 37, 29, 3))
  fused = DeepLab(num_modalities=2, **SMALL)
  variables = random_variables(fused, x.shape)
  out = jax.jit(lambda v, x: fused.apply(v, x))(variables, x)
  assert out.shape == (3, 1, 37, 29, 5)
  plain = DeepLab(num_modalities=2, fusion=False, **SMALL)
  plain_out = jax.jit(lambda v, x: plain.apply(v, x))(variables, x)
  assert np.abs(np.asarray(out[:2] - plain_out[:2])).max() > 1e-4
  stride4 = DeepLab(num_modalities=2, upsample_logits=False, **SMALL)
  assert jax.eval_shape(stride4.apply, variables, x).shape == (3, 1, 10, 8, 5)
  with pytest.raises(ValueError, match='M=3'):
    DeepLab(num_modalities=3, **SMALL).init(jax.random.key(0), x)


def test_training_mode_traces():
  """Training: dropout rng, batch_stats updates, frozen BN, remat (traced only, no compile)."""
  x = jnp.zeros((2, 2, 37, 29, 3))
  model = DeepLab(num_modalities=2, remat='all', **SMALL)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))

  def loss(params, stats, frozen):
    v = {'params': params, 'batch_stats': stats}
    m = model.clone(frozen_bn=frozen)
    if frozen:
      return m.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)}).sum()
    out, updates = m.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)},
                           mutable=['batch_stats'])
    assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
        variables['batch_stats'])
    return out.sum()

  for frozen in (False, True):
    grads = jax.eval_shape(jax.grad(lambda p, s: loss(p, s, frozen)), variables['params'],
                           variables['batch_stats'])
    assert jax.tree.structure(grads) == jax.tree.structure(variables['params'])
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']), variables)


def test_build_model_dispatch():
  config = cityscapes_deeplab_xception65.get_config()
  model = build_model(config)
  assert isinstance(model, DeepLab) and model.num_modalities == 2 and model.num_classes == 19
  config.model.name = 'pspnet'
  with pytest.raises(ValueError, match="'pspnet'"):
    build_model(config)


def test_full_size_forward_small_input():
  """The real widths and 16 middle-flow units, M = 2 with fusion, on a small odd input."""
  model = DeepLab(num_classes=19, num_modalities=2)
  shape = (2, 1, 35, 33, 3)
  variables = random_variables(model, shape)
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  out = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
  assert out.shape == (3, 1, 35, 33, 19)
  assert np.isfinite(out).all() and out[:2].std() > 0
  assert np.abs(out[0] - out[1]).max() > 1e-3


def test_convert_and_export_cli(reference, tmp_path):
  """--tf_checkpoint writes the variables that export turns into input-size logits."""
  _, prefix, images, expected = reference
  config = os.path.join(REPO, 'configs', 'cityscapes_deeplab_xception65_rgb.py')
  overrides = [f'--config.model.{k}={v}' for k, v in SMALL.items()]
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  converted, artifact = str(tmp_path / 'converted'), str(tmp_path / 'deeplab.jax')
  subprocess.run([sys.executable, '-m', 'asymfusion_jax.convert', f'--tf_checkpoint={prefix}',
                  f'--config={config}', f'--out={converted}', *overrides], check=True, env=env,
                 cwd=REPO)
  direct, _ = convert.deeplab_from_tf(prefix, DeepLab(num_modalities=1, **SMALL))
  jax.tree.map(np.testing.assert_array_equal, variables_io.load_variables(converted), direct)
  subprocess.run([sys.executable, '-m', 'asymfusion_jax.export', f'--checkpoint={converted}',
                  f'--config={config}', f'--height={HEIGHT}', f'--width={WIDTH}',
                  '--platforms=cpu', f'--out={artifact}', *overrides], check=True, env=env,
                 cwd=REPO)
  with open(artifact, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  logits = np.asarray(exported.call(images[16][None]))
  assert logits.shape == (2, 1, HEIGHT, WIDTH, SMALL['num_classes'])
  scale = np.abs(expected[16]).max()
  np.testing.assert_allclose(logits[0] / scale, expected[16] / scale, atol=1e-4)
  with open(artifact + '.json') as f:
    meta = json.load(f)
  assert meta['output_stride'] == 1
  # The sidecar tells the Cityscapes input encoding, not NYUDv2's normalisation.
  assert meta['formula'] == {'rgb': cityscapes.INPUT_FORMULAS['rgb']}
  assert 'normalisation' not in meta
  np.testing.assert_allclose(cityscapes.rgb_input(np.asarray([[[0, 255, 51]]], np.uint8)),
                             [[[-1.0, 1.0, 51 / 127.5 - 1]]], rtol=1e-6)


def test_torch_export_is_refused(tmp_path):
  source = export.Source(cityscapes_deeplab_xception65_rgb.get_config(), {}, None, 'test')
  with pytest.raises(ValueError, match="'deeplab'.*--format=jax"):
    export.write_torch(source, str(tmp_path / 'deeplab.pth'))
  assert not os.listdir(tmp_path)
