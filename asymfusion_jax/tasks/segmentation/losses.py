"""Training loss: per-output cross-entropy at label resolution, summed over outputs.

docs/method.md section 6.

The model predicts at stride 4, the reference upsamples every output's logits to the label size
with F.interpolate(mode='bilinear', align_corners=False) and applies
F.cross_entropy(ignore_index=255) to each, then adds the M branch losses and the ensemble loss.
The ensemble only trains `alpha` (its inputs are stop_gradient'ed in the model), so summing the
losses is what lets each branch learn from its own prediction alone.
"""

import jax
import jax.numpy as jnp

from asymfusion_jax import resize


def per_output_losses(logits: jax.Array, labels: jax.Array, ignore_label: int = 255) -> jax.Array:
  """Mean cross-entropy of every output over the labelled pixels.

  Args:
    logits: (..., B, h, w, K) logits; the leading axes (typically M + 1: the M branches then the
      ensemble) index independent outputs. Any float dtype; the loss is computed in float32 so
      that log_softmax over K classes does not lose precision under bf16 compute.
    labels: (B, H, W) integer labels at full resolution.
    ignore_label: pixels with this label do not contribute. Labels outside [0, K) are excluded
      too: PyTorch would raise on them, and under jit there is no way to raise, so they are
      treated like the metrics treat them (only 0 <= label < K counts).

  Returns:
    float32 losses of shape logits.shape[:-4] (a scalar for a single (B, h, w, K) output).
    An output whose batch has no labelled pixel gets 0, not NaN as PyTorch would give, so that a
    fully-ignored crop cannot poison the parameters.
  """
  if logits.ndim < 4:
    raise ValueError(f'logits must be (..., B, h, w, K), got shape {logits.shape}')
  if labels.shape[0] != logits.shape[-4]:
    raise ValueError(f'batch size of labels {labels.shape} does not match logits {logits.shape}')
  num_classes = logits.shape[-1]
  logits = resize.resize(logits.astype(jnp.float32), labels.shape[-2:], 'bilinear')
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  safe_labels = jnp.broadcast_to(safe_labels, log_probs.shape[:-1])
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  nll = jnp.where(valid, nll, 0.0)
  count = jnp.sum(valid).astype(jnp.float32)
  return jnp.sum(nll, axis=(-3, -2, -1)) / jnp.maximum(count, 1.0)


def segmentation_loss(logits: jax.Array, labels: jax.Array, ignore_label: int = 255) -> jax.Array:
  """The training objective: per_output_losses summed over all outputs, a float32 scalar."""
  return jnp.sum(per_output_losses(logits, labels, ignore_label))
