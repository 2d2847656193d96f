"""bfloat16 compute with float32 parameters, BatchNorm statistics, logits and loss.

A tiny RefineNet is run in both compute dtypes from the same float32 variables: the outputs must
agree to bfloat16 precision, the dtypes that must stay float32 must stay float32, and every
convolution of the lowered train step must run in bfloat16 on all M * B images at once. A
trace-count test proves the jitted train step is traced and compiled once across steps.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asymfusion_jax import hlo_summary, step_program
from asymfusion_jax.models import build_model, resolve_compute_dtype
from asymfusion_jax.tasks.segmentation import losses
from asymfusion_jax.tasks.segmentation import task as segmentation


def tiny_config(compute_dtype: str, frozen_bn: bool = False):
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  c.model.width, c.model.decoder_width = 8, 16
  c.batch_size, c.crop_size = 2, 32
  c.compute_dtype = compute_dtype
  c.frozen_bn = frozen_bn
  return c


def relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def init(config):
  model = build_model(config)
  return jax.jit(lambda key: segmentation.init_variables(model, config, key))(jax.random.key(0))


@pytest.fixture(scope='module')
def setup():
  """float32 variables shared by both dtypes, and a batch."""
  config = tiny_config('float32')
  return config, init(config), step_program.synthetic_batch(config, 'train', seed=1)


def dtypes(tree) -> set:
  return {x.dtype for x in jax.tree.leaves(tree)}


def test_bf16_forward_matches_float32(setup):
  _, variables, batch = setup
  outputs = {}
  for dtype in ('float32', 'bfloat16'):
    model = build_model(tiny_config(dtype))
    outputs[dtype] = jax.jit(model.apply)(variables, batch['image'])
  assert outputs['bfloat16'].dtype == jnp.float32  # Logits are float32 whatever the compute.
  # bfloat16 keeps 8 significand bits (relative rounding 2**-9 = 0.2%); twenty-odd layers of
  # rounding compound to a few tenths of a percent up to about 1%.
  assert relative_error(outputs['bfloat16'], outputs['float32']) < 3e-2
  agree = np.mean(np.argmax(outputs['bfloat16'], -1) == np.argmax(outputs['float32'], -1))
  assert agree > 0.9, agree


def test_bf16_loss_and_gradients_are_finite_and_close(setup):
  """With frozen BatchNorm, the paper's setting.

  (With batch statistics over the few pixels of the tiny model's deepest layers, the gradient
  through the normalisation is a near-total cancellation: float32 and bfloat16 then agree on the
  loss but not on the backbone gradients, whatever the implementation. test_train_step_* below
  checks that training with batch statistics in bfloat16 stays finite.)
  """
  _, variables, batch = setup
  results = {}
  for dtype in ('float32', 'bfloat16'):
    model = build_model(tiny_config(dtype, frozen_bn=True))

    def loss_fn(params, model=model):
      logits = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                           batch['image'], train=True, rngs={'dropout': jax.random.key(3)})
      return losses.segmentation_loss(logits, batch['label'])

    results[dtype] = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  (loss32, grads32), (loss16, grads16) = results['float32'], results['bfloat16']
  assert loss16.dtype == jnp.float32 and np.isfinite(loss16)
  assert dtypes(grads16) == {jnp.dtype(jnp.float32)}
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads16))
  assert abs(float(loss16) - float(loss32)) < 1e-2 * abs(float(loss32))
  flat16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads16)])
  flat32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads32)])
  assert relative_error(flat16, flat32) < 0.1  # 0.034 when written.
  cosine = np.dot(flat16.astype(np.float64), flat32) / (
      np.linalg.norm(flat16.astype(np.float64)) * np.linalg.norm(flat32.astype(np.float64)))
  assert cosine > 0.99, cosine


def test_every_train_step_convolution_is_bf16():
  """The lowered program (before any backend rewrite) asks for bf16 in every convolution.

  Forward, input-gradient and kernel-gradient convolutions alike: nothing upcasts a convolution
  to float32. (XLA:CPU then runs bf16 convolutions in float32; GPUs and TPUs do not.)
  """
  step, args = step_program.build_step(tiny_config('bfloat16', frozen_bn=True), 'train',
                                    abstract=True)
  summary = hlo_summary.summarize_stablehlo(step.lower(*args).as_text())
  assert summary['convolutions'] > 0
  assert summary['conv_dtypes'] == {'bf16': summary['convolutions']}


def test_steps_lower_for_accelerators():
  """The train and eval steps lower for GPUs and TPUs from this CPU-only machine.

  Cross-platform lowering is how the accelerator path is checked where there is no
  accelerator: no op lacks a lowering there, no convolution is upcast, and the program holds
  no custom call (a host callback or a platform-specific kernel would show up as one). Each
  step is traced once and lowered for every platform.
  """
  config = tiny_config('bfloat16')
  for mode in ('train', 'eval'):
    step, args = step_program.build_step(config, mode, abstract=True)
    traced = step.trace(*args)
    for platform in ('cuda', 'rocm', 'tpu'):
      text = traced.lower(lowering_platforms=(platform,)).as_text()
      summary = hlo_summary.summarize_stablehlo(text)
      assert summary['convolutions'] > 0
      assert summary['conv_dtypes'] == {'bf16': summary['convolutions']}, (platform, mode)
      assert 'custom_call' not in text, (platform, mode)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_modalities_run_as_one_batched_convolution(dtype):
  """Every forward convolution sees all M * B images at once, never one modality's B."""
  config = tiny_config(dtype)
  config.modalities = ('rgb', 'depth', 'rgb')  # M = 3, B = 2: a batch of 6 is unambiguous.
  step, args = step_program.build_step(config, 'eval', abstract=True)
  summary = hlo_summary.summarize_stablehlo(step.lower(*args).as_text())
  assert summary['conv_lhs_batch'] == {3 * 2: summary['convolutions']}


def test_train_step_traces_and_compiles_once(monkeypatch):
  """Three bf16 steps through the jitted, donated step: one trace, one compilation.

  A state that came back with other dtypes, shapes or shardings than it went in with (a
  parameter turned bf16, a weakly typed step counter) would trace and compile again. The
  steps also show that bf16 training keeps float32 parameters and BatchNorm statistics and
  finite losses and gradients (a non-finite gradient would make the parameters non-finite).
  """
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  monkeypatch.setattr(segmentation, 'train_step', chex.assert_max_traces(segmentation.train_step, n=1))
  try:
    # BatchNorm with batch statistics, so the running statistics are updated every step.
    step, (state, batch) = step_program.build_step(tiny_config('bfloat16'), 'train')
    assert dtypes(state.params) == dtypes(state.batch_stats) == {jnp.dtype(jnp.float32)}
    losses_seen = []
    for i in range(3):
      state, metrics = step(state, batch)
      losses_seen.append(float(metrics['loss']))
      if i == 0:
        compiles.clear()  # The first call compiles; no later one may.
    assert compiles == []
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert np.isfinite(losses_seen).all()
  assert dtypes(state.params) == dtypes(state.batch_stats) == {jnp.dtype(jnp.float32)}
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(state))
  assert int(state.step) == 3


def test_auto_compute_dtype_is_bf16_on_accelerators_only():
  assert resolve_compute_dtype('auto', 'gpu') == jnp.bfloat16
  assert resolve_compute_dtype('auto', 'tpu') == jnp.bfloat16
  assert resolve_compute_dtype('auto', 'cpu') == jnp.float32
  assert resolve_compute_dtype('bfloat16', 'cpu') == jnp.bfloat16  # Explicit names win.
  assert resolve_compute_dtype('float32', 'gpu') == jnp.float32
  with pytest.raises(ValueError, match='compute_dtype'):
    resolve_compute_dtype('float16')
