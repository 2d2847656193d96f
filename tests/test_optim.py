"""The optimiser against torch.optim.SGD, exact schedule values and momentum resets."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asymfusion_jax import config_lib
from asymfusion_jax.tasks.segmentation import optim


def small_config(epochs=(2, 1, 3)):
  config = config_lib.nyudv2_paper()
  config.optim.epochs_per_stage = epochs
  return config


def test_schedules_exact_values():
  config = small_config()
  schedules = optim.learning_rate_schedules(config, steps_per_epoch=4)
  enc = [float(schedules['encoder'](s)) for s in range(24)]
  dec = [float(schedules['decoder'](s)) for s in range(24)]
  f32 = lambda v: float(np.float32(v))
  assert enc == [f32(5e-4)] * 8 + [f32(2.5e-4)] * 4 + [f32(1e-4)] * 12
  assert dec == [f32(3e-3)] * 8 + [f32(1.5e-3)] * 4 + [f32(7e-4)] * 12
  assert optim.stage_boundaries(config, 4) == [0, 8, 12]
  assert optim.total_steps(config, 4) == 24
  config.max_steps = 5
  assert optim.total_steps(config, 4) == 5


def test_mismatched_stage_lengths_are_an_error():
  config = small_config(epochs=(1, 1))
  with pytest.raises(ValueError, match='epochs_per_stage'):
    optim.learning_rate_schedules(config, 4)


def test_matches_torch_sgd_with_stage_resets():
  torch = pytest.importorskip('torch')
  config = small_config(epochs=(1, 1, 1))
  steps_per_epoch = 3
  rng = np.random.default_rng(0)
  params = {'backbone': {'w': rng.normal(size=(4,)).astype(np.float32)},
            'head': {'w': rng.normal(size=(3,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(9)]

  tx = optim.make_optimizer(config, steps_per_epoch)
  state = tx.init(params)
  jax_params = params
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(g, state, jax_params)
    jax_params = jax.tree.map(lambda p, u: p + u, jax_params, updates)

  enc = torch.tensor(params['backbone']['w'], requires_grad=True)
  dec = torch.tensor(params['head']['w'], requires_grad=True)
  for stage in range(3):  # A fresh torch optimiser for every stage, as the reference does.
    opt = torch.optim.SGD([
        {'params': [enc], 'lr': config.optim.lr_encoder[stage]},
        {'params': [dec], 'lr': config.optim.lr_decoder[stage]}],
        momentum=0.9, weight_decay=1e-5)
    for step in range(stage * 3, stage * 3 + 3):
      enc.grad = torch.tensor(grads[step]['backbone']['w'])
      dec.grad = torch.tensor(grads[step]['head']['w'])
      opt.step()
  np.testing.assert_allclose(jax_params['backbone']['w'], enc.detach().numpy(), rtol=1e-6)
  np.testing.assert_allclose(jax_params['head']['w'], dec.detach().numpy(), rtol=1e-6)


def test_reset_clears_momentum_only_at_boundaries():
  tx = optim.reset_at_steps(optax.trace(0.5), [2])
  params = jnp.zeros(())
  state = tx.init(params)
  outs = []
  for _ in range(4):
    u, state = tx.update(jnp.ones(()), state, params)
    outs.append(float(u))
  assert outs == [1.0, 1.5, 1.0, 1.5]
