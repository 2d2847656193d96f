"""Exact evaluation over the whole validation set (docs/method.md sections 6 and 13).

Every validation image counts once, at full resolution: the confusion matrices of every branch
and of the ensemble are summed on the devices across batches, exactly (running_sums: two uint32
words per entry, as a full Cityscapes val set's ~1e9 labelled pixels leave little room in int32),
read by the host once per evaluation as int64, and pixel acc, mean acc and mIoU are taken once.
The first config.num_prediction_images images are also written as colour-coded PNGs by process 0,
from its own rows of the first batches (the predictions stay sharded along the batch; each
process reads only its own shards).

The dataset (data.get(config)) says how it is evaluated (its EVALUATION, data/base.py). Those of
'tf_deeplab' (Cityscapes) evaluate as TF-DeepLab: at config.eval.output_stride (the trained
weights serve either stride), optionally at several scales (config.eval.scales, the image resized
to ((H - 1) s + 1, (W - 1) s + 1) with align_corners) and mirrored (config.eval.flip), the
softmax probabilities of every pass resized back to H x W and summed per branch before the
argmax. It also writes eval_step_N.json (per-class IoU and the confusion matrices of every
branch) and its predictions as PNGs in the dataset's palette; with config.eval.write_label_ids,
the ensemble's prediction of every val image in the dataset's own label convention
(predict_io: Cityscapes' label ids, label_ids/<city>/<city>_<seq>_<frame>_leftImg8bit.png, which
cityscapesscripts' evaluator reads).
"""

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import data, resize, running_sums, sharding
from asymfusion_jax.data import layout
from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data import predict_io
from asymfusion_jax.tasks.segmentation import metrics, visualize


def branch_names(config) -> list[str]:
  return list(config.modalities) + ['ensemble']


def eval_step(variables, batch, totals=None, *, model, num_classes):
  """totals (None: zeros) + this batch's confusion matrices (M + 1, K, K), summed on the device
  (running_sums.zero_counts)."""
  logits = model.apply(variables, batch['image'], train=False)
  counts = metrics.confusion_matrix(logits, batch['label'], num_classes, batch['mask'])
  return running_sums.add_counts(
      running_sums.zero_counts(counts.shape) if totals is None else totals, counts)


def jit_eval_step(model, config, mesh):
  """eval_step under jit, the summed confusion matrices replicated on every device (every
  process reads the same scores)."""
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


def tf_deeplab_eval_step(variables, batch, totals, *, model, num_classes, scales, flip):
  """(totals + this batch's confusion matrices (M + 1, K, K), per-branch predictions uint8
  (M + 1, B, H, W))."""
  probabilities = multiscale_probabilities(variables, batch['image'], model=model, scales=scales,
                                           flip=flip)
  confusion = metrics.confusion_matrix(probabilities, batch['label'], num_classes, batch['mask'])
  return (running_sums.add_counts(totals, confusion),
          jnp.argmax(probabilities, axis=-1).astype(jnp.uint8))


def _unnormalise(m: modality_lib.Modality, x: np.ndarray) -> np.ndarray:
  """Raw pixel values of a normalised (H, W, 3) input, for display."""
  return (x * np.asarray(m.std) + np.asarray(m.mean)) / m.scale


class Evaluator:
  """Runs the validation pass; compiled functions are cached across calls."""

  def __init__(self, model, config, mesh):
    self.model, self.config, self.mesh = model, config, mesh
    self.dataset = data.get(config)
    self.tf_deeplab = self.dataset.EVALUATION == 'tf_deeplab'
    if self.tf_deeplab:  # The same weights at the evaluation's output stride.
      self.model = model = model.clone(output_stride=config.eval.output_stride)
    # Every device takes as many rows, so batches are filled up to the mesh with masked rows.
    self.batch_size = sharding.padded_batch_size(config.eval_batch_size)
    if self.batch_size != config.eval_batch_size:
      logging.info('Evaluating %d images per batch: config.eval_batch_size=%d rounded up to a '
                   'multiple of the %d devices (the rows past the last image are masked).',
                   self.batch_size, config.eval_batch_size, jax.device_count())
    self.label_ids = self.tf_deeplab and bool(config.eval.get('write_label_ids', False))
    if self.tf_deeplab:
      step = functools.partial(tf_deeplab_eval_step, model=model,
                               num_classes=config.model.num_classes,
                               scales=tuple(float(x) for x in config.eval.scales),
                               flip=bool(config.eval.flip))
      self._eval = jax.jit(step, out_shardings=(sharding.replicated(mesh),
                                                sharding.batch_sharding(mesh, 1)))
    else:
      self._eval = jit_eval_step(model, config, mesh)
      # Sharded along the batch: process 0 reads the predictions of its rows from its shards.
      self._predict = jax.jit(functools.partial(predict_step, model=model), static_argnums=2,
                              out_shardings=sharding.batch_sharding(mesh, 1))
    num_outputs, k = len(branch_names(config)), config.model.num_classes
    self._zeros = jax.jit(lambda: running_sums.zero_counts((num_outputs, k, k)),
                          out_shardings=sharding.replicated(mesh))

  def run(self, variables, out_dir: str | None = None, step: int | None = None) -> dict:
    """Returns {branch: {'pixel_acc', 'mean_acc', 'miou'}} in percent and prints the table.

    The table's title names `step`, the training step of `variables`, when given. With out_dir,
    the first config.num_prediction_images predictions are written to out_dir/predictions/
    (training passes its workdir, --mode=eval its eval/step_N folder).
    """
    config = self.config
    names = branch_names(config)
    total = self.confusion_matrices(variables, out_dir)
    results = metrics.branch_scores(total, names)
    logging.info('Evaluated %d labelled pixels.', int(total[0].sum()))
    if self.tf_deeplab and out_dir and jax.process_index() == 0:
      name = 'eval.json' if step is None else f'eval_step_{step}.json'
      _write_eval_json(os.path.join(out_dir, name), config, total, names, results, step,
                       self.dataset.class_names(config))
    title = f'validation at step {step}' if step is not None else None
    print(metrics.format_table(results, title), flush=True)
    return results

  def confusion_matrices(self, variables, out_dir: str | None = None) -> np.ndarray:
    """int64 (M + 1, K, K): the confusion matrices of every branch over the validation set,
    summed on the devices and read once; with out_dir, the first predictions are drawn too (and,
    with config.eval.write_label_ids, every Cityscapes val image's label ids are written)."""
    config = self.config
    names = branch_names(config)
    totals = self._zeros()
    to_draw = config.num_prediction_images if out_dir else 0
    drawn = 0
    batches = self.dataset.eval_batches(
        config, jax.process_index(), jax.process_count(), self.batch_size)
    for i, local in enumerate(batches):
      image_names = local.pop('name', None)
      batch = sharding.global_batch(self.mesh, local)
      if self.tf_deeplab:
        totals, preds = self._eval(variables, batch, totals)
        draw = drawn < to_draw and jax.process_index() == 0
        label_ids = self.label_ids and out_dir
        if draw or label_ids:
          mine = sharding.process_rows(preds, axis=1)  # Only this process's shards are read.
          if draw:
            drawn += _draw_palette_predictions(mine, local, image_names, names, out_dir,
                                               to_draw - drawn, self.dataset, config)
          if label_ids:
            _write_label_ids(config, mine, local, image_names, out_dir)
        continue
      totals = self._eval(variables, batch, totals)
      # Every process has as many rows per batch, so all run the (collective) prediction of the
      # same first batches.
      if i * len(local['label']) < to_draw:
        preds = self._predict(variables, batch['image'], tuple(local['label'].shape[1:]))
        if jax.process_index() == 0:
          drawn += self._draw(sharding.process_rows(preds, axis=1), local, out_dir, drawn,
                              to_draw - drawn)
    return running_sums.counts_to_host(totals)

  def _draw(self, preds, local, out_dir, first, limit) -> int:
    """Writes PNGs of up to `limit` valid rows of this process's batch; preds are its rows."""
    names = branch_names(self.config)
    folder = os.path.join(out_dir, 'predictions')
    count = 0
    norms = modality_lib.of_config(self.config)  # The dataset's own (rgbx), else the table's.
    for b in np.flatnonzero(local['mask'])[:limit]:
      raw = {name: _unnormalise(norms[name], local['image'][m, b])
             for m, name in enumerate(self.config.modalities)}
      blank = np.zeros(local['label'].shape[1:] + (3,), np.uint8)
      rgb = np.clip(np.rint(raw['rgb']), 0, 255).astype(np.uint8) if 'rgb' in raw else blank
      visualize.save_prediction_panel(
          os.path.join(folder, f'{first + count:04d}.png'),
          rgb, raw['depth'][..., 0] if 'depth' in raw else blank, local['label'][b],
          {name: preds[i, b] for i, name in enumerate(names)},
          names=self.dataset.class_names(self.config), palette=self.dataset.palette(self.config))
      count += 1
    return count


def _draw_palette_predictions(preds: np.ndarray, local: dict, image_names, branches,
                              out_dir: str, limit: int, dataset, config) -> int:
  """Writes predictions/<image id>_<branch>.png (the dataset's palette) of this process's valid
  rows; preds (M + 1, B_local, H, W) are its rows. Returns how many images."""
  folder = os.path.join(out_dir, 'predictions')
  os.makedirs(folder, exist_ok=True)
  count = 0
  for row in np.flatnonzero(local['mask'])[:limit]:
    stem = dataset.image_id(image_names[row])
    for b, branch in enumerate(branches):
      layout.write_png(os.path.join(folder, f'{stem}_{branch}.png'),
                       visualize.colorize(preds[b, row], dataset.palette(config)))
    count += 1
  return count


def _write_label_ids(config, preds: np.ndarray, local: dict, image_names, out_dir: str) -> None:
  """Writes label_ids/<city>/<image file> (the ensemble's label ids, 0..33) of this process's
  valid rows; preds (M + 1, B_local, H, W) are its rows. Every process writes its own."""
  label_image = predict_io.get(config).label_image
  for row in np.flatnonzero(local['mask']):
    path = os.path.join(out_dir, 'label_ids', *image_names[row].split('/')[-2:])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    layout.write_png(path, label_image(preds[-1, row]))


def _write_eval_json(path: str, config, total: np.ndarray, names, results: dict, step,
                     class_names) -> None:
  """eval_step_N.json: settings, per-branch scores with per-class IoU, confusion matrices.

  Classes are named by class_names, or by their ids where the dataset has none.
  """
  class_names = class_names or [str(c) for c in range(total.shape[-1])]
  cm = total.astype(np.float64)
  diag = np.diagonal(cm, axis1=-2, axis2=-1)
  union = cm.sum(-1) + cm.sum(-2) - diag
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, 100.0 * diag / union, np.nan)
  record = {
      'step': step, 'output_stride': int(config.eval.output_stride),
      'scales': [float(x) for x in config.eval.scales], 'flip': bool(config.eval.flip),
      'classes': list(class_names),
      'branches': {name: {**results[name], 'iou': {
          c: (None if np.isnan(v) else float(v)) for c, v in zip(class_names, iou[b])}}
                   for b, name in enumerate(names)},
      'confusion': {name: total[b].tolist() for b, name in enumerate(names)},
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=1)

