"""NYUDv2 RGB-D semantic segmentation (config.data.name='nyudv2'), and its synthetic stand-in.

  layout     the preprocessed folder (rgb/, depth/, masks/, train.txt, val.txt), read and written
  builder    the TFDS builder (dataset `nyudv2`, ArrayRecord in list order)
  pipeline   train and evaluation batches, read by index from the build
  synthetic  the synthetic RGB-D set in the same layout (config.data.synthetic)

This module is the dataset: data/base.py's SegmentationDataset, for RefineNet configs. Inputs are
normalised per modality as data/modalities.py says; evaluation is single-scale at full
resolution, val images padded to the largest.
"""

import os

from asymfusion_jax.data import common
from asymfusion_jax.data import modalities
from asymfusion_jax.data.nyudv2 import layout
from asymfusion_jax.data.nyudv2 import synthetic
from asymfusion_jax.data.nyudv2.pipeline import check_labels
from asymfusion_jax.data.nyudv2.pipeline import eval_batches
from asymfusion_jax.data.nyudv2.pipeline import largest_crop
from asymfusion_jax.data.nyudv2.pipeline import num_examples
from asymfusion_jax.data.nyudv2.pipeline import planned_num_examples
from asymfusion_jax.data.nyudv2.pipeline import prepare
from asymfusion_jax.data.nyudv2.pipeline import read
from asymfusion_jax.data.nyudv2.pipeline import steps_per_epoch
from asymfusion_jax.data.nyudv2.pipeline import train_batches

MODELS = ('refinenet',)
EVALUATION = 'single_scale'
# The synthetic images' size; None for NYUDv2 itself (its build records the largest).
eval_image_size = common.synthetic_image_size


def check_config(config) -> None:
  """The keys only NYUDv2's pipeline reads: data.min_short_side."""
  from asymfusion_jax import validation  # pylint: disable=g-import-not-at-top
  validation.integer(config, 'data.min_short_side', 0)


def input_encoding(config) -> dict:
  """data/modalities.py's normalisation of the config's modalities."""
  return modalities.to_json(config.modalities)


def class_names(config) -> tuple[str, ...] | None:
  """The synthetic set's five classes, NYUDv2's 40, or None for another number of classes."""
  if config.data.synthetic and config.model.num_classes == synthetic.NUM_CLASSES:
    return synthetic.CLASS_NAMES
  if config.model.num_classes == len(layout.CLASS_NAMES):
    return layout.CLASS_NAMES
  return None


def palette(config) -> None:
  """NYUDv2 has no palette of its own: visualize's default."""
  del config


def image_id(name: str) -> str:
  """'rgb/000123.png' -> '000123'."""
  return os.path.splitext(os.path.basename(name))[0]


__all__ = ['MODELS', 'EVALUATION', 'check_config', 'check_labels', 'class_names',
           'eval_batches', 'eval_image_size', 'image_id', 'input_encoding', 'num_examples',
           'palette', 'planned_num_examples', 'prepare', 'read', 'steps_per_epoch',
           'train_batches']


def predict_io(config):
  """What `python -m asymfusion_jax.predict` asks of this dataset (prediction.PredictIO)."""
  from asymfusion_jax.data.nyudv2 import prediction  # pylint: disable=g-import-not-at-top
  return prediction.PredictIO(config)
