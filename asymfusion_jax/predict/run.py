"""predict's main loop: read the images ahead in threads, batch images of one size, run, write.

Images are read in order by a few threads, a batch ahead. An image joins the pending batch of
its size; a batch runs when it is full (batch_size images), and the rest, partial, at the end
(filled up with padding rows, so each size compiles one program). A file that cannot be used
stops the run with an InputError naming it, after the images already read are predicted and
written: nothing done is lost, and a rerun goes on from there.
"""

import collections
import concurrent.futures
import dataclasses

from absl import logging
import numpy as np

from asymfusion_jax import missing as missing_lib
from asymfusion_jax import tasks
from asymfusion_jax.predict import inputs as inputs_lib
from asymfusion_jax.predict import outputs as outputs_lib
from asymfusion_jax.predict import progress as progress_lib
from asymfusion_jax.predict import windows

# Reading threads, and images read ahead per batch.
READ_THREADS = 4


@dataclasses.dataclass
class Options:
  """How to predict. scales and flip default to the config's evaluation settings
  (config.eval.scales, config.eval.flip), else one pass; batch_size to config.eval_batch_size."""
  tile: tuple[int, int] | None = None
  tile_stride: tuple[int, int] | None = None
  scales: tuple[float, ...] | None = None
  flip: bool | None = None
  branches: bool = False
  logits: bool = False
  overwrite: bool = False
  batch_size: int | None = None
  # Modalities the images lack, replaced by missing_fill (default config.eval.missing_fill, else
  # 'pad'; see asymfusion_jax/missing.py): no input is read for them.
  missing: tuple[str, ...] = ()
  missing_fill: str | None = None


def resolve(options: Options, config) -> Options:
  """The options with their defaults filled in from the config."""
  evaluation = config.get('eval', {})
  batch = options.batch_size or int(config.get('eval_batch_size', 1))
  if batch < 1:
    raise ValueError(f'--batch_size must be positive, got {batch}')
  fill = options.missing_fill or evaluation.get('missing_fill', 'pad')
  names = tuple(config.modalities)
  if fill not in missing_lib.FILLS:
    raise ValueError(f'--missing_fill={fill}: choose one of {missing_lib.FILLS}')
  for name in options.missing:
    if name not in names:
      raise ValueError(f'--missing={name}: not a modality of the model {names}')
  if options.missing and set(options.missing) >= set(names):
    raise ValueError(f'--missing={",".join(options.missing)} leaves no modality to predict from')
  return dataclasses.replace(
      options, batch_size=batch, missing_fill=fill,
      missing=tuple(n for n in names if n in options.missing),
      scales=tuple(float(s) for s in (options.scales or evaluation.get('scales', (1.0,)))),
      flip=bool(evaluation.get('flip', False) if options.flip is None else options.flip))


def record(model, options: Options) -> dict:
  """What decides the values written (outputs.check_record)."""
  return {'model': model.origin, 'step': model.step, 'scales': list(options.scales),
          'flip': options.flip, 'tile': list(options.tile) if options.tile else None,
          'tile_stride': list(options.tile_stride) if options.tile_stride else None,
          **({'missing': list(options.missing), 'missing_fill': options.missing_fill}
             if options.missing else {})}


def predict(model, images: list, out_dir: str, options: Options | None = None,
            progress_stream=None) -> dict:
  """Predicts `images` (inputs.Image) with `model` (sources.Model) into `out_dir`.

  Returns {'predicted': images written, 'skipped': images already done, 'compiled':
  [padded input shapes compiled]}.

  Raises:
    inputs.InputError: an image's files cannot be used (the message names the file).
    ValueError: bad options, or out_dir holds predictions of other settings.
  """
  config = model.config
  options = resolve(options or Options(), config)
  predictor = tasks.get(config).predictor(config, options.logits)
  names = list(config.modalities)
  geometry = windows.Geometry(predictor.input_multiple, model.fixed_size, predictor.output_resize)
  drop = bool(options.missing) and options.missing_fill == 'drop'
  if model.call is not None:
    if drop:
      raise ValueError("--missing_fill=drop reweighs the ensemble with the model's alpha, which "
                       'an artifact does not expose: use --workdir or --checkpoint, or '
                       '--missing_fill=pad')
    apply, params = (lambda _, x: model.call(x)), None
  else:
    apply, params = predictor.apply, predictor.params(model.variables)
  if drop:
    apply = _dropping(apply, [n not in options.missing for n in names])
  branches = names + ['ensemble']
  rows = list(range(len(branches))) if options.branches else [len(names)]
  if drop:  # Removed branches are not written.
    rows = [r for r in rows if r == len(names) or names[r] not in options.missing]
  fills = (missing_lib.fill_values(config, 'pad' if drop else options.missing_fill)
           if options.missing else None)
  outputs = outputs_lib.Outputs(out_dir, [branches[r] for r in rows], predictor.kinds())
  pad_values = np.stack([predictor.io.pad_value(n) for n in names])

  def compiled(shape, seconds):
    logging.info('Compiled the model for %dx%d inputs (batch %d) in %.1f s; every new input '
                 'size compiles once.', shape[2], shape[3], shape[1], seconds)
    progress.exclude(seconds)

  runner = windows.Runner(apply, params, geometry, pad_values, predictor.combine,
                          tile=options.tile, stride=options.tile_stride, scales=options.scales,
                          flip=options.flip, on_compile=compiled)
  outputs_lib.check_record(out_dir, record(model, options), options.overwrite)
  todo = [im for im in images if options.overwrite or not outputs.done(im.stem)]
  if len(todo) < len(images):
    logging.info('Skipping %d of %d images already predicted in %s (--overwrite predicts them '
                 'again).', len(images) - len(todo), len(images), out_dir)
  progress = progress_lib.Progress(len(todo), progress_stream)
  written = 0

  def run(batch):
    """Predicts and writes a list of (image, {modality: array}) of one size."""
    nonlocal written
    shape = next(iter(batch[0][1].values())).shape
    x = np.empty((len(names), options.batch_size) + shape, np.float32)
    x[...] = pad_values[:, None, None, None, :]  # Padding rows.
    for b, (_, arrays) in enumerate(batch):
      for m, name in enumerate(names):
        x[m, b] = fills[m] if name in options.missing else arrays[name]
    host = predictor.host_outputs(runner(x)[np.asarray(rows)])
    for b, (image, _) in enumerate(batch):
      outputs.write(image.stem, host, b)
    written += len(batch)
    progress.update(written)

  pending = collections.OrderedDict()  # (H, W) -> [(image, arrays)], in order of first use.

  def flush():
    while pending:
      run(pending.pop(next(iter(pending))))

  with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
    ahead = collections.deque()
    queue = iter(todo)
    try:
      while True:
        while len(ahead) < 2 * options.batch_size:
          image = next(queue, None)
          if image is None:
            break
          ahead.append((image, pool.submit(inputs_lib.read, image, predictor.io)))
        if not ahead:
          break
        image, future = ahead.popleft()
        arrays = future.result()
        size = next(iter(arrays.values())).shape[:2]
        pending.setdefault(size, []).append((image, arrays))
        if len(pending[size]) == options.batch_size:
          run(pending.pop(size))
        elif sum(len(g) for g in pending.values()) > 4 * options.batch_size:
          run(pending.pop(next(iter(pending))))  # Many sizes: bound the images held.
    except inputs_lib.InputError:
      flush()  # What was read before the bad file is predicted and written.
      raise
    finally:
      for _, future in ahead:
        future.cancel()
    flush()
  if todo:
    progress.finish()
  return {'predicted': written, 'skipped': len(images) - len(todo),
          'compiled': runner.compiled_shapes}


def _dropping(apply, keep):
  """apply, its ensemble recomputed over the kept branches (alpha renormalised)."""
  def dropped(params, x):
    out = apply(params, x)
    ensemble = missing_lib.renormalised_ensemble(out, params.get('params', {}), keep)
    return out.at[-1].set(ensemble.astype(out.dtype))
  return dropped
