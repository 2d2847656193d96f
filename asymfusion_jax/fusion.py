"""The two parameter-free fusion operations of AsymFusion (SPEC section 3).

Both act on a multimodal feature array shaped (M, B, H, W, C): modality axis first, NHWC after
it. With g = C // 5 and s = 4 * g, channels [0, s) form four groups of g channels and channels
[s, C) are the "last fifth" that crosses modalities.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def _shift_indices(height: int, width: int, channels: int, reverse: bool):
  """Static gather indices into the one-pixel zero-padded image, one per output (i, j, c).

  Channels past s read the padded corner (0, 0), which is zero, so they come out zero.
  """
  g = channels // 5
  offsets = np.array(SHIFT_OFFSETS[::-1] if reverse else SHIFT_OFFSETS)
  dh = np.zeros(channels, np.int32)
  dw = np.zeros(channels, np.int32)
  dh[:4 * g] = np.repeat(offsets[:, 0], g)
  dw[:4 * g] = np.repeat(offsets[:, 1], g)
  rows = np.arange(height)[:, None, None] + 1 + dh[None, None, :]
  cols = np.arange(width)[None, :, None] + 1 + dw[None, None, :]
  rows, cols = np.broadcast_arrays(rows, cols)
  rows, cols = rows.copy(), cols.copy()
  outside = np.arange(channels) >= 4 * g
  rows[..., outside] = 0
  cols[..., outside] = 0
  chans = np.broadcast_to(np.arange(channels), rows.shape)
  return rows, cols, chans


@functools.partial(jax.jit, static_argnames='reverse')
def pixel_shift(x: jax.Array, reverse: bool = False) -> jax.Array:
  """Moves channel group k of every modality by one pixel along SHIFT_OFFSETS[k].

  out[..., i, j, c] = x[..., i + dh, j + dw, c], zero outside the image; channels [s, C) are
  zero. reverse=True applies the offsets in reversed order. No modalities are mixed.
  """
  *_, height, width, channels = x.shape
  rows, cols, chans = _shift_indices(height, width, channels, reverse)
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
  return padded[..., rows, cols, chans]
