"""Exact evaluation of image translation over the whole validation set (docs/method.md
sections 11 and 12).

Per branch (each input domain) and for the ensemble: mean L1 over all pixels and images, and
L2 = sqrt(mean over images of the per-image MSE), both in [-1, 1] units; with
config.eval.inception_weights also FID and KID (x 100) between the generated and the real val
images, both mapped to uint8 as round((x + 1) * 127.5). Evaluation runs the generator without
dropout and with instance statistics, so it is deterministic, and every val image counts once
(padding rows of the last batch are masked). The first config.num_prediction_images images are
drawn as grids: inputs | each branch | ensemble | target.

The sums stay on the devices across batches (running_sums: a double-float per branch for the L1
and squared errors, an exact count of images) and are read once per evaluation; per-image outputs
stay sharded along the batch. Each process reads the generated and real images of its own rows
only, from its own shards, when it needs them: for the Inception features of its rows (FID and
KID combine across processes in fid_hosts, so N processes each extract 1/N of the features) and,
on process 0, for the grids of the first images of its rows.
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import data, drawing, fid, fid_hosts, running_sums, sharding
from asymfusion_jax.models import build_model

# Images per call of the Inception network (rounded up to the local devices).
FID_BATCH = 50


def branch_names(config) -> list[str]:
  return list(config.modalities) + ['ensemble']


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] images to uint8 with round((x + 1) * 127.5), clipped to [0, 255]."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def eval_step(g_params, batch, totals=None, *, generator):
  """(totals + this batch's sums, its uint8 images).

  totals (zero_totals; None: zeros) holds, on the device, per output the sum over images of the
  absolute error summed over pixels ('abs_sum') and of the per-image MSE ('mse_sum'), and the
  number of images ('count'); padding rows (mask False) add nothing. The images are the outputs,
  target and inputs as uint8, sharded along the batch like the batch.
  """
  outputs = generator.apply({'params': g_params}, batch['inputs'], train=False)
  diff = outputs.astype(jnp.float32) - batch['target'][None].astype(jnp.float32)
  if totals is None:
    totals = zero_totals(outputs.shape[0])
  mask = batch['mask'].astype(bool)
  totals = {
      'abs_sum': running_sums.add_float_rows(totals['abs_sum'],
                                             jnp.sum(jnp.abs(diff), axis=(2, 3, 4)), mask),
      'mse_sum': running_sums.add_float_rows(totals['mse_sum'],
                                             jnp.mean(diff * diff, axis=(2, 3, 4)), mask),
      'count': running_sums.add_counts(totals['count'], jnp.sum(mask, dtype=jnp.int32))}
  images = {'outputs': to_uint8(outputs), 'target': to_uint8(batch['target']),
            'inputs': to_uint8(batch['inputs'])}
  return totals, images


def zero_totals(num_outputs: int) -> dict:
  return {'abs_sum': running_sums.zero_floats((num_outputs,)),
          'mse_sum': running_sums.zero_floats((num_outputs,)),
          'count': running_sums.zero_counts(())}


# The batch axis of each image eval_step returns.
IMAGE_BATCH_AXES = {'outputs': 1, 'target': 0, 'inputs': 1}


def jit_eval_step(config, mesh, wrap=None):
  """eval_step under jit: the totals replicated (every process reads the same scores and agrees
  on the best checkpoint), the images sharded along the batch. wrap: generator -> the generator
  evaluated (missing.MissingModel), or None."""
  generator = build_model(config)
  images = {k: sharding.batch_sharding(mesh, axis) for k, axis in IMAGE_BATCH_AXES.items()}
  return jax.jit(functools.partial(eval_step, generator=wrap(generator) if wrap else generator),
                 out_shardings=(sharding.replicated(mesh), images))


def format_table(results: dict, title: str | None = None) -> str:
  """A fixed-width table, one row per branch: L1 and L2 (and FID, KID when computed)."""
  keys = [k for k in ('l1', 'l2', 'fid', 'kid') if all(k in r for r in results.values())]
  width = max([len('branch')] + [len(name) for name in results])
  lines = [f'{"branch":<{width}}' + ''.join(f'  {k.upper():>9}' for k in keys)]
  lines.append('-' * len(lines[0]))
  for name, res in results.items():
    lines.append(f'{name:<{width}}' + ''.join(f'  {float(res[k]):>9.4f}' for k in keys))
  return '\n'.join(([title] if title else []) + lines)


class Evaluator:
  """Runs the validation pass; compiled functions and the real images' features are cached."""

  def __init__(self, config, mesh, wrap=None):
    self.config, self.mesh = config, mesh
    self.batch_size = sharding.padded_batch_size(config.eval_batch_size)
    self._step = jit_eval_step(config, mesh, wrap)
    self._zeros = jax.jit(functools.partial(zero_totals, len(branch_names(config))),
                          out_shardings=sharding.replicated(mesh))
    self._extractor = None
    self._real = None  # fid.FeatureStats of every real val image, after the first run.
    weights = config.eval.get('inception_weights', '')
    if weights:
      batch = sharding.padded_batch_size(FID_BATCH, jax.local_device_count(), 1)
      self._extractor = fid.FeatureExtractor(fid.load_weights(weights), batch_size=batch)

  def run(self, variables, out_dir: str | None = None, step: int | None = None) -> dict:
    """{branch: {'l1', 'l2'[, 'fid', 'kid']}}; prints the table, draws the grids into
    out_dir/predictions/ when out_dir is given."""
    config = self.config
    names = branch_names(config)
    g_params = variables['params']['generator']
    totals = self._zeros()
    features = [fid.FeatureStats() for _ in names] if self._extractor else None
    real = fid.FeatureStats() if self._extractor and self._real is None else None
    keys = []  # The val index of each of this process's rows that has features.
    to_draw = config.num_prediction_images if out_dir else 0
    drawn = 0
    image_size = None
    for k, local in enumerate(data.get(config).eval_batches(
        config, jax.process_index(), jax.process_count(), self.batch_size)):
      totals, images = self._step(g_params, sharding.global_batch(self.mesh, local), totals)
      image_size = int(np.prod(local['target'].shape[1:]))
      mask = np.asarray(local['mask'], bool)
      if features is None and drawn >= to_draw:
        continue
      mine = {key: sharding.process_rows(images[key], axis)
              for key, axis in IMAGE_BATCH_AXES.items()}
      if features is not None:
        # Rows as data/batching.eval_batches lays them out: this process's are a contiguous run.
        keys.extend(k * self.batch_size + jax.process_index() * len(mask) + np.flatnonzero(mask))
        for i in range(len(names)):
          features[i].update(self._extractor(mine['outputs'][i, mask]))
        if real is not None:
          real.update(self._extractor(mine['target'][mask]))
      if drawn < to_draw and jax.process_index() == 0:
        drawn += self._draw(mine, mask, out_dir, drawn, to_draw - drawn)
    totals = jax.device_get(totals)
    abs_sum, mse_sum = (running_sums.floats_to_host(totals[k]) for k in ('abs_sum', 'mse_sum'))
    count = int(running_sums.counts_to_host(totals['count']))
    results = {}
    for i, name in enumerate(names):
      results[name] = {'l1': float(abs_sum[i] / max(count * (image_size or 0), 1)),
                       'l2': float(np.sqrt(mse_sum[i] / count)) if count else 0.0}
    if features is not None:
      logging.info('FID: Inception features of %d validation images on process %d of %d.',
                   features[0].n, jax.process_index(), jax.process_count())
      if real is not None:
        self._real = fid_hosts.combine(real, keys)
      for i, name in enumerate(names):
        results[name].update(self._fid_kid(fid_hosts.combine(features[i], keys)))
    logging.info('Evaluated %d validation images.', count)
    title = f'validation at step {step}' if step is not None else None
    print(format_table(results, title), flush=True)
    return results

  def _fid_kid(self, generated: fid.FeatureStats) -> dict[str, float]:
    g, r = generated.statistics(), self._real.statistics()
    kid, _ = fid_hosts.kernel_inception_distance(generated.features(), self._real.features())
    return {'fid': float(fid.frechet_distance(g.mu, g.sigma, r.mu, r.sigma)),
            'kid': float(kid * fid.KID_SCALE)}

  def _draw(self, images, mask, out_dir, first, limit) -> int:
    """Writes grids of up to `limit` valid rows of this process's `images`: inputs | branches |
    ensemble | target."""
    names = branch_names(self.config)
    count = 0
    for b in np.flatnonzero(mask)[:limit]:
      tiles = {f'in: {name}': images['inputs'][m, b]
               for m, name in enumerate(self.config.modalities)}
      tiles.update({name: images['outputs'][i, b] for i, name in enumerate(names)})
      tiles[f'target: {self.config.target}'] = images['target'][b]
      drawing.save_image_row(
          os.path.join(out_dir, 'predictions', f'{first + count:04d}.png'), tiles)
      count += 1
    return count
