"""The optimisers of the two recipes in optax, chosen by config.optim.schedule.

'stages' (the paper's NYUDv2 recipe, docs/method.md section 8): SGD with momentum
0.9 and weight decay added to the gradient as PyTorch does, separate learning rates for the
encoder (params['backbone']) and the decoder (everything else, alpha included), and three stages
of constant learning rates with a fresh optimiser (momentum) at every stage boundary.

'poly' (TF-DeepLab's Cityscapes recipe, docs/method.md section 13): SGD with momentum, one
learning rate lr * (1 - t / T)^power for every parameter, and L2 weight decay (TF-style, the
gradient of wd/2 * |w|^2) on convolution kernels only: not on depthwise kernels, biases,
BatchNorm or the ensemble weights.

All of it lives in the optimiser state, so a resumed run continues exactly.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


class ResetState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def reset_at_steps(inner: optax.GradientTransformation,
                   steps: Sequence[int]) -> optax.GradientTransformation:
  """Re-initialises `inner`'s state before the updates of the given (0-based) steps."""
  boundaries = jnp.asarray(sorted(steps), jnp.int32) if steps else jnp.zeros((0,), jnp.int32)

  def init_fn(params):
    return ResetState(jnp.zeros((), jnp.int32), inner.init(params))

  def update_fn(updates, state, params=None):
    fresh = inner.init(params if params is not None else updates)
    reset = jnp.any(state.count == boundaries)
    inner_state = jax.tree.map(lambda f, s: jnp.where(reset, f, s), fresh, state.inner)
    updates, inner_state = inner.update(updates, inner_state, params)
    return updates, ResetState(state.count + 1, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def stage_boundaries(config, steps_per_epoch: int) -> list[int]:
  """First step of every stage, the first (step 0) included."""
  epochs = np.cumsum((0,) + tuple(config.optim.epochs_per_stage))[:-1]
  return [int(e) * steps_per_epoch for e in epochs]


SCHEDULES = ('stages', 'poly')


def total_steps(config, steps_per_epoch: int) -> int:
  if config.optim.schedule == 'poly':
    full = int(config.optim.total_steps)
  else:
    full = sum(config.optim.epochs_per_stage) * steps_per_epoch
  return min(full, config.max_steps) if config.max_steps > 0 else full


def learning_rate_schedules(config, steps_per_epoch: int) -> dict[str, optax.Schedule]:
  """{'encoder': schedule, 'decoder': schedule}: constant within each stage ('stages'), or
  {'all': the poly schedule} ('poly')."""
  if config.optim.schedule == 'poly':
    return {'all': poly_schedule(config)}
  starts = stage_boundaries(config, steps_per_epoch)
  if len(config.optim.lr_encoder) != len(starts) or len(config.optim.lr_decoder) != len(starts):
    raise ValueError('config.optim.lr_encoder, lr_decoder and epochs_per_stage must have the same '
                     f'length, got {config.optim.lr_encoder}, {config.optim.lr_decoder}, '
                     f'{config.optim.epochs_per_stage}')

  def piecewise(values):
    values = jnp.asarray(values, jnp.float32)
    starts_arr = jnp.asarray(starts, jnp.int32)
    return lambda count: values[jnp.searchsorted(starts_arr, count, side='right') - 1]

  return {'encoder': piecewise(tuple(config.optim.lr_encoder)),
          'decoder': piecewise(tuple(config.optim.lr_decoder))}


def param_labels(params):
  """'encoder' for the stem and the four stages (params['backbone']), 'decoder' for the rest."""
  return {k: jax.tree.map(lambda _, k=k: 'encoder' if k == 'backbone' else 'decoder', v)
          for k, v in params.items()}


def poly_schedule(config) -> optax.Schedule:
  """lr * (1 - t / total_steps)^power, 0 from total_steps on (tf.train.polynomial_decay)."""
  return optax.polynomial_schedule(init_value=config.optim.lr, end_value=0.0,
                                   power=config.optim.power,
                                   transition_steps=int(config.optim.total_steps))


def decays(path) -> bool:
  """Whether the parameter at `path` (a tuple of names) gets weight decay in the poly recipe:
  convolution kernels, except depthwise ones (TF-DeepLab regularises neither)."""
  return path[-1] == 'kernel' and 'depthwise' not in path


def weight_decay_mask(params):
  """A tree of bools over params: decays() of each leaf's path."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decays(tuple(getattr(k, 'key', str(k)) for k in path)), params)


def make_poly_sgd(config) -> optax.GradientTransformation:
  """TF-DeepLab's SGD: L2 on weight_decay_mask's kernels, momentum, the poly learning rate."""
  clip = config.optim.get('clip_grad_norm', 0.0)
  first = [optax.clip_by_global_norm(clip)] if clip > 0 else []
  return optax.chain(
      *first,
      optax.add_decayed_weights(config.optim.weight_decay, mask=weight_decay_mask),
      optax.trace(decay=config.optim.momentum),
      optax.scale_by_learning_rate(poly_schedule(config)),
  )


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimiser of config.optim.schedule (see the module doc)."""
  if config.optim.schedule == 'poly':
    return make_poly_sgd(config)
  return make_stages_sgd(config, steps_per_epoch)


def make_stages_sgd(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The paper's SGD; with config.optim.clip_grad_norm > 0 (not in the paper), the loss's
  gradient is first rescaled to that global norm when it is larger (weight decay added after)."""
  schedules = learning_rate_schedules(config, steps_per_epoch)
  clip = config.optim.get('clip_grad_norm', 0.0)
  # Only when on, so that the optimiser state (and checkpoints) of other configs keep their tree.
  first = [optax.clip_by_global_norm(clip)] if clip > 0 else []
  return optax.chain(
      *first,
      optax.add_decayed_weights(config.optim.weight_decay),  # PyTorch: grad += wd * param.
      reset_at_steps(optax.trace(decay=config.optim.momentum),
                     stage_boundaries(config, steps_per_epoch)[1:]),
      optax.partition({name: optax.scale_by_learning_rate(fn) for name, fn in schedules.items()},
                      param_labels),
  )
