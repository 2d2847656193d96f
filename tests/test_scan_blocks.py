"""config.model.scan_blocks: scanned models compute what the unscanned ones do, and variables,
train states and checkpoints move between the two layouts (models.scan_layout)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asymfusion_jax import checkpointing, config_lib, initialization, models, variables_io
from asymfusion_jax.models import ResNet, Xception65, random_variables, scan_layout

# Depth 32: stages of (2, 2, 4, 2) blocks; the third's blocks 1 and 2 are scanned, its last one
# fuses and stays apart. (models.random_variables gives the weights.)
GROUP = 'layer3_1_to_2'


def assert_trees_close(actual, expected, tolerance=1e-5):
  """Every leaf equal up to `tolerance` times its largest magnitude, plus 1e-7 times the tree's
  largest (float32 sums, which XLA may order differently in a loop body, differ in the last
  bits; gradients that are zero in exact arithmetic, such as a BatchNorm bias's before another
  train-mode BatchNorm, are rounding noise on the scale of the largest gradients)."""
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  largest = max((float(np.abs(e).max()) for e in jax.tree.leaves(expected)), default=0.0)

  def close(a, e):
    a, e = np.asarray(a), np.asarray(e)
    np.testing.assert_allclose(a, e, rtol=0,
                               atol=tolerance * float(np.abs(e).max()) + 1e-7 * largest)

  jax.tree.map(close, actual, expected)


def train_step(model, with_eval: bool = False):
  """The jitted ((loss, (outputs, batch_stats update)), gradients, eval-mode outputs or None)
  of a backbone (ResNet and Xception65 both take (x, use_running_average)), in one program."""
  def loss(variables, x):
    out, updates = model.apply(variables, x, False, mutable=['batch_stats'])
    return (sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out)),
            (out, updates['batch_stats']))

  def step(variables, x):
    value, grads = jax.value_and_grad(loss, has_aux=True)(variables, x)
    return value, grads, model.apply(variables, x, True) if with_eval else None

  return jax.jit(step)


def both_layouts(model, x):
  """(scanned model, unscanned variables, the same in the scanned layout)."""
  scanned = model.clone(scan_blocks=True)
  variables = jax.tree.map(jnp.asarray, random_variables(model, x.shape))
  like = jax.eval_shape(lambda: scanned.init(jax.random.key(0), x))
  return scanned, variables, scan_layout.to_layout(variables, like)


def check_equal(steps, variables, scanned_variables, x, groups):
  """The scanned model's outputs (train and eval mode), train-mode BatchNorm updates and
  gradients are the unscanned model's, given the same weights. steps: train_step of the
  unscanned and of the scanned model."""
  assert scan_layout.groups(scanned_variables) == groups
  (loss, (out, stats)), grads, evaluated = steps[False](variables, x)
  (loss_s, (out_s, stats_s)), grads_s, evaluated_s = steps[True](scanned_variables, x)
  assert scan_layout.groups(grads_s) == scan_layout.groups(stats_s) == groups
  assert_trees_close(out_s, out)
  assert_trees_close(evaluated_s, evaluated)
  assert_trees_close(scan_layout.canonical(stats_s), stats)
  assert_trees_close(scan_layout.canonical(grads_s), grads)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
  return grads, out


@pytest.fixture(scope='module')
def resnet():
  """(train_step of the unscanned and the scanned model, input, unscanned variables, scanned
  variables): the multimodal ResNet (M=2, AsymFusion, per-modality BatchNorm) of RefineNet."""
  x = jax.random.normal(jax.random.key(1), (2, 1, 32, 32, 3))
  model = ResNet(depth=32, width=4)
  scanned, variables, scanned_variables = both_layouts(model, x)
  steps = {False: train_step(model, with_eval=True), True: train_step(scanned, with_eval=True)}
  return steps, x, variables, scanned_variables


def test_resnet_scanned_equals_unscanned(resnet):
  steps, x, variables, scanned_variables = resnet
  grads, out = check_equal(steps, variables, scanned_variables, x, {GROUP})
  # Not vacuous: the scanned blocks matter (their gradients are not zero) ...
  assert float(jnp.abs(grads['params']['layer3_2']['conv2']['kernel']).max()) > 0
  # ... and swapping their two sets of weights changes the output.
  swapped = jax.tree.map(lambda a: a, scanned_variables)
  swapped['params'][GROUP] = jax.tree.map(lambda a: a[::-1], swapped['params'][GROUP])
  (_, (out_swapped, _)), _, _ = steps[True](swapped, x)
  assert not np.allclose(out_swapped['l4'], out['l4'], rtol=1e-3)


def test_scan_composes_with_remat(resnet):
  """config.model.remat's recomputation runs inside the scanned body (traced only)."""
  _, x, _, scanned_variables = resnet
  model = ResNet(depth=32, width=4, remat=True, scan_blocks=True)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, False, mutable=['batch_stats']))(
      scanned_variables)

  def scan_bodies(jaxpr):  # The bodies of the scans in `jaxpr`, however deeply nested.
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'scan':
        yield str(eqn.params['jaxpr'])
      for value in eqn.params.values():  # Jaxprs and closed jaxprs in other primitives.
        sub = getattr(value, 'jaxpr', value)
        if hasattr(sub, 'eqns'):
          yield from scan_bodies(sub)

  bodies = list(scan_bodies(jaxpr.jaxpr))
  assert bodies and all('remat' in b or 'checkpoint' in b for b in bodies)


def test_xception_scanned_equals_unscanned():
  model, x = Xception65(width_divisor=8, middle_flow_units=3), jax.random.normal(
      jax.random.key(2), (2, 1, 33, 33, 3))
  scanned, variables, scanned_variables = both_layouts(model, x)
  # The middle flow's units 1 and 2; unit 3 fuses and stays apart.
  check_equal({False: train_step(model), True: train_step(scanned)}, variables,
              scanned_variables, x, {'middle_flow_block1_unit_1_to_2'})


def test_configs_build_scanned_models():
  """config.model.scan_blocks reaches the backbones of RefineNet and DeepLab (shapes only)."""
  refinenet = config_lib.nyudv2_paper(depth=32, modalities=('rgb', 'depth'), fusion='asym')
  refinenet.model.width = refinenet.model.decoder_width = 8
  deeplab = config_lib.cityscapes_deeplab(modalities=('rgb', 'depth'))
  deeplab.model.width_divisor, deeplab.model.middle_flow_units = 8, 3
  expected = {id(refinenet): {GROUP}, id(deeplab): {'middle_flow_block1_unit_1_to_2'}}
  for config in (refinenet, deeplab):
    x = jnp.zeros((2, 1, 64, 64, 3))
    shapes = lambda: jax.eval_shape(lambda: models.build_model(config).init(
        jax.random.key(0), x))['params']
    assert scan_layout.groups(shapes()) == set()
    config.model.scan_blocks = True
    assert scan_layout.groups(shapes()['backbone']) == expected[id(config)]


def train_state(variables):
  """A train state as checkpointing sees it, with an optax state (masked, so with MaskedNode
  leaves) over the parameters."""
  labels = lambda params: {k: 'encoder' if k.startswith('layer') else 'decoder' for k in params}
  tx = optax.multi_transform({'encoder': optax.sgd(0.1, momentum=0.9),
                              'decoder': optax.adam(0.01)}, labels)
  params = variables['params']
  opt_state = tx.init(params)
  # Momentum and moments that differ from the parameters, so a misplaced leaf would show.
  opt_state = jax.tree.map(lambda a: a * 0.5 + 1.0, opt_state)
  return {'step': jnp.int32(7), 'params': params, 'batch_stats': variables['batch_stats'],
          'opt_state': opt_state, 'rng': jnp.arange(2, dtype=jnp.uint32)}


def test_layout_round_trip(resnet):
  _, _, variables, scanned_variables = resnet
  backbone, stacked = variables['params'], scanned_variables['params']
  assert 'layer3_1' not in stacked and 'layer3_3' in stacked and 'layer3_0' in stacked
  for i, block in enumerate(('layer3_1', 'layer3_2')):  # Stacked in block order.
    np.testing.assert_array_equal(stacked[GROUP]['conv1']['kernel'][i],
                                  backbone[block]['conv1']['kernel'])
    np.testing.assert_array_equal(scanned_variables['batch_stats'][GROUP]['bn2']['var'][i],
                                  variables['batch_stats'][block]['bn2']['var'])
  jax.tree.map(np.testing.assert_array_equal, scan_layout.canonical(scanned_variables), variables)
  # A whole train state, through the optimizer's namedtuples; host arrays and shapes alike.
  state = train_state(variables)
  scanned_state = scan_layout.to_layout(state, {GROUP})
  assert scan_layout.groups(scanned_state['opt_state']) == {GROUP}
  jax.tree.map(np.testing.assert_array_equal, scan_layout.canonical(scanned_state), state)
  host = jax.device_get(state)
  assert isinstance(scan_layout.to_layout(host, {GROUP})['params'][GROUP]['conv1']['kernel'],
                    np.ndarray)
  abstract = jax.eval_shape(lambda: scanned_state)
  assert jax.eval_shape(lambda: state) == scan_layout.canonical(abstract)
  # A group whose blocks are not all there cannot be formed.
  del host['params']['layer3_2']
  with pytest.raises(ValueError, match=r"layer3_1_to_2: blocks \['layer3_2'\] are missing"):
    scan_layout.to_layout(host, {GROUP})


def test_checkpoints_restore_into_either_layout(resnet, tmp_path):
  """A checkpoint written with scan_blocks off resumes and evaluates with it on, and the
  reverse; a converted (canonical) variables checkpoint and pretrained weights load into a
  scanned model."""
  steps, x, variables, scanned_variables = resnet
  expected = steps[True](scanned_variables, x)[2]  # Eval-mode outputs (equal to the unscanned).
  states = {False: train_state(variables), True: train_state(scanned_variables)}
  record = {'step': 7, 'data_position': 7, 'best_metric': None, 'best_value': None}
  for written in (False, True):
    workdir = str(tmp_path / f'written_scanned_{written}')
    with checkpointing.Checkpoints(workdir) as ckpts:
      ckpts.save(states[written], record, also_best=True)
    for wanted in (False, True):
      with checkpointing.Checkpoints(workdir, create=False) as ckpts:
        abstract = checkpointing.abstract(states[wanted])
        state, _ = ckpts.restore_latest(abstract)
        best, _ = ckpts.restore_variables(abstract)
      jax.tree.map(np.testing.assert_array_equal, state, states[wanted])
      jax.tree.map(np.testing.assert_array_equal, best,
                   {k: states[wanted][k] for k in checkpointing.COLLECTIONS})
      assert_trees_close(steps[wanted](best, x)[2], expected)  # The same evaluation.

  # What `python -m asymfusion_jax.convert` writes (canonical), loaded for a scanned model.
  path = variables_io.save_variables(tmp_path / 'converted', jax.device_get(variables))
  loaded = variables_io.load_variables(path, jax.eval_shape(lambda: scanned_variables))
  jax.tree.map(np.testing.assert_array_equal, loaded, scanned_variables)
  # Pretrained backbone weights (canonical, encoder only) merged into a scanned model.
  pretrained = {k: {b: jax.device_get(v) for b, v in variables[k].items() if b.startswith('layer')}
                for k in ('params', 'batch_stats')}
  fresh = jax.tree.map(jnp.zeros_like, scanned_variables)
  merged = initialization.merge(fresh, pretrained, 'pretrained')
  assert float(jnp.abs(merged['params']['conv1']['kernel']).max()) == 0  # Not pretrained.
  jax.tree.map(np.testing.assert_array_equal, merged['params'][GROUP],
               scanned_variables['params'][GROUP])
