"""Image translation (Taskonomy domains -> RGB): the task's state, losses and train step.

docs/method.md section 11. A U-Net generator (shared convs, per-modality InstanceNorm,
AsymFusion in the encoder) translates each input domain to RGB, an alpha-weighted ensemble
combines the M branches, and one PatchGAN discriminator judges every branch against its own
input. Each step updates the discriminator, then the generator against the updated
discriminator, from one generator forward pass:

  D: sum_m 0.5 * (BCE(D(x_m, y), 1) + BCE(D(x_m, G(x)_m), 0)), G's outputs held fixed;
  G: sum_m BCE(D'(x_m, G(x)_m), 1) + l1_weight * sum over the M + 1 outputs of L1(out, y).

BCE is computed from the discriminator's logits (log-sigmoid), which is the sigmoid + BCE of
the reference without PyTorch's clamp of the log at -100.

A batch that does not split over the devices (the paper's batch 1 on 2 or more) is filled up
with zero rows and a 'mask' that leaves them out of every mean: the generator and the
discriminator normalise per instance, so the real rows' losses and gradients are those of the
batch alone (tests/test_translation_train.py checks it on two devices).
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from asymfusion_jax import data, initialization, sharding, variables_io
from asymfusion_jax.models import build_discriminator, build_model
from asymfusion_jax.tasks import base
from asymfusion_jax.tasks.translation import evaluation, predict, validation

# Train metrics (logged as train/<name>): the discriminator loss, the generator's total loss,
# its adversarial part, and its L1 part before weighting (the sum over the M + 1 outputs).
METRICS = ('d_loss', 'g_loss', 'g_adv', 'l1')


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with the paper's rate and betas, one instance each for G and D."""
  return optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2)


def init_params(config, rng) -> dict:
  """{'generator': ..., 'discriminator': ...} params (shapes do not depend on the image size)."""
  g_rng, d_rng = jax.random.split(rng)
  size = 2 ** config.model.num_downs  # The smallest image the U-Net takes.
  x = jnp.zeros((len(config.modalities), 1, size, size, 3), jnp.float32)
  generator = build_model(config).init({'params': g_rng}, x, train=False)['params']
  pair = jnp.zeros((1, max(size, 64), max(size, 64), 6), jnp.float32)
  discriminator = build_discriminator(config).init({'params': d_rng}, pair)['params']
  return {'generator': generator, 'discriminator': discriminator}


def create_train_state(config, mesh) -> base.TrainState:
  """A replicated TrainState from config.seed, built under jit."""
  tx = make_optimizer(config)

  def make():
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    params = init_params(config, init_rng)
    return base.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                           opt_state={k: tx.init(v) for k, v in params.items()}, rng=train_rng)
  return jax.jit(make, out_shardings=sharding.replicated(mesh))()


def pairs(inputs: jax.Array, images: jax.Array) -> jax.Array:
  """The discriminator's inputs: (M, B, H, W, 3) domains beside (M or 1, B, H, W, 3) images,
  as (M * B, H, W, 6); D is shared and normalises per instance, so the M pairs are one batch."""
  images = jnp.broadcast_to(images, inputs.shape).astype(inputs.dtype)
  x = jnp.concatenate([inputs, images], axis=-1)
  return x.reshape((-1,) + x.shape[2:])


def bce_real(logits: jax.Array) -> jax.Array:
  """BCE(sigmoid(logits), 1) = -log sigmoid(logits) per patch."""
  return jax.nn.softplus(-logits)


def bce_fake(logits: jax.Array) -> jax.Array:
  """BCE(sigmoid(logits), 0) = -log(1 - sigmoid(logits)) per patch."""
  return jax.nn.softplus(logits)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """(K, B, N) -> (K,): the mean over the N values of the rows b where mask[b] is True."""
  kept = jnp.where(mask[None, :, None], values.astype(jnp.float32), 0.0)
  return jnp.sum(kept, axis=(1, 2)) / (jnp.sum(mask.astype(jnp.float32)) * values.shape[2])


def _per_branch_mean(values: jax.Array, num_modalities: int, mask=None) -> jax.Array:
  """(M * B, ...) -> (M,): the mean over everything but the modality, as BCELoss takes it
  (over the rows of `mask` only, when given)."""
  if mask is None:
    return jnp.mean(values.reshape((num_modalities, -1)).astype(jnp.float32), axis=1)
  return _masked_mean(values.reshape((num_modalities, mask.shape[0], -1)), mask)


def discriminator_loss(d_params, discriminator, inputs, target, fake, mask=None) -> jax.Array:
  m = inputs.shape[0]
  real_logits = discriminator.apply({'params': d_params}, pairs(inputs, target[None]))
  fake_logits = discriminator.apply({'params': d_params}, pairs(inputs, fake))
  return jnp.sum(0.5 * (_per_branch_mean(bce_real(real_logits), m, mask)
                        + _per_branch_mean(bce_fake(fake_logits), m, mask)))


def l1_losses(outputs: jax.Array, target: jax.Array, mask=None) -> jax.Array:
  """Mean absolute error of each of the (M + 1) outputs, float32 (M + 1,) (over the rows of
  `mask` only, when given)."""
  diff = jnp.abs(outputs.astype(jnp.float32) - target[None].astype(jnp.float32))
  if mask is None:
    return jnp.mean(diff, axis=tuple(range(1, diff.ndim)))
  return _masked_mean(diff.reshape(diff.shape[:2] + (-1,)), mask)


def generator_loss(outputs, d_params, discriminator, inputs, target, l1_weight, mask=None):
  """(total, (adversarial, l1)) of the generator's outputs against the updated D."""
  m = inputs.shape[0]
  fake_logits = discriminator.apply({'params': d_params}, pairs(inputs, outputs[:m]))
  adversarial = jnp.sum(_per_branch_mean(bce_real(fake_logits), m, mask))
  l1 = jnp.sum(l1_losses(outputs, target, mask))
  return adversarial + l1_weight * l1, (adversarial, l1)


def pad_rows(local_batch: dict, rows: int) -> dict:
  """This process's batch filled up to `rows` rows with zero images, and a 'mask' that marks
  the real rows: the losses average over those only (see the module doc)."""
  real = local_batch['target'].shape[0]
  padded = sharding.pad_rows(local_batch, rows, ignore_label=0)  # No labels: zeros everywhere.
  padded['mask'] = np.arange(rows) < real
  return padded


def train_step(state: base.TrainState, batch: dict, *, generator, discriminator, tx,
               l1_weight: float):
  """One D update, then one G update, from one generator forward (with dropout); a batch with
  a 'mask' (padded) averages its losses over the real rows."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  inputs, target, mask = batch['inputs'], batch['target'], batch.get('mask')
  g_params, d_params = state.params['generator'], state.params['discriminator']

  outputs, g_vjp = jax.vjp(
      lambda p: generator.apply({'params': p}, inputs, train=True,
                                rngs={'dropout': dropout_rng}), g_params)
  m = inputs.shape[0]
  d_loss, d_grads = jax.value_and_grad(discriminator_loss)(
      d_params, discriminator, inputs, target, jax.lax.stop_gradient(outputs[:m]), mask)
  d_updates, d_opt = tx.update(d_grads, state.opt_state['discriminator'], d_params)
  d_params = optax.apply_updates(d_params, d_updates)

  (g_loss, (adversarial, l1)), d_outputs = jax.value_and_grad(generator_loss, has_aux=True)(
      outputs, d_params, discriminator, inputs, target, l1_weight, mask)
  (g_grads,) = g_vjp(d_outputs)
  g_updates, g_opt = tx.update(g_grads, state.opt_state['generator'], g_params)
  g_params = optax.apply_updates(g_params, g_updates)

  new_state = state.replace(
      step=state.step + 1, params={'generator': g_params, 'discriminator': d_params},
      opt_state={'generator': g_opt, 'discriminator': d_opt})
  return new_state, {'d_loss': d_loss, 'g_loss': g_loss, 'g_adv': adversarial, 'l1': l1}


def jit_train_step(config, mesh, state, example_batch):
  step_fn = functools.partial(train_step, generator=build_model(config),
                              discriminator=build_discriminator(config),
                              tx=make_optimizer(config), l1_weight=float(config.optim.l1_weight))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, sharding.batch_shardings(mesh, example_batch)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


def from_pretrained(state: base.TrainState, config) -> base.TrainState:
  """Merges config.init.checkpoint (variables from `python -m asymfusion_jax.convert`, with a
  generator and optionally a discriminator) into the params."""
  if not config.init.checkpoint:
    return state
  pretrained = variables_io.load_variables(config.init.checkpoint)
  merged = initialization.merge({'params': state.params}, {'params': pretrained['params']},
                                config.init.checkpoint)
  return state.replace(params=merged['params'])


class Translation(base.Task):
  """The translation task for train.py (see base.Task)."""

  progress_metric = 'g_loss'
  input_key = 'inputs'

  def check_config(self, config) -> None:
    validation.check_config(config)

  def check_training(self, config) -> None:
    validation.check_training(config)

  def prepare_data(self, config) -> None:
    data.get(config).prepare(config)

  def steps_per_epoch(self, config) -> int:
    return data.get(config).steps_per_epoch(config)

  def total_steps(self, config, steps_per_epoch: int) -> int:
    full = int(config.num_epochs) * steps_per_epoch
    return min(full, config.max_steps) if config.max_steps > 0 else full

  def create_train_state(self, config, mesh, steps_per_epoch: int) -> base.TrainState:
    del steps_per_epoch  # Constant learning rates.
    return create_train_state(config, mesh)

  def from_pretrained(self, state, config):
    return from_pretrained(state, config)

  def train_batches(self, config, start_step: int):
    """Batches with the rows the mesh runs: a batch that does not split over the devices is
    filled up with zero rows that its mask leaves out of the losses (pad_rows)."""
    rows = validation.train_batch_rows(config)
    batches = data.get(config).train_batches(config, start_step=start_step,
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count())
    if rows * jax.process_count() == config.batch_size:
      return batches
    logging.info('Training on %d rows per step: config.batch_size=%d filled up to a multiple of '
                 'the %d devices with zero rows, which the losses leave out (a mask).',
                 rows * jax.process_count(), config.batch_size, jax.device_count())
    return (pad_rows(b, rows) for b in batches)

  def jit_train_step(self, config, mesh, steps_per_epoch, state, batch):
    return jit_train_step(config, mesh, state, batch)

  def evaluator(self, config, mesh, wrap=None):
    return evaluation.Evaluator(config, mesh, wrap)

  def best_metric(self, config):
    """The ensemble's FID when the Inception weights are given, else its L1."""
    if config.eval.get('inception_weights', ''):
      return 'ensemble/fid', False
    return 'ensemble/l1', False

  def synthetic_batch(self, config, mode, seed=0):
    """Inputs and target uniform in [-1, 1]."""
    rng = np.random.default_rng([seed, jax.process_index()])
    m, s = len(config.modalities), config.crop_size
    b = config.batch_size // jax.process_count()
    batch = {'inputs': rng.uniform(-1, 1, (m, b, s, s, 3)).astype(np.float32),
             'target': rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)}
    if mode == 'eval':
      batch['mask'] = np.ones((b,), bool)
    return batch

  def build_step(self, config, mesh, mode, batch, abstract=False):
    """The D + G train step, or the generator's eval step."""
    make_state = functools.partial(create_train_state, config, mesh)
    state = jax.eval_shape(make_state) if abstract else make_state()
    if mode == 'train':
      return jit_train_step(config, mesh, state, batch), (state, batch)
    return evaluation.jit_eval_step(config, mesh), (state.params['generator'], batch)

  def load_converted(self, config, checkpoint):
    """The generator of a converted checkpoint; a converted discriminator, if any, is left out
    (the generator is what runs)."""
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    target = {'params': {'generator': params['generator']}}
    variables = variables_io.load_variables(checkpoint)
    variables = {'params': {'generator': variables.get('params', {}).get('generator')}}
    if variables['params']['generator'] is None:
      raise ValueError(f'{checkpoint} has no generator (params/generator): it is not a '
                       'translation checkpoint written by asymfusion_jax.convert')
    variables_io.check_same_shapes(variables, target, checkpoint)
    return variables

  def inference(self, config, variables):
    """The generator: (M, B, H, W, 3) domain images in [-1, 1] -> (M + 1, B, H, W, 3) RGB."""
    generator = build_model(config)
    params = {'params': variables['params']['generator']}
    return lambda x: generator.apply(params, x, train=False)

  def export_sidecar(self, config):
    """The domains, the target and how both map to and from [-1, 1] (the dataset's
    input_encoding)."""
    return data.get(config).input_encoding(config)

  def predictor(self, config, logits: bool = False):
    return predict.TranslationPredictor(config, logits)
