"""Semantic segmentation: the task's state, train step and evaluation.

Two setups share it: NYUDv2 with RefineNet and the paper's staged SGD, and Cityscapes with
DeepLabv3+ and TF-DeepLab's poly SGD. The model is config.model.name's (models.build_model), the
data config.data.name's dataset (data.get), the optimiser
config.optim.schedule's (optim.py); the loss is the sum of the M + 1 outputs' cross-entropies
(losses.py). Evaluation computes pixel accuracy, mean accuracy and mIoU per branch
(evaluation.py), and the best checkpoint is the one with the highest ensemble mIoU.

With trained BatchNorm (frozen_bn=False, DeepLab) the batch statistics are those of the global
batch: the step is one jitted program over the batch sharded on the ('data',) mesh, so the mean
over the batch axis inside BatchNorm is a mean over every device's rows (XLA adds the
all-reduce; tests/test_cityscapes.py checks it on two devices).
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from asymfusion_jax import data, initialization, sharding, variables_io
from asymfusion_jax.convert import refinenet as refinenet_convert
from asymfusion_jax.models import RefineNet, build_model
from asymfusion_jax.tasks import base
from asymfusion_jax.tasks.segmentation import evaluation, losses, optim, predict, validation


def init_variables(model, config, rng) -> dict:
  # Parameter shapes do not depend on the image size; a small one keeps init cheap.
  x = jnp.zeros((len(config.modalities), 1, 64, 64, 3), jnp.float32)
  return dict(model.init({'params': rng}, x, train=False))


def create_train_state(model, tx, config, mesh) -> base.TrainState:
  """A replicated TrainState initialised from config.seed, under jit so nothing runs eagerly."""
  def make():
    rng = jax.random.PRNGKey(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    variables = init_variables(model, config, init_rng)
    return base.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}),
                           opt_state=tx.init(variables['params']), rng=train_rng)
  return jax.jit(make, out_shardings=sharding.replicated(mesh))()


def train_step(state: base.TrainState, batch: dict, *, model, tx, ignore_label: int):
  """One SGD step on the sum of the M + 1 outputs' cross-entropies (docs/method.md section 6)."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    if model.frozen_bn:
      logits = model.apply(variables, batch['image'], train=True, rngs={'dropout': dropout_rng})
      new_stats = state.batch_stats
    else:
      logits, updates = model.apply(variables, batch['image'], train=True,
                                    rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      new_stats = updates['batch_stats']
    return losses.segmentation_loss(logits, batch['label'], ignore_label), new_stats

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                            opt_state=opt_state)
  return new_state, {'loss': loss}


def jit_train_step(model, tx, config, mesh, state, example_batch):
  step_fn = functools.partial(train_step, model=model, tx=tx,
                              ignore_label=config.data.ignore_label)
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, sharding.batch_shardings(mesh, example_batch)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


class Segmentation(base.Task):
  """The segmentation task for train.py (see base.Task)."""

  def check_config(self, config) -> None:
    validation.check_config(config)

  def check_training(self, config) -> None:
    validation.check_training(config)

  def prepare_data(self, config) -> None:
    data.get(config).prepare(config)

  def steps_per_epoch(self, config) -> int:
    dataset = data.get(config)
    steps = dataset.steps_per_epoch(config)
    if steps < 1:
      raise ValueError(f'config.batch_size={config.batch_size} is larger than the '
                       f'{dataset.num_examples(config, "train")} training examples')
    return steps

  def total_steps(self, config, steps_per_epoch: int) -> int:
    return optim.total_steps(config, steps_per_epoch)

  def create_train_state(self, config, mesh, steps_per_epoch: int) -> base.TrainState:
    return create_train_state(build_model(config), optim.make_optimizer(config, steps_per_epoch),
                              config, mesh)

  def from_pretrained(self, state, config):
    return initialization.from_pretrained(state, config)

  def train_batches(self, config, start_step: int):
    """Batches with the rows the mesh runs: with frozen BatchNorm a batch that does not split
    over the devices is filled up with unlabelled rows (validation.train_batch_rows)."""
    rows = validation.train_batch_rows(config)
    if rows * jax.process_count() != config.batch_size:
      logging.info('Training on %d rows per step: config.batch_size=%d filled up to a multiple '
                   'of the %d devices with unlabelled rows (with frozen BatchNorm they change '
                   'nothing but the dropout masks drawn).', rows * jax.process_count(),
                   config.batch_size, jax.device_count())
    batches = data.get(config).train_batches(
        config, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())
    return (sharding.pad_rows(b, rows, config.data.ignore_label) for b in batches)

  def jit_train_step(self, config, mesh, steps_per_epoch, state, batch):
    return jit_train_step(build_model(config), optim.make_optimizer(config, steps_per_epoch),
                          config, mesh, state, batch)

  def extra_scalars(self, config, steps_per_epoch, step):
    lr = optim.learning_rate_schedules(config, steps_per_epoch)
    if 'all' in lr:
      return {'train/lr': float(lr['all'](step))}
    return {'train/lr_encoder': float(lr['encoder'](step)),
            'train/lr_decoder': float(lr['decoder'](step))}

  def evaluator(self, config, mesh, wrap=None):
    model = build_model(config)
    return evaluation.Evaluator(wrap(model) if wrap else model, config, mesh)

  def best_metric(self, config):
    return 'ensemble/miou', True

  def synthetic_batch(self, config, mode, seed=0):
    """Random normal images (not zeros, which can run faster than real data) and labels drawn
    from the K classes with a tenth of the pixels set to the ignore label, as real crops
    have."""
    rng = np.random.default_rng([seed, jax.process_index()])
    m, s = len(config.modalities), config.crop_size
    b = config.batch_size // jax.process_count()
    k, ignore = config.model.num_classes, config.data.ignore_label
    label = rng.integers(0, k, size=(b, s, s), dtype=np.int32)
    label[rng.random((b, s, s)) < 0.1] = ignore
    batch = {'image': rng.standard_normal((m, b, s, s, 3), dtype=np.float32), 'label': label}
    if mode == 'eval':
      batch['mask'] = np.ones((b,), bool)
    return batch

  def build_step(self, config, mesh, mode, batch, abstract=False):
    """The train step with the config's optimiser, or the eval step with the variables only
    (no optimiser state in the device's peak memory)."""
    model = build_model(config)
    if mode == 'train':
      # Steps per epoch only place the stage boundaries of the learning rate schedule, which
      # a step never reaches: any value works.
      tx = optim.make_optimizer(config, 1000)
      make_state = functools.partial(create_train_state, model, tx, config, mesh)
      state = jax.eval_shape(make_state) if abstract else make_state()
      return jit_train_step(model, tx, config, mesh, state, batch), (state, batch)
    make_variables = jax.jit(
        lambda: init_variables(model, config, jax.random.PRNGKey(config.seed)),
        out_shardings=sharding.replicated(mesh))
    variables = jax.eval_shape(make_variables) if abstract else make_variables()
    return evaluation.jit_eval_step(model, config, mesh), (variables, batch)

  def load_converted(self, config, checkpoint):
    model = build_model(config)
    target = jax.eval_shape(lambda: init_variables(model, config, jax.random.key(0)))
    return variables_io.load_variables(checkpoint, target)

  def inference(self, config, variables):
    model = build_model(config)
    return lambda x: model.apply(variables, x, train=False)

  def export_sidecar(self, config):
    """How raw pixels become the inputs (the dataset's input_encoding), and the logits' classes
    and stride."""
    return {
        **data.get(config).input_encoding(config),
        'num_classes': int(config.model.num_classes),
        'ignore_label': int(config.data.ignore_label),
        'output_stride': build_model(config).logits_stride,
    }

  def torch_state_dict(self, config, variables):
    if not isinstance(build_model(config), RefineNet):
      return super().torch_state_dict(config, variables)
    return refinenet_convert.refinenet_to_torch(variables)

  def predictor(self, config, logits: bool = False):
    return predict.SegmentationPredictor(config, logits)
