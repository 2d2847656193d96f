"""Cityscapes RGB-D semantic segmentation (config.data.name='cityscapes'), 19 train ids.

  layout     the official folders or archives, label ids, input encoding, colours
  builder    the TFDS builder (dataset `cityscapes_rgbd`, ArrayRecord in list order)
  pipeline   train and evaluation batches (TF-DeepLab's augmentation), read by index
  synthetic  synthetic street scenes in the Cityscapes layout (config.data.synthetic)

This module is the dataset: data/base.py's SegmentationDataset, for DeepLab configs. Inputs are
encoded as TF-DeepLab's (RGB x / 127.5 - 1) and ours for disparity (docs/method.md section 13);
evaluation is TF-DeepLab's (base.EVALUATIONS), predictions in the Cityscapes palette.
"""

import os

import numpy as np

from asymfusion_jax.data import common
from asymfusion_jax.data.cityscapes import layout
from asymfusion_jax.data.cityscapes.pipeline import eval_batches
from asymfusion_jax.data.cityscapes.pipeline import largest_crop
from asymfusion_jax.data.cityscapes.pipeline import num_examples
from asymfusion_jax.data.cityscapes.pipeline import planned_num_examples
from asymfusion_jax.data.cityscapes.pipeline import prepare
from asymfusion_jax.data.cityscapes.pipeline import read
from asymfusion_jax.data.cityscapes.pipeline import steps_per_epoch
from asymfusion_jax.data.cityscapes.pipeline import train_batches

MODELS = ('deeplab',)
EVALUATION = 'tf_deeplab'
# The synthetic scenes' size; None for Cityscapes itself (1024x2048, read from the build).
eval_image_size = common.synthetic_image_size


def check_config(config) -> None:
  """The modalities (rgb, depth), the 19 classes, data.scale_step and the evaluation's keys."""
  from asymfusion_jax import validation as v  # pylint: disable=g-import-not-at-top
  names = tuple(config.modalities)
  if not set(names) <= {'rgb', 'depth'}:
    v.fail('modalities', names, "a sequence of the Cityscapes modalities 'rgb' and 'depth'")
  num_classes = v.value(config, 'model.num_classes')
  if num_classes != layout.NUM_CLASSES:
    v.fail('model.num_classes', num_classes, f'{layout.NUM_CLASSES}: the Cityscapes train ids '
                                             'the data pipeline produces')
  v.number(config, 'data.scale_step', 0)
  eval_scales = v.sequence(config, 'eval.scales')
  if not all(v.is_number(x) and x > 0 for x in eval_scales):
    v.fail('eval.scales', eval_scales, 'a non-empty sequence of positive scales')
  v.boolean(config, 'eval.flip')
  if 'write_label_ids' in config.eval:  # Workdir configs from before it existed lack it.
    v.boolean(config, 'eval.write_label_ids')


def input_encoding(config) -> dict:
  """The formula of each of the config's modalities (layout.INPUT_FORMULAS)."""
  return {'modalities': list(config.modalities),
          'formula': {name: layout.INPUT_FORMULAS[name] for name in config.modalities}}


def class_names(config) -> tuple[str, ...]:
  del config
  return layout.CLASS_NAMES


def palette(config) -> np.ndarray:
  """The Cityscapes colours of the 19 train ids; every other label black."""
  del config
  table = np.zeros((256, 3), np.uint8)
  table[:layout.NUM_CLASSES] = layout.PALETTE
  return table


def image_id(name: str) -> str:
  """'leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png' -> 'lindau_000000_000019'."""
  return os.path.basename(name).removesuffix(layout.SUFFIXES['leftImg8bit'])


__all__ = ['MODELS', 'EVALUATION', 'check_config', 'class_names', 'eval_batches',
           'eval_image_size', 'image_id', 'input_encoding', 'num_examples', 'palette',
           'planned_num_examples', 'prepare', 'read', 'steps_per_epoch', 'train_batches']


def predict_io(config):
  """What `python -m asymfusion_jax.predict` asks of this dataset (prediction.PredictIO)."""
  from asymfusion_jax.data.cityscapes import prediction  # pylint: disable=g-import-not-at-top
  return prediction.PredictIO(config)
