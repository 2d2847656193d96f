"""Predict with a trained model on images of any size (asymfusion_jax/predict/__init__.py).

  python -m asymfusion_jax.predict --workdir=DIR [--step=N] --input rgb=RGB_DIR \
      --input depth=DEPTH_DIR --out=OUT [--tile=H,W] [--scales=0.75,1,1.25] [--flip]
  python -m asymfusion_jax.predict --checkpoint=CKPT --config=configs/X.py --list=FILE --out=OUT
  python -m asymfusion_jax.predict --artifact=model.jax --input ... --out=OUT [--branches]

Writes OUT/<branch>/<kind>/<image>.png (labels, colour; --logits .npy; translation: images).

Exit status 0 when every image is predicted; 1 with one line naming the flag, file or setting at
fault otherwise (the images predicted before a bad file are kept, and a rerun skips them).
"""

import os

from absl import app
from absl import flags
from absl import logging

from asymfusion_jax import cli
from asymfusion_jax import logger
from asymfusion_jax import model_flags
from asymfusion_jax import predict as predict_lib

FLAGS = flags.FLAGS

model_flags.define(artifact=True)
flags.DEFINE_multi_string('input', [], 'MODALITY=FOLDER, once per modality of the model; files '
                          'are paired by name.')
flags.DEFINE_string('list', None, 'Instead of --input: a file whose lines list one image\'s '
                    'files, one per modality in the model\'s order.')
flags.DEFINE_string('out', None, 'Output folder.')
flags.DEFINE_list('tile', None, 'H,W: predict in overlapping windows of this size, averaged.')
flags.DEFINE_list('tile_stride', None, 'H,W between windows (default: two thirds of --tile).')
flags.DEFINE_list('scales', None, 'Scales of the passes averaged (default: config.eval.scales, '
                  'else 1).')
flags.DEFINE_bool('flip', None, 'Also average the mirrored pass (default: config.eval.flip, '
                  'else no).')
flags.DEFINE_bool('branches', False, 'Also write each modality branch\'s outputs.')
flags.DEFINE_bool('logits', False, 'Also write the float logits as .npy (segmentation).')
flags.DEFINE_bool('overwrite', False, 'Predict images whose outputs exist again.')
flags.DEFINE_integer('batch_size', None, 'Images of one size per batch (default: '
                     'config.eval_batch_size).', lower_bound=1)
flags.DEFINE_list('missing', [], 'Modalities the images lack (no --input for them): each is '
                  'replaced by --missing_fill.')
flags.DEFINE_enum('missing_fill', None, ['pad', 'mean', 'drop'], "What replaces a missing "
                  "modality (default: config.eval.missing_fill, else 'pad'): its normalised pad "
                  "value, its training-set mean (needs the training data), or 'drop' (pad value, "
                  'its branch not written, the ensemble over the others).')
flags.mark_flags_as_required(['out'])


def _pair(text: str) -> tuple[int, int] | None:
  """'H,W' (absl's list) -> (H, W)."""
  if text is None:
    return None
  try:
    values = tuple(int(v) for v in text)
  except ValueError:
    values = ()
  if len(values) != 2 or min(values) < 1:
    raise app.UsageError(f'expected two positive integers H,W; got {",".join(text)}')
  return values


def _scales(text: list[str] | None) -> tuple[float, ...] | None:
  if not text:
    return None
  try:
    return tuple(float(s) for s in text)
  except ValueError:
    raise app.UsageError(f'--scales: expected numbers, e.g. 0.75,1,1.25; got {",".join(text)}')


def _folders(specs: list[str]) -> dict[str, str]:
  folders = {}
  for spec in specs:
    name, sep, folder = spec.partition('=')
    if not sep or not name or not folder:
      raise app.UsageError(f'--input {spec}: expected MODALITY=FOLDER, e.g. --input rgb=images/')
    if name in folders:
      raise app.UsageError(f'--input {name}= is given twice')
    if not os.path.isdir(folder):
      raise predict_lib.InputError(f'--input {spec}: no such folder')
    folders[name] = folder
  return folders


def _model() -> predict_lib.Model:
  kind = model_flags.chosen(FLAGS, artifact=True)
  if kind == 'workdir':
    return predict_lib.from_workdir(FLAGS.workdir, FLAGS.step)
  if kind == 'checkpoint':
    return predict_lib.from_checkpoint(FLAGS.checkpoint, FLAGS.config)
  return predict_lib.from_artifact(FLAGS.artifact)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logger.setup_cli_logging()
  if bool(FLAGS.input) == bool(FLAGS.list):
    raise app.UsageError('pass the images as --input MODALITY=FOLDER (once per modality) or '
                         'as --list=FILE, not both')
  # An error (InputError, checkpoint and config errors included) is one line (cli.run).
  options = predict_lib.Options(
      tile=_pair(FLAGS.tile), tile_stride=_pair(FLAGS.tile_stride),
      scales=_scales(FLAGS.scales),
      flip=FLAGS.flip, branches=FLAGS.branches, logits=FLAGS.logits,
      overwrite=FLAGS.overwrite, batch_size=FLAGS.batch_size,
      missing=tuple(FLAGS.missing), missing_fill=FLAGS.missing_fill)
  folders = _folders(FLAGS.input)  # Before the model loads, so that a typo fails at once.
  if FLAGS.list and not os.path.isfile(FLAGS.list):
    raise predict_lib.InputError(f'--list={FLAGS.list}: no such file')
  model = _model()
  images = predict_lib.images(model.config, folders, FLAGS.list, FLAGS.missing)
  logging.info('Predicting %d images with the %s (step %s) into %s.', len(images),
               model.origin, model.step, FLAGS.out)
  done = predict_lib.predict(model, images, FLAGS.out, options)
  logging.info('Predicted %d images into %s (%d already there).', done['predicted'], FLAGS.out,
               done['skipped'])


if __name__ == '__main__':
  cli.run(main, 'predict')
