"""The generic multimodal segmentation dataset 'rgbx': your own data in the RGB-X layout.

config.data.name = 'rgbx' reads a dataset folder (config.data.manual_dir) in the layout that
DFormer, CMX and the projects built on them use:

  DATASET/
    RGB/<name>.<jpg|png>
    <X folder>/<name>.<png|jpg|npy>     one folder per extra modality: Depth/, HHA/, Thermal/, ...
    Label/<name>.png
    train.txt, test.txt                 one sample a line, "RGB/<name>.<ext>" or "<name>"

Config keys (config_lib.rgbx_refinenet gives the defaults):
  data.modality_folders   {modality name: folder}; config.modalities picks and orders any of them
  data.label_folder       'Label'
  data.list_files         {'train': 'train.txt', 'val': 'test.txt'}
  data.label_offset       1: 0 is unlabelled and classes are 1..N (DFormer); 0: labels are classes
  data.ignore_label       255, unlabelled whatever the offset
  data.normalisation      {modality: {scale, mean, std, interpolation}}, any of them optional
                          (`normalisation`: else ImageNet for 'rgb', else statistics measured at
                          build time)
  data.class_names, data.palette   optional, one per class

  layout         list files, finding and decoding the files of each sample
  builder        the TFDS build (files kept byte for byte, ArrayRecord read by index)
  normalisation  each modality's normalisation and interpolation
  pipeline       the batches, and what evaluation, export and predict ask of a dataset
  checks         the config checks of the rgbx keys
  prediction     predict's reading and writing (data/predict_io.py)
  synthetic      a generated dataset whose classes need every modality

This module is the dataset: data/base.py's SegmentationDataset, for RefineNet configs, plus the
optional members modality_names and normalisation. Importing it imports neither TensorFlow nor
TFDS.
"""

from asymfusion_jax.data.rgbx.pipeline import check_config
from asymfusion_jax.data.rgbx.pipeline import check_labels
from asymfusion_jax.data.rgbx.pipeline import class_names
from asymfusion_jax.data.rgbx.pipeline import eval_batches
from asymfusion_jax.data.rgbx.pipeline import eval_image_size
from asymfusion_jax.data.rgbx.pipeline import image_id
from asymfusion_jax.data.rgbx.pipeline import input_encoding
from asymfusion_jax.data.rgbx.pipeline import largest_crop
from asymfusion_jax.data.rgbx.pipeline import modality_names
from asymfusion_jax.data.rgbx.pipeline import normalisation
from asymfusion_jax.data.rgbx.pipeline import num_examples
from asymfusion_jax.data.rgbx.pipeline import palette
from asymfusion_jax.data.rgbx.pipeline import planned_num_examples
from asymfusion_jax.data.rgbx.pipeline import predict_io
from asymfusion_jax.data.rgbx.pipeline import prepare
from asymfusion_jax.data.rgbx.pipeline import read
from asymfusion_jax.data.rgbx.pipeline import steps_per_epoch
from asymfusion_jax.data.rgbx.pipeline import train_batches

MODELS = ('refinenet',)
EVALUATION = 'single_scale'

__all__ = ['MODELS', 'EVALUATION', 'check_config', 'check_labels', 'class_names', 'eval_batches',
           'eval_image_size', 'image_id', 'input_encoding', 'largest_crop', 'modality_names',
           'normalisation', 'num_examples', 'palette', 'planned_num_examples', 'predict_io',
           'prepare', 'read', 'steps_per_epoch', 'train_batches']
