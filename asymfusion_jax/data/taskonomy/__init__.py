"""Taskonomy domains for image translation (config.data.name='taskonomy').

  layout     the sample-model folder layout ({domain}/ folders, train.txt, val.txt) and the
             decoding of every domain to 8-bit, 3-channel images
  builder    the TFDS builder (dataset `taskonomy`, one builder config per domain set)
  pipeline   train and evaluation batches, from splits held in memory, resized once
  synthetic  ray-cast scenes rendering every domain (config.data.synthetic)

This module is the dataset: data/base.py's Dataset, for U-Net configs. Inputs are the config's
domains (config.modalities, in order) and the target config.target, all mapped to [-1, 1].
"""

from asymfusion_jax.data.taskonomy import layout
from asymfusion_jax.data.taskonomy.pipeline import eval_batches
from asymfusion_jax.data.taskonomy.pipeline import num_examples
from asymfusion_jax.data.taskonomy.pipeline import planned_num_examples
from asymfusion_jax.data.taskonomy.pipeline import prepare
from asymfusion_jax.data.taskonomy.pipeline import steps_per_epoch
from asymfusion_jax.data.taskonomy.pipeline import train_batches

MODELS = ('unet',)


def check_config(config) -> None:
  """The input domains (config.modalities) and the target, data.synthetic_image_size (one
  side) and data.load_size (at least config.crop_size)."""
  from asymfusion_jax import validation as v  # pylint: disable=g-import-not-at-top
  names = v.modalities(config, layout.DOMAINS, 'Taskonomy domains')
  target = v.value(config, 'target')
  if target not in layout.DOMAINS or target in names:
    v.fail('target', target, f'a known domain that is not an input, among '
                             f'{sorted(layout.DOMAINS)}')
  v.integer(config, 'data.synthetic_image_size', 1)
  v.integer(config, 'data.load_size', v.integer(config, 'crop_size', 1))


def eval_image_size(config) -> tuple[int, int]:
  """Evaluation resizes every val image to config.crop_size squares."""
  return int(config.crop_size), int(config.crop_size)


def input_encoding(config) -> dict:
  """The input domains, the target, and how both map to and from [-1, 1]."""
  return {
      'modalities': list(config.modalities),
      'target': config.target,
      'formula': ('input = decoded 8-bit domain image (docs/method.md section 11) / 127.5 - 1, '
                  'resized to the input size; output in [-1, 1], as uint8 '
                  'round((output + 1) * 127.5)'),
  }


__all__ = ['MODELS', 'check_config', 'eval_batches', 'eval_image_size', 'input_encoding',
           'num_examples', 'planned_num_examples', 'prepare', 'steps_per_epoch',
           'train_batches']


def predict_io(config):
  """What `python -m asymfusion_jax.predict` asks of this dataset (prediction.PredictIO)."""
  from asymfusion_jax.data.taskonomy import prediction  # pylint: disable=g-import-not-at-top
  return prediction.PredictIO(config)
