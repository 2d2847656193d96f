"""Loss against PyTorch, metrics against NumPy and hand-worked values, and the visualiser."""

import warnings

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asymfusion_jax import running_sums
from asymfusion_jax.tasks.segmentation import losses, metrics, visualize

K = 4


def _torch_loss(logits, labels):
  """Reference per-output losses: F.interpolate to the label size, then F.cross_entropy."""
  out = []
  t_labels = torch.from_numpy(labels.astype(np.int64))
  for o in range(logits.shape[0]):
    t = torch.from_numpy(logits[o]).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=labels.shape[1:], mode='bilinear', align_corners=False)
    out.append(F.cross_entropy(t, t_labels, ignore_index=255))
  return out


def _random_batch(seed=0, num_outputs=3, batch=2, low=(5, 7), full=(17, 19)):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(num_outputs, batch, *low, K)).astype(np.float32) * 3
  labels = rng.integers(0, K, size=(batch, *full))
  labels[rng.random(labels.shape) < 0.3] = 255
  return logits, labels


def test_loss_matches_torch():
  logits, labels = _random_batch()
  want = _torch_loss(logits, labels)
  got = jax.jit(losses.per_output_losses)(logits, labels)
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, [w.item() for w in want], rtol=1e-5)
  total = jax.jit(losses.segmentation_loss)(logits, labels)
  assert total.shape == () and total.dtype == jnp.float32
  np.testing.assert_allclose(total, sum(w.item() for w in want), rtol=1e-5)


def test_loss_gradient_matches_torch():
  logits, labels = _random_batch(seed=1)
  t_logits = torch.from_numpy(logits).requires_grad_()
  t_labels = torch.from_numpy(labels.astype(np.int64))
  total = 0
  for o in range(logits.shape[0]):
    t = F.interpolate(t_logits[o].permute(0, 3, 1, 2), size=labels.shape[1:], mode='bilinear',
                      align_corners=False)
    total = total + F.cross_entropy(t, t_labels, ignore_index=255)
  total.backward()
  got = jax.grad(losses.segmentation_loss)(jnp.asarray(logits), labels)
  np.testing.assert_allclose(got, t_logits.grad.numpy(), atol=1e-6)


def test_loss_single_output_and_bf16():
  logits, labels = _random_batch(num_outputs=1)
  want = _torch_loss(logits, labels)[0].item()
  np.testing.assert_allclose(losses.per_output_losses(logits[0], labels), want, rtol=1e-5)
  got = losses.segmentation_loss(jnp.asarray(logits, jnp.bfloat16), labels)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-2)


def test_loss_all_ignored_is_zero_with_finite_gradient():
  logits, labels = _random_batch()
  labels[:] = 255
  loss, grad = jax.value_and_grad(losses.segmentation_loss)(jnp.asarray(logits), labels)
  assert loss == 0.0
  assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_loss_excludes_out_of_range_labels():
  logits, labels = _random_batch(seed=2)
  bad = labels.copy()
  bad[0, :3] = K
  bad[1, -2:] = -1
  cleaned = bad.copy()
  cleaned[(cleaned < 0) | (cleaned >= K)] = 255
  np.testing.assert_allclose(losses.per_output_losses(logits, bad),
                             [w.item() for w in _torch_loss(logits, cleaned)], rtol=1e-5)


def _numpy_confusion(pred, labels, num_classes):
  """pred, labels: same shape; counts pixels with 0 <= label < num_classes."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  keep = (labels >= 0) & (labels < num_classes)
  np.add.at(cm, (labels[keep], pred[keep]), 1)
  return cm


def test_confusion_matrix_exact_at_label_size():
  """Logits already at label size: resizing is the identity, so the argmax is known exactly."""
  rng = np.random.default_rng(3)
  outputs, batch, size = 3, 2, (6, 5)
  pred = rng.integers(0, K, size=(outputs, batch, *size))
  logits = np.eye(K, dtype=np.float32)[pred] * 5 + rng.random((*pred.shape, K)) * 0.1
  labels = rng.integers(0, K, size=(batch, *size))
  labels[0, 0] = 255
  labels[1, 1, :2] = K  # out-of-range labels must not be counted either
  labels[1, 2, 0] = -1
  got = jax.jit(metrics.confusion_matrix, static_argnums=2)(logits, labels, K)
  assert got.shape == (outputs, K, K) and got.dtype == jnp.int32
  for o in range(outputs):
    np.testing.assert_array_equal(got[o], _numpy_confusion(pred[o], labels, K))
  assert int(got[0].sum()) == labels.size - size[1] - 3


def test_confusion_matrix_matches_opencv_pipeline():
  """Stride-4 logits: bicubic upsampling with cv2.resize, argmax, then a NumPy confusion."""
  logits, labels = _random_batch(seed=4, low=(6, 5), full=(24, 20))
  got = np.asarray(metrics.confusion_matrix(logits, labels, K))
  for o in range(logits.shape[0]):
    want = np.zeros((K, K), np.int64)
    for b in range(labels.shape[0]):
      up = cv2.resize(logits[o, b], labels.shape[:0:-1], interpolation=cv2.INTER_CUBIC)
      want += _numpy_confusion(up.argmax(-1), labels[b], K)
    np.testing.assert_array_equal(got[o], want)


def test_confusion_matrix_mask_drops_padding_examples():
  logits, labels = _random_batch(seed=5, batch=3)
  mask = np.array([True, False, True])
  got = metrics.confusion_matrix(logits, labels, K, mask=mask)
  want = (metrics.confusion_matrix(logits[:, :1], labels[:1], K)
          + metrics.confusion_matrix(logits[:, 2:], labels[2:], K))
  np.testing.assert_array_equal(got, want)
  single = metrics.confusion_matrix(logits[0], labels, K, mask=mask)
  assert single.shape == (K, K)
  np.testing.assert_array_equal(single, got[0])


def test_running_sums_on_the_device_are_exact_past_32_bits():
  """Counts carry into a second uint32 word (a Cityscapes val set is ~1e9 pixels, int32 holds
  2.1e9); float sums are double-floats, float64's sums of the same float32 values."""
  add_counts = jax.jit(running_sums.add_counts)
  total = {'hi': jnp.zeros(3, jnp.uint32),
           'lo': jnp.asarray([2**32 - 5, 7, 2**32 - 1], jnp.uint32)}
  for _ in range(3):
    total = add_counts(total, jnp.asarray([10, 3, 2**31 - 1], jnp.int32))
  np.testing.assert_array_equal(running_sums.counts_to_host(total),
                                [2**32 + 25, 16, 2**32 - 1 + 3 * (2**31 - 1)])

  add_rows = jax.jit(running_sums.add_float_rows)
  rng = np.random.default_rng(0)
  # 2**24 + 1 is not a float32: a float32 sum of 2**24 and ones never moves.
  values = np.concatenate([[[2.0**24]], np.ones((1, 99))], axis=1).astype(np.float32)
  values = np.concatenate([values, rng.uniform(0, 1, (1, 100)).astype(np.float32)
                           * 10.0 ** rng.integers(-4, 6, (1, 100))]).astype(np.float32)
  mask = rng.uniform(size=100) < 0.8
  mask[0] = True
  total = running_sums.zero_floats((2,))
  for start in range(0, 100, 4):  # Batches of 4 rows, some masked.
    total = add_rows(total, values[:, start:start + 4], mask[start:start + 4])
  expected = values[:, mask].astype(np.float64).sum(axis=1)
  assert running_sums.floats_to_host(total)[0] == 2**24 + mask[1:].sum()
  np.testing.assert_allclose(running_sums.floats_to_host(total), expected, rtol=1e-13)


# Worked by hand. Rows = ground truth. Class 2 is predicted but never labelled; class 3 is absent.
HAND_CM = np.array([[6, 2, 0, 0],
                    [1, 2, 1, 0],
                    [0, 0, 0, 0],
                    [0, 0, 0, 0]])
# pixel acc = (6 + 2) / 12; class acc = 6/8, 2/4 (classes 2, 3: NaN) -> mean 0.625;
# IoU = 6/(8+7-6), 2/(4+4-2), 0/(0+1-0), NaN -> mean (2/3 + 1/3 + 0) / 3 = 1/3.
HAND_SCORES = {'pixel_acc': 100 * 8 / 12, 'mean_acc': 62.5, 'miou': 100 / 3}


def test_scores_hand_worked():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    got = metrics.scores(HAND_CM)
  assert set(got) == set(HAND_SCORES)
  for k, v in HAND_SCORES.items():
    assert isinstance(got[k], float)
    np.testing.assert_allclose(got[k], v, rtol=1e-12)


def test_scores_batched_and_empty():
  perfect = np.diag([3, 0, 5, 1])
  stacked = np.stack([HAND_CM, perfect, np.zeros((K, K), np.int64)])
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    got = metrics.scores(stacked)
  for k, v in HAND_SCORES.items():
    assert got[k].shape == (3,)
    np.testing.assert_allclose(got[k][:2], [v, 100.0], rtol=1e-12)
    assert np.isnan(got[k][2])


def test_branch_scores_and_table():
  results = metrics.branch_scores(np.stack([HAND_CM, np.diag([1, 1, 1, 1])]), ['rgb', 'ensemble'])
  assert list(results) == ['rgb', 'ensemble']
  np.testing.assert_allclose(results['rgb']['miou'], 100 / 3)
  table = metrics.format_table(results).splitlines()
  assert table[0].split() == ['branch', 'pixel', 'acc', 'mean', 'acc', 'mIoU']
  assert table[2].split() == ['rgb', '66.67', '62.50', '33.33']
  assert table[3].split() == ['ensemble', '100.00', '100.00', '100.00']
  assert len({len(line) for line in table}) == 1  # fixed width
  with pytest.raises(ValueError):
    metrics.branch_scores(np.stack([HAND_CM]), ['rgb', 'depth'])


def test_colorize_palette():
  labels = np.array([[0, 1, 254, 255], [-1, 300, 3, 0]])
  rgb = visualize.colorize(labels)
  assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[0, 3], 0)
  np.testing.assert_array_equal(rgb[1, :2], 0)
  np.testing.assert_array_equal(rgb[0, 0], rgb[1, 3])
  colours = visualize.PALETTE[:255]
  assert np.all(colours.any(axis=1))  # no real class is black
  assert len(np.unique(colours, axis=0)) == 255
