"""The paper's optimiser (docs/method.md section 8) in optax.

SGD with momentum 0.9 and weight decay added to the gradient as PyTorch does, separate learning
rates for the encoder (params['backbone']) and the decoder (everything else, alpha included),
and three stages of constant learning rates with a fresh optimiser (momentum) at every stage
boundary. All of it lives in the optimiser state, so a resumed run continues exactly.
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


def total_steps(config, steps_per_epoch: int) -> int:
  full = sum(config.optim.epochs_per_stage) * steps_per_epoch
  return min(full, config.max_steps) if config.max_steps > 0 else full


def learning_rate_schedules(config, steps_per_epoch: int) -> dict[str, optax.Schedule]:
  """{'encoder': schedule, 'decoder': schedule}: constant within each stage."""
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


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
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
