"""TFDS builder for Cityscapes RGB-D (19 train ids, 16-bit disparity) from `manual_dir`.

TFDS's own `cityscapes` builder cannot serve this: its configurations with disparity
(`stereo_disparity*`) have no labels, and it declares the disparity an 8-bit image. This one
reads the official folders or archives (`layout` module) and keeps the disparity as a 16-bit
PNG, so the prepared dataset decodes to exactly the uint16 values on disk; labels are stored as
train ids.

It writes ArrayRecord files in list order (disable_shuffling), so that `as_data_source` reads
example i of a split by index from disk: the input pipeline reads only the rows of its batches
and never holds a split in memory (Cityscapes decodes to about 35 GB). Each example keeps its
position (`index`), which readers check.
"""


import numpy as np
import tensorflow_datasets as tfds

from asymfusion_jax.data import manual_builder
from asymfusion_jax.data.cityscapes import layout as cityscapes


class CityscapesRgbd(manual_builder.IndexedBuilder):
  """Cityscapes RGB-D semantic segmentation: 2975 train / 500 val images, 19 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'RGB, 16-bit disparity and train ids, ArrayRecord in list order.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the Cityscapes folders leftImg8bit/, disparity/ and gtFine/ (extracted, or as the official
  leftImg8bit_trainvaltest.zip, disparity_trainvaltest.zip and gtFine_trainvaltest.zip) in
  `manual_dir`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Cityscapes RGB-D: RGB, 16-bit disparity, 19 train ids (ignore 255).',
        features=tfds.features.FeaturesDict({
            'rgb': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            'disparity': tfds.features.Image(shape=(None, None, 1), dtype=np.uint16),
            'label': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            'index': tfds.features.Scalar(dtype=np.int32),
            'name': tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage='https://www.cityscapes-dataset.com',
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Record i of a split is example i: random access by index.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    files = cityscapes.Files(manual_dir)
    # List both splits first, so a missing file fails before anything is written.
    entries = {split: cityscapes.list_examples(files, split) for split in cityscapes.SPLITS}
    self.info.metadata['fingerprint'] = cityscapes.fingerprint(manual_dir)
    self.info.metadata['ignore_label'] = cityscapes.IGNORE_LABEL
    return {split: self._generate_examples(manual_dir, split_entries)
            for split, split_entries in entries.items()}

  def _generate_examples(self, manual_dir, entries: list[cityscapes.Entry]):
    files = cityscapes.Files(manual_dir)
    for index, entry in enumerate(entries):
      example = cityscapes.read_example(files, entry)
      yield index, {
          'rgb': example['rgb'],
          'disparity': example['disparity'][..., None],
          'label': example['label'][..., None],
          'index': index,
          'name': entry.path('leftImg8bit'),
      }
