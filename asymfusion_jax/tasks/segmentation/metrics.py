"""Evaluation metrics: confusion matrices on device, scores and tables on the host.

docs/method.md section 6.

mIoU is not a mean of per-batch mIoUs: the confusion matrices of the whole evaluation set are
summed first and the scores taken once at the end. Per batch the device returns int32 counts
(a batch cannot hold 2**31 pixels); the evaluation sums them across batches on the device in two
uint32 words (running_sums), since a full evaluation set can exceed int32 in the background class.
"""

import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import resize

METRIC_NAMES = ('pixel_acc', 'mean_acc', 'miou')


def confusion_matrix(logits: jax.Array, labels: jax.Array, num_classes: int,
                     mask: jax.Array | None = None) -> jax.Array:
  """Per-output confusion matrices of a batch, rows = ground truth, columns = prediction.

  The reference evaluates at full label resolution after OpenCV bicubic upsampling of the logits,
  so the logits are resized with resize.resize(..., 'cubic_opencv') before the argmax.

  Args:
    logits: (..., B, h, w, K) logits, normally (M + 1, B, h, w, K) at stride 4.
    labels: (B, H, W) integer labels. Only pixels with 0 <= label < num_classes count, which
      drops the ignore label 255.
    num_classes: K; static under jit.
    mask: optional (B,) bool, False for padding examples of an incomplete last batch, which must
      not be counted.

  Returns:
    int32 counts of shape logits.shape[:-4] + (K, K).
  """
  if logits.shape[-1] != num_classes:
    raise ValueError(f'logits have {logits.shape[-1]} classes, expected {num_classes}')
  lead = logits.shape[:-4]
  num_outputs = int(np.prod(lead, dtype=np.int64))
  logits = resize.resize(logits.astype(jnp.float32), labels.shape[-2:], 'cubic_opencv')
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32).reshape((num_outputs,) + labels.shape)
  valid = (labels >= 0) & (labels < num_classes)
  if mask is not None:
    valid &= mask.astype(bool)[:, None, None]
  gt = jnp.where(valid, labels, 0).astype(jnp.int32)
  # One flat scatter-add into (outputs * K * K) bins; this avoids a (pixels, K, K) one-hot.
  size = num_classes * num_classes
  bins = (jnp.arange(num_outputs, dtype=jnp.int32)[:, None, None, None] * size
          + gt * num_classes + pred)
  counts = jnp.zeros((num_outputs * size,), jnp.int32).at[bins.ravel()].add(
      jnp.broadcast_to(valid, bins.shape).astype(jnp.int32).ravel())
  return counts.reshape(lead + (num_classes, num_classes))


def _nanmean(x: np.ndarray) -> np.ndarray:
  """Mean over the last axis ignoring NaN; NaN (not a warning) when every entry is NaN."""
  finite = ~np.isnan(x)
  count = finite.sum(axis=-1)
  total = np.where(finite, x, 0.0).sum(axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def scores(confusion) -> dict:
  """Pixel accuracy, mean class accuracy and mIoU, in percent.

  Classes whose denominator is zero (absent from the ground truth for mean accuracy; absent from
  both ground truth and prediction for IoU) are NaN and left out of the means, as in the reference.
  A confusion matrix with no pixels at all gives NaN for every score rather than raising.

  Args:
    confusion: (K, K) or (N, K, K) counts, rows = ground truth.

  Returns:
    {'pixel_acc', 'mean_acc', 'miou'}: Python floats for a (K, K) input, (N,) float64 arrays for
    an (N, K, K) input.
  """
  cm = np.asarray(confusion, dtype=np.float64)
  if cm.ndim not in (2, 3) or cm.shape[-1] != cm.shape[-2]:
    raise ValueError(f'confusion must be (K, K) or (N, K, K), got shape {cm.shape}')
  diag = np.diagonal(cm, axis1=-2, axis2=-1)
  rows = cm.sum(axis=-1)
  cols = cm.sum(axis=-2)
  total = rows.sum(axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    pixel_acc = np.where(total > 0, diag.sum(axis=-1) / total, np.nan)
    class_acc = np.where(rows > 0, diag / rows, np.nan)
    union = rows + cols - diag
    iou = np.where(union > 0, diag / union, np.nan)
  result = {'pixel_acc': 100.0 * pixel_acc,
            'mean_acc': 100.0 * _nanmean(class_acc),
            'miou': 100.0 * _nanmean(iou)}
  if cm.ndim == 2:
    result = {k: float(v) for k, v in result.items()}
  return result


def branch_scores(confusion, names) -> dict:
  """{name: scores} for (N, K, K) confusion matrices, one name per output (branches, ensemble)."""
  confusion = np.asarray(confusion)
  if len(names) != confusion.shape[0]:
    raise ValueError(f'{len(names)} names for {confusion.shape[0]} confusion matrices')
  return {name: scores(cm) for name, cm in zip(names, confusion)}


def format_table(results: dict, title: str | None = None) -> str:
  """A fixed-width text table, one row per branch, scores in percent with two decimals.

  Args:
    results: {branch_name: {'pixel_acc': .., 'mean_acc': .., 'miou': ..}}, e.g. from
      branch_scores; rows keep the dict's order.
    title: a line above the table, e.g. 'validation at step 250', so that a log of several
      evaluations says which table is which.
  """
  headers = ('branch', 'pixel acc', 'mean acc', 'mIoU')
  width = max([len(headers[0])] + [len(str(name)) for name in results])
  lines = [f'{headers[0]:<{width}}' + ''.join(f'  {h:>9}' for h in headers[1:])]
  lines.append('-' * len(lines[0]))
  for name, res in results.items():
    lines.append(f'{str(name):<{width}}'
                 + ''.join(f'  {float(res[k]):>9.2f}' for k in METRIC_NAMES))
  return '\n'.join(([title] if title else []) + lines)
