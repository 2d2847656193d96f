"""python -m asymfusion_jax.predict with the tiny RefineNet demo run: every source, images of any
size, tiles, reruns and bad input. (DeepLab / Cityscapes label ids: tests/test_cityscapes.py;
translation: tests/test_translation_train.py.)"""

import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from asymfusion_jax import export, predict, resize, variables_io
from asymfusion_jax.data import layout, modalities
from asymfusion_jax.data.nyudv2 import synthetic
from asymfusion_jax.models import build_model
from asymfusion_jax.predict import windows
from asymfusion_jax.tasks.segmentation import evaluation, visualize
from asymfusion_jax.tasks.segmentation.predict import SegmentationPredictor
from tests import tiny

BRANCHES = ('rgb', 'depth', 'ensemble')
BATCH = 2  # Every run here batches two images, so runs of one size share a compiled program.


def write_image(folder, name, rgb, depth):
  for modality, image in (('rgb', rgb), ('depth', depth)):
    path = os.path.join(folder, modality, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if name.endswith('.jpg'):
      cv2.imwrite(path, image[..., ::-1] if image.ndim == 3 else image)
    else:
      layout.write_png(path, image)


def scene(seed, height, width):
  rgb, depth, _ = synthetic.render_example(np.random.default_rng(seed), height, width)
  return rgb, depth


def read(path):
  return np.load(path) if path.endswith('.npy') else cv2.imread(path, cv2.IMREAD_UNCHANGED)


def outputs_of(out, stem, branch='ensemble'):
  return {kind: read(os.path.join(out, branch, kind, stem + ext))
          for kind, ext in (('labels', '.png'), ('colour', '.png'), ('logits', '.npy'))}


@pytest.fixture(scope='module')
def model(full_run):
  return predict.from_workdir(full_run[0])


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """rgb/ and depth/ folders: a (48x64, rgb a JPEG), b (48x64) and odd/c (97x131)."""
  folder = str(tmp_path_factory.mktemp('inputs'))
  write_image(folder, 'a.png', *scene(1, 48, 64))
  os.rename(os.path.join(folder, 'rgb', 'a.png'), os.path.join(folder, 'rgb', 'a.jpg'))
  write_image(folder, 'b.png', *scene(2, 48, 64))
  write_image(folder, 'odd/c.png', *scene(3, 97, 131))
  return {m: os.path.join(folder, m) for m in ('rgb', 'depth')}


def run(model, inputs, out, **options):
  images = predict.images(model.config, inputs)
  return predict.predict(model, images, str(out), predict.Options(batch_size=BATCH, **options))


@pytest.fixture(scope='module')
def predicted(model, inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp('predicted') / 'out'
  return str(out), run(model, inputs, out, branches=True, logits=True)


@pytest.fixture(scope='module')
def tiled(model, inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp('tiled') / 'out'
  return str(out), run(model, inputs, out, tile=(64, 64), logits=True)


def normalised(folder, name, modality):
  image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_UNCHANGED)
  return modalities.normalise(modality, image[..., ::-1] if image.ndim == 3 else image)


def test_outputs_are_the_model_on_the_padded_image_cropped_back(model, inputs, predicted):
  out, stats = predicted
  assert stats['predicted'] == 3 and stats['skipped'] == 0
  # One program per padded size: 48x64 -> 64x64, 97x131 -> 128x160 (multiples of 32).
  assert [s[2:4] for s in stats['compiled']] == [(64, 64), (128, 160)]
  for branch in BRANCHES:
    for stem in ('a', 'b', 'odd/c'):
      assert set(os.listdir(os.path.join(out, branch))) == {'labels', 'colour', 'logits'}
      files = outputs_of(out, stem, branch)
      assert files['labels'].dtype == np.uint8
      np.testing.assert_array_equal(files['labels'], np.argmax(files['logits'], -1))
      np.testing.assert_array_equal(files['colour'][..., ::-1],
                                    visualize.colorize(files['labels']))
  with open(os.path.join(out, 'predict.json')) as f:
    assert json.load(f)['step'] == model.step
  # The reference: both modalities padded with their pad pixel, the model, its stride-4 logits
  # resized (OpenCV bicubic) to the padded size, cropped to the image.
  x = np.stack([normalised(inputs[m], 'odd/c.png', m) for m in ('rgb', 'depth')])
  padded = windows.pad(x[:, None], (128, 160),
                       np.stack([modalities.normalised_pad_value(m) for m in ('rgb', 'depth')]))
  logits = jax.jit(lambda v, x: resize.resize(build_model(model.config).apply(v, x, train=False),
                                              (128, 160), 'cubic_opencv'))(model.variables, padded)
  for i, branch in enumerate(BRANCHES):
    got = outputs_of(out, 'odd/c', branch)['logits']
    assert got.shape == (97, 131, synthetic.NUM_CLASSES)
    np.testing.assert_allclose(got, np.asarray(logits)[i, 0, :97, :131], rtol=1e-4, atol=1e-4)


def test_rerun_skips_finished_images_and_refuses_other_settings(model, inputs, predicted,
                                                                tmp_path):
  out = str(tmp_path / 'out')
  shutil.copytree(predicted[0], out)
  again = run(model, inputs, out, branches=True, logits=True)
  assert again == {'predicted': 0, 'skipped': 3, 'compiled': []}
  os.remove(os.path.join(out, 'depth', 'colour', 'b.png'))  # As if stopped while writing b.
  again = run(model, inputs, out, branches=True, logits=True)
  assert (again['predicted'], again['skipped']) == (1, 2)
  assert os.path.isfile(os.path.join(out, 'depth', 'colour', 'b.png'))
  with pytest.raises(ValueError, match=r'other settings \(flip: False now True\).*--overwrite'):
    run(model, inputs, out, flip=True)
  images = predict.images(model.config, inputs)[:2]  # a and b: one size, one program.
  again = predict.predict(model, images, out, predict.Options(batch_size=BATCH, branches=True,
                                                              logits=True, overwrite=True))
  assert (again['predicted'], again['skipped']) == (2, 0)


def test_converted_checkpoint_and_artifact_predict_as_the_workdir(model, inputs, predicted, tiled,
                                                                  full_run, tiny_data, tmp_path):
  converted = str(tmp_path / 'converted')
  variables_io.save_variables(converted, model.variables)
  source = predict.from_checkpoint(converted, tiny.config(tiny_data))
  out = str(tmp_path / 'from_checkpoint')
  images = predict.images(source.config, inputs)[:2]  # a and b: one program.
  predict.predict(source, images, out, predict.Options(batch_size=BATCH, logits=True))
  for stem in ('a', 'b'):
    np.testing.assert_array_equal(outputs_of(out, stem)['logits'],
                                  outputs_of(predicted[0], stem)['logits'])

  # An artifact takes 64x64 inputs: 48x64 images are padded to it as the workdir's model pads
  # them, and 97x131 is predicted in 64x64 windows, as --tile=64,64 does.
  artifact = str(tmp_path / 'model.jax')
  export.write_jax(export.from_workdir(full_run[0]), artifact, 64, 64, platforms=('cpu',))
  source = predict.from_artifact(artifact)
  assert source.fixed_size == (64, 64) and source.step == model.step
  out = tmp_path / 'from_artifact'
  assert run(source, inputs, out, logits=True)['compiled'] == [(2, BATCH, 64, 64, 3)]
  for stem, reference in (('a', predicted[0]), ('b', predicted[0]), ('odd/c', tiled[0])):
    np.testing.assert_allclose(outputs_of(out, stem)['logits'],
                               outputs_of(reference, stem)['logits'], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='does not fit the artifact'):
    run(source, inputs, tmp_path / 'too_big', tile=(96, 96))


def test_tiles_average_the_predictions_of_their_windows(model, inputs, predicted, tiled,
                                                        tmp_path):
  """97x131 in 64x64 windows, two thirds apart: rows 0 and 33, columns 0, 43 and 67. Each
  window predicted as an image of its own, the averages match the tiled prediction."""
  assert [s[2:4] for s in tiled[1]['compiled']] == [(64, 64)]
  crops = {m: str(tmp_path / m) for m in ('rgb', 'depth')}
  windows_at = [(top, left) for top in (0, 33) for left in (0, 43, 67)]
  for m in crops:
    image = cv2.imread(os.path.join(inputs[m], 'odd', 'c.png'), cv2.IMREAD_UNCHANGED)
    os.makedirs(crops[m])
    for top, left in windows_at:
      cv2.imwrite(os.path.join(crops[m], f'{top}_{left}.png'), image[top:top + 64, left:left + 64])
  out = tmp_path / 'windows'
  run(model, crops, out, logits=True)
  total, count = np.zeros((97, 131, synthetic.NUM_CLASSES)), np.zeros((97, 131, 1))
  for top, left in windows_at:
    total[top:top + 64, left:left + 64] += outputs_of(out, f'{top}_{left}')['logits']
    count[top:top + 64, left:left + 64] += 1
  np.testing.assert_allclose(outputs_of(tiled[0], 'odd/c')['logits'], total / count,
                             rtol=1e-5, atol=1e-5)
  # Images no larger than the tile are one window: the whole-image prediction.
  for stem in ('a', 'b'):
    np.testing.assert_array_equal(outputs_of(tiled[0], stem)['logits'],
                                  outputs_of(predicted[0], stem)['logits'])


def test_tiling_scales_and_flip_equal_the_whole_image_where_the_context_is_the_same():
  """With a model whose outputs depend on their own pixel only, every window gives a pixel the
  context the whole image gives it: tiled, padded, scaled and mirrored passes equal the whole
  image's."""
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(2, 3, 4)).astype(np.float32)

  def per_pixel(params, x):
    del params
    branches = jax.numpy.einsum('mbhwc,mck->mbhwk', x, weights)
    return jax.numpy.concatenate([branches, branches.mean(0, keepdims=True)])

  x = rng.normal(size=(2, 2, 97, 131, 3)).astype(np.float32)
  pads = np.full((2, 3), 7.0, np.float32)
  geometry = windows.Geometry(multiple=16)
  for scales, flip in (((1.0,), False), ((1.0, 0.6), True)):
    whole = windows.Runner(per_pixel, None, geometry, pads, lambda p: sum(p) / len(p),
                           scales=scales, flip=flip)(x)
    for tile, stride in (((40, 48), (25, 31)), ((200, 200), None)):
      tiled = windows.Runner(per_pixel, None, geometry, pads, lambda p: sum(p) / len(p),
                             tile=tile, stride=stride, scales=scales, flip=flip)(x)
      np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
  assert windows.window_starts(97, 40, 25) == [0, 25, 50, 57]
  assert windows.window_starts(97, 97, 25) == [0]

  # Scales and mirroring as Cityscapes evaluation: the saved logits of several passes are the
  # log of the mean softmax of evaluation's passes.
  class Model:
    apply = staticmethod(lambda variables, x, train: per_pixel(variables, x))
  scales = (0.75, 1.0, 1.25)
  combined = windows.Runner(per_pixel, None, geometry, pads, SegmentationPredictor.combine,
                            scales=scales, flip=True, tile=(40, 48))(x)
  probabilities = evaluation.multiscale_probabilities(None, x, model=Model, scales=scales,
                                                      flip=True)
  np.testing.assert_allclose(np.exp(combined) * 6, probabilities, rtol=1e-4, atol=1e-5)


def one_line_error(error_type, match, call):
  with pytest.raises(error_type, match=match) as info:
    call()
  assert '\n' not in str(info.value)
  return str(info.value)


def test_bad_input_is_one_line_naming_the_file(model, tmp_path):
  names = ('rgb', 'depth')
  folders = {m: str(tmp_path / m) for m in names}
  for m in names:
    os.makedirs(folders[m])

  def images():
    return predict.images(model.config, folders)

  one_line_error(predict.InputError, 'nothing to predict: no image files .* in .*rgb', images)
  write_image(str(tmp_path), 'a.png', *scene(1, 48, 64))
  write_image(str(tmp_path), 'b.png', *scene(2, 48, 64))
  write_image(str(tmp_path), 'c.png', *scene(3, 48, 64))
  os.remove(os.path.join(folders['depth'], 'c.png'))
  one_line_error(predict.InputError, r'rgb/c.png has no depth file in .*depth', images)
  write_image(str(tmp_path), 'c.png', *scene(3, 48, 64))
  one_line_error(predict.InputError, 'missing: depth',
                 lambda: predict.images(model.config, {'rgb': folders['rgb']}))
  one_line_error(predict.InputError, 'not a modality of the model: thermal',
                 lambda: predict.images(model.config, {**folders, 'thermal': folders['rgb']}))
  shutil.copy(os.path.join(folders['rgb'], 'a.png'), os.path.join(folders['rgb'], 'a.jpg'))
  one_line_error(predict.InputError,
                 r'rgb/a.jpg and .*rgb/a.png are both the rgb file of image .a.; keep one', images)
  os.remove(os.path.join(folders['rgb'], 'a.jpg'))

  # Found while predicting: what was read before the bad file is written, and kept.
  out = str(tmp_path / 'out')
  bad = os.path.join(folders['rgb'], 'b.png')
  with open(bad, 'wb') as f:
    f.write(b'not a png')
  one_line_error(predict.InputError, re.escape(f'{bad}: not a readable image'),
                 lambda: run(model, folders, out))
  assert sorted(os.listdir(os.path.join(out, 'ensemble', 'labels'))) == ['a.png']
  for content, message in (
      (np.zeros((48, 64), np.uint16), 'must be an 8-bit grey or colour image; this one is '
                                      '1-channel uint16'),
      (np.zeros((48, 63), np.uint8), r'depth/b.png is 48x63 but .*rgb/b.png is 48x64'),
  ):
    layout.write_png(bad, np.zeros((48, 64, 3), np.uint8))
    layout.write_png(bad if content.dtype == np.uint16 else
                     os.path.join(folders['depth'], 'b.png'), content)
    one_line_error(predict.InputError, message, lambda: run(model, folders, out))
  layout.write_png(os.path.join(folders['depth'], 'b.png'), np.zeros((48, 64, 3), np.uint8))
  one_line_error(predict.InputError, 'a depth image must be a single-channel uint8 or uint16',
                 lambda: run(model, folders, out))
  write_image(str(tmp_path), 'b.png', *scene(2, 48, 64))
  assert run(model, folders, out) == {'predicted': 2, 'skipped': 1,
                                      'compiled': [(2, BATCH, 64, 64, 3)]}

  # List files.
  listing = tmp_path / 'list.txt'
  for text, message in (('', 'names no image'),
                        ('rgb/a.png\n', r'line 1 has 1 paths; expected 2, one per modality in '
                                        'the order rgb, depth'),
                        ('# header\nrgb/a.png depth/x.png\n', r'line 2: no file .*depth/x.png'),
                        ('rgb/a.png\tdepth/a.png\nrgb/a.png\tdepth/b.png\n',
                         r'line 2 names the image of line 1 again')):
    listing.write_text(text)
    one_line_error(predict.InputError, message,
                   lambda: predict.images(model.config, list_file=str(listing)))


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'asymfusion_jax.predict', *args], cwd=tiny.REPO,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
                        text=True, timeout=300, check=False)


def test_command_line(full_run, inputs, tmp_path):
  listing = tmp_path / 'images.txt'
  folder = os.path.dirname(inputs['rgb'])
  listing.write_text('rgb/b.png\tdepth/b.png\nrgb/odd/c.png\tdepth/odd/c.png\n')
  shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
  out = str(tmp_path / 'out')
  result = run_cli(f'--workdir={full_run[0]}', f'--list={listing}', f'--out={out}',
                   f'--batch_size={BATCH}', '--tile=64,64')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count('Compiled the model for 64x64 inputs (batch 2)') == 1
  assert re.search(r'predict: \[#{20}\] 2/2 images, [0-9.]+ images/s', result.stderr)
  assert sorted(os.listdir(os.path.join(out, 'ensemble', 'colour', 'rgb'))) == ['b.png', 'odd']
  missing = str(tmp_path / 'missing')
  result = run_cli(f'--workdir={full_run[0]}', f'--input=rgb={inputs["rgb"]}',
                   f'--input=depth={missing}', f'--out={out}')
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last == f'predict: --input depth={missing}: no such folder', last
