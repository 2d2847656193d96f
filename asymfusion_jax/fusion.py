"""Fusion of modalities: AsymFusion's two operations and the baselines' aggregations.

Everything here acts on a multimodal feature array shaped (M, B, H, W, C): modality axis first,
NHWC after it.

AsymFusion (docs/method.md section 3): channel_shuffle and pixel_shift, parameter-free. With
g = C // 5 and s = 4 * g, channels [0, s) form four groups of g channels and channels [s, C) are
the "last fifth" that crosses modalities.

The baselines of the paper's translation table (docs/method.md section 12) replace AsymFusion by
an aggregation whose one result feeds every branch (`Aggregation`: 'concat', 'average',
'attention'), or fuse only the branch outputs ('late'). `method` reads config.model.fusion.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Values of config.model.fusion (docs/method.md section 12). 'asym': AsymFusion's shuffle and
# shift; 'none': shared convs and per-modality normalisation only; 'concat', 'average' and
# 'attention' aggregate the modalities at the fusion points; 'late' (MMF) fuses only the outputs,
# as their plain mean.
METHODS = ('asym', 'none', 'concat', 'average', 'attention', 'late')
# The methods that aggregate inside the network, with the `Aggregation` of that name.
AGGREGATIONS = ('concat', 'average', 'attention')


def method(fusion) -> str:
  """The fusion method that a config.model.fusion value names: one of METHODS.

  Raises:
    ValueError: naming the value and the valid ones.
  """
  if isinstance(fusion, str) and fusion in METHODS:
    return fusion
  raise ValueError(f'unknown fusion {fusion!r}: choose one of {METHODS}')


# (dh, dw) of channel groups 0..3: out[i, j] = x[i + dh, j + dw]. (-1, 0) moves content down a row.
SHIFT_OFFSETS = ((-1, 0), (0, -1), (0, 1), (1, 0))


def _split_point(num_channels: int) -> int:
  return 4 * (num_channels // 5)


@jax.jit
def channel_shuffle(x: jax.Array) -> jax.Array:
  """Replaces channels [s, C) of modality m by those of modality (m + 1) mod M.

  For M = 2 this swaps the last C - s channels between the two modalities; for M = 1 it is the
  identity.
  """
  s = _split_point(x.shape[-1])
  return jnp.concatenate([x[..., :s], jnp.roll(x[..., s:], -1, axis=0)], axis=-1)


@functools.partial(jax.jit, static_argnames='reverse')
def pixel_shift(x: jax.Array, reverse: bool = False) -> jax.Array:
  """Moves channel group k of every modality by one pixel along SHIFT_OFFSETS[k].

  out[..., i, j, c] = x[..., i + dh, j + dw, c], zero outside the image; channels [s, C) are
  zero. reverse=True applies the offsets in reversed order. No modalities are mixed.
  """
  return _shift(x, reverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _shift(x: jax.Array, reverse: bool) -> jax.Array:
  """The four groups as one batch: a vmap of one dynamic slice of the zero-padded image.

  The group axis is vectorised, not looped over, so the program has one slice op whatever C is.
  """
  *lead, height, width, channels = x.shape
  g = channels // 5
  offsets = jnp.asarray(SHIFT_OFFSETS[::-1] if reverse else SHIFT_OFFSETS, jnp.int32)
  groups = x[..., :4 * g].reshape(*lead, height, width, 4, g)
  padded = jnp.pad(groups, [(0, 0)] * len(lead) + [(1, 1), (1, 1), (0, 0), (0, 0)])

  def take(group, offset):  # group: (..., H + 2, W + 2, g)
    start = [0] * len(lead) + [1 + offset[0], 1 + offset[1], 0]
    return jax.lax.dynamic_slice(group, start, (*lead, height, width, g))

  shifted = jax.vmap(take, in_axes=(-2, 0), out_axes=-2)(padded, offsets)
  zeros = jnp.zeros((*lead, height, width, channels - 4 * g), x.dtype)
  return jnp.concatenate([shifted.reshape(*lead, height, width, 4 * g), zeros], axis=-1)


def _shift_fwd(x, reverse):
  return _shift(x, reverse), None


def _shift_bwd(reverse, unused_residuals, g):
  # The adjoint of moving group k by (dh, dw) with zero fill is moving it by (-dh, -dw), and the
  # reversed offset list is exactly the negated one: a shift again, not the scatter-add that
  # autodiff of the slicing would produce.
  return (_shift(g, not reverse),)


_shift.defvjp(_shift_fwd, _shift_bwd)


def _mean_kernel_init(key, shape, dtype=jnp.float32):
  """A (1, 1, M * C, C) kernel that averages the M inputs: identity / M in every C x C block."""
  del key
  in_features, features = shape[-2], shape[-1]
  blocks = in_features // features
  eye = jnp.eye(features, dtype=dtype) / blocks
  return jnp.tile(eye, (blocks, 1)).reshape(shape)


class Aggregation(nn.Module):
  """One aggregate of the M modalities, fed to every branch (docs/method.md section 12).

  For y of shape (M, B, H, W, C), every modality m receives the same a (B, H, W, C):
  - 'concat': a = conv1x1(concat_m y_m) + bias, one 1x1 conv of M * C -> C channels
    (the channels of y_0 first);
  - 'average': a = mean_m y_m (no parameters);
  - 'attention': per pixel, w = softmax over m of conv1x1(y_m), a 1x1 conv of C -> 1 channel
    shared by the modalities; a = sum_m w_m y_m. The scorer has no bias: a bias would add the
    same score to every modality, which the softmax over m cancels.

  Both learned aggregations start as the average (ours): the concat kernel is identity / M in
  every block, with zero bias, and the scorer kernel is zero (uniform weights). So the features
  keep their scale at every fusion point from the first step, which matters where a pretrained
  backbone follows (segmentation), and the three baselines differ only by what they learn.
  The scores and weights are float32 whatever the compute dtype.

  Attributes:
    method: one of AGGREGATIONS.
    dtype: compute dtype of the convolutions and the result.
  """
  method: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    if self.method not in AGGREGATIONS:
      raise ValueError(f'unknown aggregation {self.method!r}; choose one of {AGGREGATIONS}')
    if y.ndim != 5:
      raise ValueError(f'Aggregation expects (M, B, H, W, C) features, got shape {y.shape}')
    num_modalities, features = y.shape[0], y.shape[-1]
    if self.method == 'average':
      aggregate = jnp.mean(y.astype(jnp.float32), axis=0)
    elif self.method == 'concat':
      stacked = jnp.concatenate(list(y), axis=-1)  # (B, H, W, M * C): [y_0, ..., y_{M-1}].
      aggregate = nn.Conv(features, (1, 1), use_bias=True, dtype=self.dtype,
                          param_dtype=jnp.float32, kernel_init=_mean_kernel_init,
                          bias_init=nn.initializers.zeros, name='conv')(stacked)
    else:
      scores = nn.Conv(1, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=nn.initializers.zeros, name='scorer')(y)
      weights = jax.nn.softmax(scores.astype(jnp.float32), axis=0)  # (M, B, H, W, 1).
      aggregate = jnp.sum(weights * y.astype(jnp.float32), axis=0)
    aggregate = aggregate.astype(self.dtype)
    return jnp.broadcast_to(aggregate[None], (num_modalities,) + aggregate.shape)
