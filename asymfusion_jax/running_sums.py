"""Sums kept on the device across the batches of an evaluation, exact, and read once at the end.

JAX computes in 32 bits unless jax_enable_x64 is set (and this project leaves it unset), while a
whole evaluation outgrows 32 bits: Cityscapes val is 500 x 1024 x 2048 ~ 1.05e9 labelled pixels,
half of int32's range in one confusion matrix, and a larger set or more passes overflow it. So
neither sum is kept in one 32-bit number:

- counts: two uint32 words per entry, `lo` and `hi`. Adding a batch's count c (0 <= c < 2**32,
  e.g. an int32 confusion matrix) is lo' = lo + c modulo 2**32 with the carry (lo' < lo) added to
  hi; the pair holds hi * 2**32 + lo exactly, up to 2**64 - 1, in x64 mode or not, on every
  backend. The host reads it once as int64.
- floats: two float32 words per entry, `hi` + `lo`, a double-float: each value x is added with
  Knuth's TwoSum (s = hi + x rounded, and the exact rounding error of that addition), the error
  goes to lo and the pair is renormalised. Every addition is exact but for the rounding of lo,
  under 2**-47 of the sum, so n additions of non-negative values (the L1 and squared errors)
  stay within n * 2**-47 relative of the exact sum of the float32 values: float64's own sum of
  them, as the host accumulated before, to ~1e-8 for a million terms. TwoSum uses additions
  and subtractions only, which XLA does not reassociate.

A sum is a dict of arrays (a pytree), created on the device by zeros_* under jit, updated by
add_* inside the jitted evaluation step, and read back by *_to_host.
"""

import jax
import jax.numpy as jnp
import numpy as np

_WORD = 2 ** 32


def zero_counts(shape) -> dict:
  return {'hi': jnp.zeros(shape, jnp.uint32), 'lo': jnp.zeros(shape, jnp.uint32)}


def add_counts(total: dict, counts: jax.Array) -> dict:
  """total + counts for non-negative integer counts below 2**32, exact (carry into hi)."""
  lo = total['lo'] + counts.astype(jnp.uint32)  # Wraps modulo 2**32.
  return {'hi': total['hi'] + (lo < total['lo']).astype(jnp.uint32), 'lo': lo}


def counts_to_host(total: dict) -> np.ndarray:
  """int64 counts of a zero_counts sum (jax or NumPy arrays)."""
  hi, lo = (np.asarray(jax.device_get(total[k])).astype(np.int64) for k in ('hi', 'lo'))
  if np.any(hi >= 2 ** 31):
    raise OverflowError('a count exceeds int64')
  return hi * _WORD + lo


def zero_floats(shape) -> dict:
  return {'hi': jnp.zeros(shape, jnp.float32), 'lo': jnp.zeros(shape, jnp.float32)}


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth; no condition on |a|, |b|)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def add_floats(total: dict, values: jax.Array) -> dict:
  """total + values (float32, total's shape), as a double-float."""
  s, e = _two_sum(total['hi'], values.astype(jnp.float32))
  hi, lo = _two_sum(s, total['lo'] + e)
  return {'hi': hi, 'lo': lo}


def add_float_rows(total: dict, values: jax.Array, mask: jax.Array) -> dict:
  """total + the sum of values[..., b] over the rows b where mask[b], one row at a time (each an
  exact TwoSum: a float32 sum over the batch first would round at every row)."""
  for b in range(values.shape[-1]):
    total = add_floats(total, jnp.where(mask[b], values[..., b], 0.0))
  return total


def floats_to_host(total: dict) -> np.ndarray:
  """float64 values of a zero_floats sum."""
  hi, lo = (np.asarray(jax.device_get(total[k])).astype(np.float64) for k in ('hi', 'lo'))
  return hi + lo
