"""Exact evaluation of image translation over the whole validation set (docs/method.md
sections 11 and 12).

Per branch (each input domain) and for the ensemble: mean L1 over all pixels and images, and
L2 = sqrt(mean over images of the per-image MSE), both in [-1, 1] units; with
config.eval.inception_weights also FID and KID (x 100) between the generated and the real val
images, both mapped to uint8 as round((x + 1) * 127.5). Evaluation runs the generator without
dropout and with instance statistics, so it is deterministic, and every val image counts once
(padding rows of the last batch are masked). The first config.num_prediction_images images are
drawn as grids: inputs | each branch | ensemble | target.
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import drawing, fid, sharding
from asymfusion_jax.data import translation_pipeline
from asymfusion_jax.models import build_model

# Images per call of the Inception network (rounded up to the local devices).
FID_BATCH = 50


def branch_names(config) -> list[str]:
  return list(config.modalities) + ['ensemble']


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] images to uint8 with round((x + 1) * 127.5), clipped to [0, 255]."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def eval_step(g_params, batch, *, generator):
  """Per-image errors and uint8 images of one batch, for every output."""
  outputs = generator.apply({'params': g_params}, batch['inputs'], train=False)
  diff = outputs.astype(jnp.float32) - batch['target'][None].astype(jnp.float32)
  return {'abs_sum': jnp.sum(jnp.abs(diff), axis=(2, 3, 4)),  # (M + 1, B)
          'mse': jnp.mean(diff * diff, axis=(2, 3, 4)),  # (M + 1, B)
          'outputs': to_uint8(outputs), 'target': to_uint8(batch['target']),
          'inputs': to_uint8(batch['inputs']), 'mask': batch['mask']}


def jit_eval_step(config, mesh, wrap=None):
  """eval_step under jit; every process gets the whole batch's (small) results. wrap: generator
  -> the generator evaluated (missing.MissingModel), or None."""
  generator = build_model(config)
  return jax.jit(functools.partial(eval_step, generator=wrap(generator) if wrap else generator),
                 out_shardings=sharding.replicated(mesh))


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
    # Every process gets the whole batch's results, so every process computes the same scores
    # and agrees on the best checkpoint without another collective.
    self._step = jit_eval_step(config, mesh, wrap)
    self._extractor = None
    self._real = None  # fid.FeatureStats of the real val images, after the first run.
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
    abs_sum = np.zeros(len(names), np.float64)
    mse = [[] for _ in names]
    pixels = 0
    features = [fid.FeatureStats() for _ in names] if self._extractor else None
    real = fid.FeatureStats() if self._extractor and self._real is None else None
    to_draw = config.num_prediction_images if out_dir else 0
    drawn = 0
    for local in translation_pipeline.eval_batches(config, jax.process_index(),
                                                   jax.process_count(), self.batch_size):
      out = jax.device_get(self._step(g_params, sharding.global_batch(self.mesh, local)))
      mask = np.asarray(out['mask'], bool)
      abs_sum += np.asarray(out['abs_sum'], np.float64)[:, mask].sum(axis=1)
      for i in range(len(names)):
        mse[i].extend(np.asarray(out['mse'], np.float64)[i, mask])
      pixels += int(mask.sum()) * int(np.prod(out['target'].shape[1:]))
      if features is not None:
        for i in range(len(names)):
          features[i].update(self._extractor(out['outputs'][i, mask]))
        if real is not None:
          real.update(self._extractor(out['target'][mask]))
      if drawn < to_draw and jax.process_index() == 0:
        drawn += self._draw(out, mask, out_dir, drawn, to_draw - drawn)
    if real is not None:
      self._real = real
    results = {}
    for i, name in enumerate(names):
      results[name] = {'l1': float(abs_sum[i] / max(pixels, 1)),
                       'l2': float(np.sqrt(np.mean(mse[i]))) if mse[i] else 0.0}
      if features is not None:
        results[name].update(self._fid_kid(features[i]))
    logging.info('Evaluated %d validation images.', len(mse[0]))
    title = f'validation at step {step}' if step is not None else None
    print(format_table(results, title), flush=True)
    return results

  def _fid_kid(self, generated: fid.FeatureStats) -> dict[str, float]:
    g, r = generated.statistics(), self._real.statistics()
    kid, _ = fid.kernel_inception_distance(generated.features(), self._real.features())
    return {'fid': float(fid.frechet_distance(g.mu, g.sigma, r.mu, r.sigma)),
            'kid': float(kid * fid.KID_SCALE)}

  def _draw(self, out, mask, out_dir, first, limit) -> int:
    """Writes grids of up to `limit` valid rows: inputs | branches | ensemble | target."""
    names = branch_names(self.config)
    count = 0
    for b in np.flatnonzero(mask)[:limit]:
      tiles = {f'in: {name}': out['inputs'][m, b] for m, name in enumerate(self.config.modalities)}
      tiles.update({name: out['outputs'][i, b] for i, name in enumerate(names)})
      tiles[f'target: {self.config.target}'] = out['target'][b]
      drawing.save_image_row(
          os.path.join(out_dir, 'predictions', f'{first + count:04d}.png'), tiles)
      count += 1
    return count
