"""The translation task in the shared training program: step, evaluation, resume, export."""

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asymfusion_jax import (checkpointing, export, fid, local_cluster, running_sums, sharding,
                            train, validation, variables_io)
from asymfusion_jax.data import predict_io
from asymfusion_jax.data.taskonomy import pipeline as translation_pipeline
from asymfusion_jax.models import build_discriminator, build_generator
from asymfusion_jax.tasks.translation import evaluation as translation_eval
from asymfusion_jax.tasks.translation import task as translation
from tests import fid_stand_in, tiny

BRANCHES = ('reshading', 'depth_euclidean', 'ensemble')
TRAIN_KEYS = {'step', 'train/d_loss', 'train/g_loss', 'train/g_adv', 'train/l1',
              'steps_per_second'}
EVAL_KEYS = {'step'} | {f'eval/{b}/{m}' for b in BRANCHES for m in ('l1', 'l2')}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('translation_data'))
  translation_pipeline.prepare(tiny.translation_config(root))
  return root


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
  """(workdir, results) of the complete tiny run: 12 steps, evaluations at 4, 8 and 12."""
  workdir = str(tmp_path_factory.mktemp('translation_run'))
  return workdir, train.train_and_evaluate(tiny.translation_config(data_dir), workdir)


def generate(config, params, inputs):
  """The generator's eval forward, jitted (eager, every op of the U-Net would compile alone)."""
  generator = build_generator(config)
  return jax.jit(lambda p, x: generator.apply({'params': p}, x, train=False))(params, inputs)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def restore(workdir, step):
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    restored = ckpts.periodic.restore(step)
    return jax.tree.map(np.asarray, {**restored['variables'], **restored['train']})
  finally:
    ckpts.close()


def test_run_logs_checkpoints_and_grids(run):
  workdir, results = run
  records = read_metrics(workdir)
  train_records = [r for r in records if 'train/g_loss' in r]
  eval_records = [r for r in records if 'eval/ensemble/l1' in r]
  assert [r['step'] for r in train_records] == list(range(2, 13, 2))
  assert all(set(r) == TRAIN_KEYS for r in train_records)
  assert all(np.isfinite(r['train/d_loss']) and r['train/d_loss'] > 0 for r in train_records)
  # g_loss = g_adv + 100 * l1, each the mean over the steps since the last log.
  for r in train_records:
    assert r['train/g_loss'] == pytest.approx(r['train/g_adv'] + 100 * r['train/l1'], rel=1e-5)
  assert [r['step'] for r in eval_records] == [4, 8, 12]
  assert all(set(r) == EVAL_KEYS for r in eval_records)
  assert eval_records[-1]['eval/ensemble/l1'] == pytest.approx(results['ensemble']['l1'])
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['task'] == 'translation'
  assert sorted(os.listdir(os.path.join(workdir, 'predictions'))) == ['0000.png', '0001.png',
                                                                    '0002.png']
  ckpts = checkpointing.Checkpoints(workdir)
  best_step = ckpts.best.latest_step()
  assert ckpts.periodic.all_steps() == [8, 12]
  ckpts.close()
  best_l1 = min(r['eval/ensemble/l1'] for r in eval_records)
  assert next(r for r in eval_records if r['step'] == best_step)['eval/ensemble/l1'] == best_l1


def test_resumed_run_matches_uninterrupted(run, data_dir, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny.translation_config(data_dir, max_steps=6), workdir)
  train.train_and_evaluate(tiny.translation_config(data_dir), workdir)  # Resumed.
  resumed, uninterrupted = restore(workdir, 12), restore(run[0], 12)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               resumed['params'], uninterrupted['params'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               resumed['opt_state'], uninterrupted['opt_state'])


def _reference_step(params, batch, rng, *, config):
  """The D-then-G update written out plainly: two generator passes, losses from probabilities."""
  generator, discriminator = build_generator(config), build_discriminator(config)
  tx = translation.make_optimizer(config)
  inputs, target = batch['inputs'], batch['target']
  m = inputs.shape[0]

  def generate(g):
    return generator.apply({'params': g}, inputs, train=True, rngs={'dropout': rng})

  def prob(d, x, y):
    return jax.nn.sigmoid(discriminator.apply({'params': d}, jnp.concatenate([x, y], -1)))

  def d_loss(d):
    fake = jax.lax.stop_gradient(generate(params['generator']))
    return sum(0.5 * (jnp.mean(-jnp.log(prob(d, inputs[i], target)))
                      + jnp.mean(-jnp.log(1 - prob(d, inputs[i], fake[i])))) for i in range(m))

  d_grads = jax.grad(d_loss)(params['discriminator'])
  d_updates, _ = tx.update(d_grads, tx.init(params['discriminator']), params['discriminator'])
  new_d = jax.tree.map(jnp.add, params['discriminator'], d_updates)

  def g_loss(g):
    out = generate(g)
    adversarial = sum(jnp.mean(-jnp.log(prob(new_d, inputs[i], out[i]))) for i in range(m))
    return adversarial + config.optim.l1_weight * sum(
        jnp.mean(jnp.abs(out[k] - target)) for k in range(m + 1))

  g_grads = jax.grad(g_loss)(params['generator'])
  g_updates, _ = tx.update(g_grads, tx.init(params['generator']), params['generator'])
  return {'generator': jax.tree.map(jnp.add, params['generator'], g_updates),
          'discriminator': new_d}


def test_train_step_is_d_then_g_against_the_updated_d(data_dir, monkeypatch):
  # Plain SGD, so that the update is proportional to the gradient: Adam's first step is about
  # lr * sign(gradient), which float noise flips for gradients near zero.
  monkeypatch.setattr(translation, 'make_optimizer', lambda config: optax.sgd(0.1))
  config = tiny.translation_config(data_dir)
  mesh = sharding.make_mesh()
  state = translation.create_train_state(config, mesh)
  batch = next(translation_pipeline.train_batches(config))
  expected = jax.jit(functools.partial(_reference_step, config=config))(
      state.params, batch, jax.random.fold_in(state.rng, state.step))
  before = jax.device_get(state.params)  # The step donates the state.
  step = translation.jit_train_step(config, mesh, state, sharding.global_batch(mesh, batch))
  new_state, metrics = step(state, sharding.global_batch(mesh, batch))
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a - c, b - c, rtol=1e-3, atol=1e-6),
               jax.device_get(new_state.params), jax.device_get(expected), before)
  assert int(new_state.step) == 1
  assert float(metrics['g_loss']) == pytest.approx(
      float(metrics['g_adv']) + 100 * float(metrics['l1']), rel=1e-6)


def test_evaluation_counts_every_image_once(run, data_dir):
  """6 val images in batches of 4: the masked padding adds nothing. The sums the devices keep
  across batches are those the host took of each batch's sums (in float64, as it accumulated
  before), to double-float rounding."""
  config = tiny.translation_config(data_dir)
  params = restore(run[0], 12)['params']['generator']
  outputs, targets = [], []
  for batch in translation_pipeline.eval_batches(config, batch_size=6):
    outputs.append(np.asarray(generate(config, params, batch['inputs'])))
    targets.append(batch['target'][batch['mask']])
  out, target = np.concatenate(outputs, axis=1), np.concatenate(targets)
  assert out.shape[1] == 6
  mesh = sharding.make_mesh()
  evaluator = translation_eval.Evaluator(config, mesh)
  results = evaluator.run({'params': {'generator': params}})
  for i, name in enumerate(BRANCHES):
    diff = out[i].astype(np.float64) - target
    assert results[name]['l1'] == pytest.approx(np.mean(np.abs(diff)), rel=1e-5)
    assert results[name]['l2'] == pytest.approx(
        np.sqrt(np.mean(np.mean(diff ** 2, axis=(1, 2, 3)))), rel=1e-5)

  host = {'abs_sum': 0.0, 'mse_sum': 0.0, 'count': 0}
  batches = list(translation_pipeline.eval_batches(config))
  assert [int(b['mask'].sum()) for b in batches] == [4, 2]
  for batch in batches:  # The Evaluator's compiled step, from zero sums at every batch.
    totals, _ = evaluator._step(params, sharding.global_batch(mesh, batch), evaluator._zeros())
    host['count'] += int(running_sums.counts_to_host(totals['count']))
    for key in ('abs_sum', 'mse_sum'):
      host[key] = host[key] + running_sums.floats_to_host(totals[key])
  assert host['count'] == 6
  for i, name in enumerate(BRANCHES):
    assert results[name]['l1'] == pytest.approx(host['abs_sum'][i] / (6 * 64 * 64 * 3), rel=1e-12)
    assert results[name]['l2'] == pytest.approx(np.sqrt(host['mse_sum'][i] / 6), rel=1e-12)


def test_eval_without_depth_fills_it_with_the_training_mean(run, data_dir, tmp_path, monkeypatch):
  """--mode=eval with config.eval.missing=('depth_euclidean',) and fill 'mean': missing.json has
  the rows (every branch: 'mean' drops none), its fill values are the training images' mean
  computed here (data.load_size = crop_size: no crop, and a flip keeps the mean, so one epoch
  of training inputs is every training image once), the missing evaluation's compiled step
  gives the same sums whatever depth's pixels are, and what it gives is the full evaluation's
  step on inputs whose depth is the mean."""
  # Every Evaluator that evaluate_checkpoint runs, and the variables it runs.
  made = tiny.record_evaluator_runs(monkeypatch, translation_eval)
  workdir = str(tmp_path / 'copy')
  shutil.copytree(run[0], workdir)
  config = tiny.translation_config(data_dir, data__load_size=64,
                                   eval__missing=('depth_euclidean',), eval__missing_fill='mean')
  results = train.evaluate_checkpoint(config, workdir, step=12)
  with open(os.path.join(workdir, 'eval', 'step_12', 'missing.json')) as f:
    record = json.load(f)
  assert record['fill'] == 'mean' and set(record['missing']) == {'none', 'depth_euclidean'}
  assert record['missing']['none'] == results
  assert set(record['missing']['depth_euclidean']) == set(BRANCHES)
  split = translation_pipeline.load_split(config, 'train')
  assert len(split) == translation_pipeline.steps_per_epoch(config) * config.batch_size
  assert set(record['fill_values']) == set(BRANCHES[:2])
  for name, values in record['fill_values'].items():
    expected = (split.images[name].astype(np.float64) / 127.5 - 1).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)

  (full, variables), (without_depth, _) = made
  params = variables['params']['generator']
  batch = next(translation_pipeline.eval_batches(config, batch_size=without_depth.batch_size))
  depth = config.modalities.index('depth_euclidean')
  noisy, filled = ({**batch, 'inputs': batch['inputs'].copy()} for _ in range(2))
  noisy['inputs'][depth] = np.random.default_rng(0).uniform(-1, 1, batch['inputs'][depth].shape)
  filled['inputs'][depth] = np.float32(record['fill_values']['depth_euclidean'])
  sums = {}
  for key, evaluator, x in (('without', without_depth, batch), ('noisy', without_depth, noisy),
                            ('filled', full, filled)):
    totals, _ = evaluator._step(params, sharding.global_batch(evaluator.mesh, x),
                                evaluator._zeros())
    sums[key] = np.stack([running_sums.floats_to_host(totals[k]) for k in ('abs_sum', 'mse_sum')])
  np.testing.assert_array_equal(sums['without'], sums['noisy'])
  np.testing.assert_allclose(sums['without'], sums['filled'], rtol=1e-5)


def test_fid_kid_per_branch_and_best_by_fid(run, data_dir, tmp_path, monkeypatch):
  """FID and KID of the checkpoint (the Inception replaced by fid_stand_in) on one device, by
  hand, and on 2 processes x 2 devices, where each process extracts the features of its own
  rows only: the same L1, L2, FID and KID."""
  fid_stand_in.install(monkeypatch.setattr)
  workdir = str(tmp_path / 'copy')
  shutil.copytree(run[0], workdir)
  two_processes = str(tmp_path / 'two_processes')
  shutil.copytree(run[0], two_processes)
  config = tiny.translation_config(data_dir, eval__inception_weights='weights.pth')
  results = train.evaluate_checkpoint(config, workdir, step=12)
  params = restore(workdir, 12)['params']['generator']
  generated = [[] for _ in BRANCHES]
  real = []
  for batch in translation_pipeline.eval_batches(config, batch_size=6):
    out = np.asarray(translation_eval.to_uint8(
        generate(config, params, batch['inputs'])))
    for i in range(len(BRANCHES)):
      generated[i].append(fid_stand_in.pixel_features(out[i]))
    real.append(fid_stand_in.pixel_features(np.asarray(translation_eval.to_uint8(batch['target']))))
  real = np.concatenate(real)
  for i, name in enumerate(BRANCHES):
    gen = np.concatenate(generated[i]).astype(np.float64)
    expected = fid.frechet_distance(gen.mean(0), np.cov(gen, rowvar=False),
                                    real.mean(0), np.cov(real.astype(np.float64), rowvar=False))
    assert results[name]['fid'] == pytest.approx(expected, rel=1e-4)
    kid, _ = fid.kernel_inception_distance(gen.astype(np.float32), real)
    assert results[name]['kid'] == pytest.approx(kid * fid.KID_SCALE, rel=1e-4)
  assert translation.Translation().best_metric(config) == ('ensemble/fid', False)

  # Eval batches of 4 on 4 devices: process 0 holds val images 0, 1, 4, 5 and process 1 holds
  # images 2, 3 and two padding rows.
  outputs = local_cluster.launch(
      2, ['--config=configs/demo_translation.py', f'--workdir={two_processes}', '--mode=eval',
          '--step=12'] + tiny.translation_flags(data_dir, eval__inception_weights='weights.pth'),
      timeout=600, devices_per_process=2, module='tests.fid_stand_in', cwd=tiny.REPO)
  for i, count in enumerate((4, 2)):
    assert f'FID: Inception features of {count} validation images on process {i} of 2' in (
        outputs[i]), outputs[i][-3000:]
  with open(os.path.join(two_processes, 'eval', 'step_12', 'results.json')) as f:
    spread = json.load(f)
  for name in BRANCHES:
    for metric in ('fid', 'kid'):
      assert spread[name][metric] == pytest.approx(results[name][metric], rel=1e-6), (name, metric)
    for metric in ('l1', 'l2'):
      assert spread[name][metric] == pytest.approx(results[name][metric], rel=1e-6), (name, metric)


def test_export_runs_the_generator(run, data_dir, tmp_path):
  source = export.from_workdir(run[0])
  out = str(tmp_path / 'model.jax')
  meta = export.write_jax(source, out, platforms=('cpu',))
  assert meta['task'] == 'translation' and meta['target'] == 'rgb'
  assert meta['input_shape'] == [2, 'b', 64, 64, 3] and meta['output_shape'] == [3, 'b', 64, 64, 3]
  with open(out, 'rb') as f:
    exported = jax.export.deserialize(f.read())
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64, 3)).astype(np.float32)
  expected = generate(source.config, source.variables['params']['generator'], x)
  np.testing.assert_allclose(exported.call(x), expected, rtol=1e-5, atol=1e-5)
  # A converted checkpoint (convert's variables format) exports the same generator.
  converted = str(tmp_path / 'converted')
  variables_io.save_variables(converted, {'params': source.variables['params'],
                                          'batch_stats': {}})
  again = export.from_checkpoint(converted, source.config)
  jax.tree.map(np.testing.assert_array_equal, again.variables['params']['generator'],
               source.variables['params']['generator'])
  with pytest.raises(ValueError, match='does not match the model'):
    wider = tiny.translation_config(data_dir, model__ngf=16)
    export.from_checkpoint(converted, wider)


def test_init_checkpoint_loads_a_converted_generator(run, data_dir, tmp_path):
  """config.init.checkpoint: convert's {'generator'} (no discriminator) replaces G only."""
  trained = restore(run[0], 12)['params']
  converted = str(tmp_path / 'generator_only')
  variables_io.save_variables(converted, {'params': {'generator': trained['generator']},
                                          'batch_stats': {}})
  config = tiny.translation_config(data_dir, init__checkpoint=converted)
  task = translation.Translation()
  fresh = task.create_train_state(config, sharding.make_mesh(), 4)
  discriminator = jax.device_get(fresh.params['discriminator'])
  loaded = jax.device_get(task.from_pretrained(fresh, config).params)
  jax.tree.map(np.testing.assert_array_equal, loaded['generator'], trained['generator'])
  jax.tree.map(np.testing.assert_array_equal, loaded['discriminator'], discriminator)


@pytest.mark.parametrize('key,value,message', [
    ('task', 'tranlsation', r"config.task='tranlsation' is not valid"),
    ('target', 'reshading', r'config.target=.reshading. must be a known domain that is not an '
                            r'input'),
    ('modalities', ('reshading', 'colour'), r'config.modalities=.* known Taskonomy domains'),
    ('crop_size', 48, r'config.crop_size=48 must be a multiple of 2\*\*model.num_downs = 64'),
    ('data.load_size', 60, r'config.data.load_size=60 must be an integer >= 64'),
    ('model.fusion_blocks', (2, 6), r'config.model.fusion_blocks=\(2, 6\) must be encoder '
                                    r'blocks among 2..5'),
    ('optim.b1', 1.0, r'config.optim.b1=1.0 must be a number in \[0, 1\)'),
])
def test_bad_translation_configs_name_the_key(tmp_path, key, value, message):
  config = tiny.translation_config(tmp_path, **{key.replace('.', '__'): value})
  with pytest.raises(validation.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_nan_stop_names_the_metric_and_step():
  watch = train._LossWatch(lambda: 'The last verified checkpoint, step 8 in DIR, is kept.')
  watch.add(9, {'d_loss': jnp.float32(1.0), 'g_loss': jnp.float32(2.0)})
  assert watch.drain() == {'d_loss': [1.0], 'g_loss': [2.0]}
  watch.add(10, {'d_loss': jnp.float32(np.nan), 'g_loss': jnp.float32(2.0)})
  with pytest.raises(FloatingPointError, match=r'training d_loss is nan at step 10 .*step 8'):
    watch.check()


_TWO_DEVICE_SCRIPT = textwrap.dedent('''
  import sys
  import jax, jax.numpy as jnp, numpy as np, optax
  from jax.sharding import Mesh
  from asymfusion_jax import sharding
  from asymfusion_jax.tasks.translation import task as translation
  from asymfusion_jax.tasks.translation import validation

  def recording_sgd(config):  # SGD at rate 1 whose state is the last gradient.
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.negative, grads), grads))

  translation.make_optimizer = recording_sgd
  from tests import tiny
  config = tiny.translation_config(sys.argv[1], batch_size=1, crop_size=32, model__num_downs=4,
                                   model__fusion_blocks=(2, 3), model__ngf=4, model__ndf=4,
                                   model__dropout_rate=0.0)  # Dropout masks follow the shape.
  assert jax.device_count() == 2
  validation.check_training(config)  # Batch 1 on 2 devices is valid,
  assert validation.train_batch_rows(config) == 2  # and runs as 2 rows.
  row = translation.Translation().synthetic_batch(config, 'train', seed=1)
  twice = {k: np.concatenate([v, v], axis=1 if k == 'inputs' else 0) for k, v in row.items()}
  batches = {'1 device, batch 1': (row, 1),
             '2 devices, batch 1 and a padded row': (translation.pad_rows(row, 2), 2),
             '2 devices, the row twice': (twice, 2)}
  results = {}
  for name, (batch, devices) in batches.items():
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ('data',))
    state = translation.create_train_state(config, mesh)
    batch = sharding.global_batch(mesh, batch)
    state, metrics = translation.jit_train_step(config, mesh, state, batch)(state, batch)
    results[name] = ({k: float(v) for k, v in metrics.items()}, jax.device_get(state.opt_state))
  (losses, grads), *others = results.values()
  for name, (other_losses, other_grads) in zip(list(results)[1:], others):
    for key, value in losses.items():
      np.testing.assert_allclose(other_losses[key], value, rtol=1e-6, err_msg=f'{name}: {key}')
    for net in grads:  # Biases before an InstanceNorm have zero gradients, up to rounding.
      scale = max(np.abs(g).max() for g in jax.tree.leaves(grads[net]))
      for a, b in zip(jax.tree.leaves(other_grads[net]), jax.tree.leaves(grads[net])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=f'{name}: {net}')
  print('equal', losses)
''')


def test_batch_1_runs_on_2_devices_with_the_losses_and_gradients_of_1(tmp_path):
  """The paper configs' batch 1 on 2 simulated devices: filled up with a zero row that the
  mask leaves out, the step gives the losses and gradients of the 1-device step, as does the
  same row twice (no padding) on 2 devices: rows are split, not computed differently."""
  flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2'
  env = {**os.environ, 'XLA_FLAGS': flags, 'PYTHONPATH': tiny.REPO, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', _TWO_DEVICE_SCRIPT, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600, check=False, cwd=tiny.REPO)
  assert out.returncode == 0 and 'equal' in out.stdout, out.stderr[-3000:]


def test_predict_writes_every_branch_at_any_size_from_workdir_and_artifact(run, data_dir,
                                                                           tmp_path):
  """72x72 runs padded to 128x128 (2**num_downs = 64) with the pad value 0 and cropped back;
  61x70 padded to 64x128; in 64x64 tiles, from the workdir and from a 64x64 artifact."""
  from asymfusion_jax import predict  # pylint: disable=g-import-not-at-top
  folders = {m: str(tmp_path / m) for m in BRANCHES[:2]}
  for m, folder in folders.items():
    os.makedirs(folder)
    shutil.copy(os.path.join(data_dir, 'synthetic', m, f'point_0_view_0_domain_{m}.png'), folder)
    image = cv2.imread(os.path.join(data_dir, 'synthetic', m, f'point_1_view_0_domain_{m}.png'),
                       cv2.IMREAD_UNCHANGED)
    cv2.imwrite(os.path.join(folder, f'odd_domain_{m}.png'), image[:61, :70])
  model = predict.from_workdir(run[0])
  images = predict.images(model.config, folders)
  assert [im.stem for im in images] == ['odd', 'point_0_view_0']
  out = str(tmp_path / 'whole')
  done = predict.predict(model, images, out, predict.Options(branches=True, batch_size=1))
  assert [s[2:4] for s in done['compiled']] == [(64, 128), (128, 128)]
  got = {b: cv2.imread(os.path.join(out, b, 'rgb', 'point_0_view_0.png'))[..., ::-1]
         for b in BRANCHES}
  assert cv2.imread(os.path.join(out, 'ensemble', 'rgb', 'odd.png')).shape == (61, 70, 3)
  arrays = predict.inputs.read(images[1], predict_io.get(model.config))
  x = np.stack([arrays[m] for m in BRANCHES[:2]])[:, None]
  padded = np.zeros((2, 1, 128, 128, 3), np.float32)
  padded[:, :, :72, :72] = x
  params = model.variables['params']['generator']
  expected = translation_eval.to_uint8(generate(model.config, params, padded))[:, 0, :72, :72]
  for i, branch in enumerate(BRANCHES):
    assert np.abs(got[branch].astype(int) - np.asarray(expected[i])).max() <= 1, branch

  tiled = str(tmp_path / 'tiled')
  done = predict.predict(model, images, tiled, predict.Options(tile=(64, 64), batch_size=1))
  assert done['compiled'] == [(2, 1, 64, 64, 3)]
  artifact = str(tmp_path / 'generator.jax')
  export.write_jax(export.from_workdir(run[0]), artifact, 64, 64, platforms=('cpu',))
  exported = str(tmp_path / 'artifact')
  predict.predict(predict.from_artifact(artifact), images, exported,
                  predict.Options(batch_size=1))
  for stem in ('odd', 'point_0_view_0'):
    a, b = (cv2.imread(os.path.join(d, 'ensemble', 'rgb', stem + '.png')).astype(int)
            for d in (tiled, exported))
    assert np.abs(a - b).max() <= 1, stem
  with pytest.raises(ValueError, match='--logits applies to segmentation models'):
    predict.predict(model, images, tiled, predict.Options(logits=True))
