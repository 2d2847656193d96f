"""The two parameter-free fusion operations of AsymFusion (docs/method.md section 3).

Both act on a multimodal feature array shaped (M, B, H, W, C): modality axis first, NHWC after
it. With g = C // 5 and s = 4 * g, channels [0, s) form four groups of g channels and channels
[s, C) are the "last fifth" that crosses modalities.
"""

import functools

import jax
import jax.numpy as jnp

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
