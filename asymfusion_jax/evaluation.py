"""Exact evaluation over the whole validation set (docs/method.md section 6).

Every validation image counts once, at full resolution: per-batch confusion matrices of every
branch and of the ensemble are summed on the host in int64, then pixel acc, mean acc and mIoU are
taken once. The first config.num_prediction_images images are also written as colour-coded PNGs
(by process 0, from its own rows of the first batches when there are several processes).
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import metrics, resize, sharding, visualize
from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data import pipeline


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


def _unnormalise(name: str, x: np.ndarray) -> np.ndarray:
  """Raw pixel values of a normalised (H, W, 3) input, for display."""
  m = modality_lib.get(name)
  return (x * np.asarray(m.std) + np.asarray(m.mean)) / m.scale


class Evaluator:
  """Runs the validation pass; compiled functions are cached across calls."""

  def __init__(self, model, config, mesh):
    self.model, self.config, self.mesh = model, config, mesh
    # Every device takes as many rows, so batches are filled up to the mesh with masked rows.
    self.batch_size = sharding.padded_batch_size(config.eval_batch_size)
    if self.batch_size != config.eval_batch_size:
      logging.info('Evaluating %d images per batch: config.eval_batch_size=%d rounded up to a '
                   'multiple of the %d devices (the rows past the last image are masked).',
                   self.batch_size, config.eval_batch_size, jax.device_count())
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
    for i, local in enumerate(pipeline.eval_batches(
        config, jax.process_index(), jax.process_count(), self.batch_size)):
      batch = sharding.global_batch(self.mesh, local)
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
    title = f'validation at step {step}' if step is not None else None
    print(metrics.format_table(results, title), flush=True)
    return results

  def _draw(self, preds, local, out_dir, first, limit) -> int:
    """Writes PNGs of up to `limit` valid rows of this process's batch; preds are its rows."""
    names = branch_names(self.config)
    folder = os.path.join(out_dir, 'predictions')
    count = 0
    for b in np.flatnonzero(local['mask'])[:limit]:
      raw = {name: _unnormalise(name, local['image'][m, b])
             for m, name in enumerate(self.config.modalities)}
      blank = np.zeros(local['label'].shape[1:] + (3,), np.uint8)
      rgb = np.clip(np.rint(raw['rgb']), 0, 255).astype(np.uint8) if 'rgb' in raw else blank
      visualize.save_prediction_panel(
          os.path.join(folder, f'{first + count:04d}.png'),
          rgb, raw['depth'][..., 0] if 'depth' in raw else blank, local['label'][b],
          {name: preds[i, b] for i, name in enumerate(names)},
          names=visualize.class_names(self.config))
      count += 1
    return count


def _local_rows(array: jax.Array, axis: int) -> np.ndarray:
  """The global indices along `axis` of this process's rows of a sharded array, in order."""
  size = array.shape[axis]
  rows = {r for shard in array.addressable_shards
          for r in range(*shard.index[axis].indices(size))}
  return np.asarray(sorted(rows))
