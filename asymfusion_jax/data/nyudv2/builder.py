"""TFDS builder for NYUDv2 (40 classes) from the preprocessed folder layout (see `layout`).

NYUDv2 is not downloadable in this layout, so the builder only reads a folder the user names
(`manual_dir`). The same builder reads the synthetic dataset, which is written in that layout.
Images are re-encoded on the way in: colour as RGB (OpenCV decodes BGR), depth as 16-bit PNG
whatever its bit depth on disk, so the prepared dataset always decodes depth to exact uint16
values. The build is ArrayRecord in list order (`manual_builder.IndexedBuilder`): the pipeline
reads example i of a split by index from disk and never holds a split in memory. Each example
keeps its list-file position (`index`), which the reader checks.

The build accepts any mask values: one build serves configs with different numbers of classes.
It records, per split, every label value it saw and the first mask that holds it
(metadata['label_files']), so that `pipeline.check_labels` can hold the dataset against a
config's num_classes and ignore_label without decoding a single image. It also records each
split's largest image size (metadata['max_image_size'], {split: [height, width]}), the shape
that evaluation pads every val image to.
"""


import numpy as np
import tensorflow_datasets as tfds

from asymfusion_jax.data import manual_builder
from asymfusion_jax.data.nyudv2 import layout

IGNORE_LABEL = 255


class Nyudv2(manual_builder.IndexedBuilder):
  """NYUDv2 RGB-D semantic segmentation: 795 train / 654 val images, 40 classes."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Preprocessed layout: rgb/, depth/, masks/, train.txt, val.txt.',
      '2.0.0': 'ArrayRecord in list order, read by index; records the largest image size.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the preprocessed NYUDv2 folder in `manual_dir`: `rgb/`, `depth/` and `masks/` PNGs (masks
  with labels 0..39 and 255 for unlabelled pixels, depth as 8- or 16-bit single-channel PNG) and
  the list files `train.txt` and `val.txt`, whose lines are
  `rgb/NNNNNN.png<TAB>masks/NNNNNN.png<TAB>depth/NNNNNN.png`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='NYUDv2 RGB-D semantic segmentation, 40 classes, ignore label 255.',
        features=tfds.features.FeaturesDict({
            'rgb': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            'depth': tfds.features.Image(shape=(None, None, 1), dtype=np.uint16),
            'label': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            'index': tfds.features.Scalar(dtype=np.int32),
            'name': tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage='https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html',
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Record i of a split is example i: random access by index.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    # Parse both lists first, so a malformed list fails before anything is written.
    entries = {split: layout.read_list(manual_dir, split) for split in layout.LIST_FILES}
    self.info.metadata['fingerprint'] = layout.fingerprint(manual_dir)
    self.info.metadata['ignore_label'] = IGNORE_LABEL
    # Filled while the examples are generated; TFDS writes the metadata after the last one.
    label_files = {split: {} for split in entries}
    max_size = {split: [0, 0] for split in entries}
    self.info.metadata[layout.LABEL_FILES] = label_files
    self.info.metadata[layout.MAX_IMAGE_SIZE] = max_size
    return {split: self._generate_examples(manual_dir, split_entries, label_files[split],
                                           max_size[split])
            for split, split_entries in entries.items()}

  def _generate_examples(self, manual_dir, entries: list[layout.Entry], label_files: dict,
                         max_size: list[int]):
    for index, entry in enumerate(entries):
      example = layout.read_example(manual_dir, entry)
      for value in np.flatnonzero(np.bincount(example['label'].ravel(), minlength=256)):
        label_files.setdefault(str(value), f'Mask {entry.mask} listed in {entry.where()}')
      for axis in (0, 1):
        max_size[axis] = max(max_size[axis], int(example['label'].shape[axis]))
      yield index, {
          'rgb': example['rgb'],
          'depth': example['depth'][..., None],
          'label': example['label'][..., None],
          'index': index,
          'name': entry.rgb,
      }
