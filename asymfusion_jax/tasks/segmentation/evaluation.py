"""Exact evaluation over the whole validation set (docs/method.md sections 6 and 13).

Every validation image counts once, at full resolution: per-batch confusion matrices of every
branch and of the ensemble are summed on the host in int64, then pixel acc, mean acc and mIoU are
taken once. The first config.num_prediction_images images are also written as colour-coded PNGs
(by process 0, from its own rows of the first batches when there are several processes).

Cityscapes (config.data.name 'cityscapes') evaluates as TF-DeepLab: at config.eval.output_stride
(the trained weights serve either stride), optionally at several scales (config.eval.scales, the
image resized to ((H - 1) s + 1, (W - 1) s + 1) with align_corners) and mirrored
(config.eval.flip), the softmax probabilities of every pass resized back to H x W and summed per
branch before the argmax. It also writes eval_step_N.json (per-class IoU and the confusion
matrices of every branch) and its predictions as PNGs in the Cityscapes palette.
"""

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import resize, sharding
from asymfusion_jax.data import cityscapes
from asymfusion_jax.data import layout
from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data import segmentation_pipeline
from asymfusion_jax.tasks.segmentation import metrics, visualize


def branch_names(config) -> list[str]:
  return list(config.modalities) + ['ensemble']


def eval_step(variables, batch, *, model, num_classes):
  logits = model.apply(variables, batch['image'], train=False)
  return metrics.confusion_matrix(logits, batch['label'], num_classes, batch['mask'])


def jit_eval_step(model, config, mesh):
  """eval_step under jit, its summed confusion matrices replicated on every device."""
  return jax.jit(functools.partial(eval_step, model=model, num_classes=config.model.num_classes),
                 out_shardings=sharding.replicated(mesh))


def predict_step(variables, image, label_size, *, model):
  """Per-branch argmax predictions at label resolution, (M + 1, B, H, W)."""
  logits = model.apply(variables, image, train=False)
  return jnp.argmax(resize.resize(logits, label_size, 'cubic_opencv'), axis=-1)


def multiscale_probabilities(variables, image, *, model, scales, flip):
  """Summed softmax probabilities (M + 1, B, H, W, K) over scales and (optionally) mirroring."""
  height, width = image.shape[2:4]
  total = 0.0
  for scale in scales:
    size = (int((height - 1) * scale + 1), int((width - 1) * scale + 1))
    x = resize.resize(image, size, 'bilinear_align_corners')
    for mirrored in ((False, True) if flip else (False,)):
      logits = model.apply(variables, x[:, :, :, ::-1] if mirrored else x, train=False)
      if mirrored:
        logits = logits[:, :, :, ::-1]
      logits = resize.resize(logits, (height, width), 'bilinear_align_corners')
      total = total + jax.nn.softmax(logits, axis=-1)
  return total


def cityscapes_eval_step(variables, batch, *, model, num_classes, scales, flip):
  """(summed confusion matrices (M + 1, K, K), per-branch predictions uint8 (M + 1, B, H, W))."""
  probabilities = multiscale_probabilities(variables, batch['image'], model=model, scales=scales,
                                           flip=flip)
  confusion = metrics.confusion_matrix(probabilities, batch['label'], num_classes, batch['mask'])
  return confusion, jnp.argmax(probabilities, axis=-1).astype(jnp.uint8)


def _unnormalise(m: modality_lib.Modality, x: np.ndarray) -> np.ndarray:
  """Raw pixel values of a normalised (H, W, 3) input, for display."""
  return (x * np.asarray(m.std) + np.asarray(m.mean)) / m.scale


class Evaluator:
  """Runs the validation pass; compiled functions are cached across calls."""

  def __init__(self, model, config, mesh):
    self.model, self.config, self.mesh = model, config, mesh
    self.cityscapes = config.data.name == 'cityscapes'
    if self.cityscapes:  # The same weights at the evaluation's output stride.
      self.model = model = model.clone(output_stride=config.eval.output_stride)
    # Every device takes as many rows, so batches are filled up to the mesh with masked rows.
    self.batch_size = sharding.padded_batch_size(config.eval_batch_size)
    if self.batch_size != config.eval_batch_size:
      logging.info('Evaluating %d images per batch: config.eval_batch_size=%d rounded up to a '
                   'multiple of the %d devices (the rows past the last image are masked).',
                   self.batch_size, config.eval_batch_size, jax.device_count())
    if self.cityscapes:
      step = functools.partial(cityscapes_eval_step, model=model,
                               num_classes=config.model.num_classes,
                               scales=tuple(float(x) for x in config.eval.scales),
                               flip=bool(config.eval.flip))
      self._eval = jax.jit(step, out_shardings=(
          sharding.replicated(mesh), jax.sharding.NamedSharding(
              mesh, jax.sharding.PartitionSpec(None, 'data'))))
      return
    self._eval = jit_eval_step(model, config, mesh)
    # Replicated, so that process 0 can read the predictions of its rows from a global batch.
    self._predict = jax.jit(functools.partial(predict_step, model=model), static_argnums=2,
                            out_shardings=sharding.replicated(mesh))

  def run(self, variables, out_dir: str | None = None, step: int | None = None) -> dict:
    """Returns {branch: {'pixel_acc', 'mean_acc', 'miou'}} in percent and prints the table.

    The table's title names `step`, the training step of `variables`, when given. With out_dir, the first config.num_prediction_images predictions are written to
    out_dir/predictions/ (training passes its workdir, --mode=eval its eval/step_N folder).
    """
    config = self.config
    names = branch_names(config)
    total = np.zeros((len(names), config.model.num_classes, config.model.num_classes), np.int64)
    to_draw = config.num_prediction_images if out_dir else 0
    drawn = 0
    batches = segmentation_pipeline(config).eval_batches(
        config, jax.process_index(), jax.process_count(), self.batch_size)
    for i, local in enumerate(batches):
      image_names = local.pop('name', None)
      batch = sharding.global_batch(self.mesh, local)
      if self.cityscapes:
        confusion, preds = self._eval(variables, batch)
        total += np.asarray(jax.device_get(confusion), np.int64)
        if drawn < to_draw and jax.process_index() == 0:
          drawn += _draw_cityscapes(preds, local, image_names, names, out_dir, to_draw - drawn)
        continue
      total += np.asarray(jax.device_get(self._eval(variables, batch)), np.int64)
      # Every process has as many rows per batch, so all run the (collective) prediction of the
      # same first batches.
      if i * len(local['label']) < to_draw:
        preds = self._predict(variables, batch['image'], tuple(local['label'].shape[1:]))
        if jax.process_index() == 0:
          rows = _local_rows(batch['image'], axis=1)
          drawn += self._draw(np.asarray(preds)[:, rows], local, out_dir, drawn, to_draw - drawn)
    results = metrics.branch_scores(total, names)
    logging.info('Evaluated %d labelled pixels.', int(total[0].sum()))
    if self.cityscapes and out_dir and jax.process_index() == 0:
      name = 'eval.json' if step is None else f'eval_step_{step}.json'
      _write_cityscapes_json(os.path.join(out_dir, name), config, total,
                             names, results, step)
    title = f'validation at step {step}' if step is not None else None
    print(metrics.format_table(results, title), flush=True)
    return results

  def _draw(self, preds, local, out_dir, first, limit) -> int:
    """Writes PNGs of up to `limit` valid rows of this process's batch; preds are its rows."""
    names = branch_names(self.config)
    folder = os.path.join(out_dir, 'predictions')
    count = 0
    norms = modality_lib.of_config(self.config)
    for b in np.flatnonzero(local['mask'])[:limit]:
      raw = {name: _unnormalise(norms[name], local['image'][m, b])
             for m, name in enumerate(self.config.modalities)}
      blank = np.zeros(local['label'].shape[1:] + (3,), np.uint8)
      rgb = np.clip(np.rint(raw['rgb']), 0, 255).astype(np.uint8) if 'rgb' in raw else blank
      visualize.save_prediction_panel(
          os.path.join(folder, f'{first + count:04d}.png'),
          rgb, raw['depth'][..., 0] if 'depth' in raw else blank, local['label'][b],
          {name: preds[i, b] for i, name in enumerate(names)},
          names=visualize.class_names(self.config), palette=visualize.palette(self.config))
      count += 1
    return count


def _draw_cityscapes(preds: jax.Array, local: dict, image_names, branches, out_dir: str,
                     limit: int) -> int:
  """Writes predictions/<image>_<branch>.png (Cityscapes palette) of this process's valid rows.

  Only this process's shards of `preds` (M + 1, B, H, W) are read. Returns how many images.
  """
  folder = os.path.join(out_dir, 'predictions')
  os.makedirs(folder, exist_ok=True)
  rows = {}
  for shard in preds.addressable_shards:
    start = shard.index[1].start or 0
    data = np.asarray(shard.data)
    for j in range(data.shape[1]):
      rows[start + j] = data[:, j]
  # This process's rows of the global batch, in order, are its local rows 0, 1, ...
  count = 0
  for local_row, global_row in enumerate(sorted(rows)):
    if count >= limit or not local['mask'][local_row]:
      continue
    stem = os.path.basename(image_names[local_row]).removesuffix('_leftImg8bit.png')
    for b, branch in enumerate(branches):
      layout.write_png(os.path.join(folder, f'{stem}_{branch}.png'),
                       cityscapes.colorize(rows[global_row][b]))
    count += 1
  return count


def _write_cityscapes_json(path: str, config, total: np.ndarray, names, results: dict,
                           step) -> None:
  """eval_step_N.json: settings, per-branch scores with per-class IoU, confusion matrices."""
  cm = total.astype(np.float64)
  diag = np.diagonal(cm, axis1=-2, axis2=-1)
  union = cm.sum(-1) + cm.sum(-2) - diag
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, 100.0 * diag / union, np.nan)
  record = {
      'step': step, 'output_stride': int(config.eval.output_stride),
      'scales': [float(x) for x in config.eval.scales], 'flip': bool(config.eval.flip),
      'classes': list(cityscapes.CLASS_NAMES),
      'branches': {name: {**results[name], 'iou': {
          c: (None if np.isnan(v) else float(v)) for c, v in zip(cityscapes.CLASS_NAMES, iou[b])}}
                   for b, name in enumerate(names)},
      'confusion': {name: total[b].tolist() for b, name in enumerate(names)},
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=1)


def _local_rows(array: jax.Array, axis: int) -> np.ndarray:
  """The global indices along `axis` of this process's rows of a sharded array, in order."""
  size = array.shape[axis]
  rows = {r for shard in array.addressable_shards
          for r in range(*shard.index[axis].indices(size))}
  return np.asarray(sorted(rows))
