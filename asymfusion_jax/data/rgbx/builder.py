"""TFDS builder of an RGB-X dataset (`layout`), ArrayRecord in list order, read by index.

Each example keeps the sample's files byte for byte, so nothing is lost or re-encoded (a JPEG
stays the JPEG it was, a 16-bit PNG or a float .npy keeps every value): 'data' is the files
concatenated in the build's order (the modalities sorted by name, then the label) and 'sizes'
their lengths; `common.Reader` reads example i and the pipeline decodes it. The feature set does
not depend on the config, so one builder class serves every dataset and modality set; each
dataset folder and folder setting gets its own build (`layout.Layout.build_name`).

Every file is decoded and checked once while building: a missing, unreadable or mis-sized file,
a modality whose files change channel count or type, NaN in an array, or a list line naming no
file stops the build with the file and the list line. The build records in its metadata:
- 'fingerprint': layout.fingerprint of the files it was made from;
- 'modalities': {name: {'folder', 'channels', 'dtype', 'mean', 'std'}}: each modality's channel
  count and type, and the per-channel mean and standard deviation of its raw values over the
  train split (what `normalisation` uses for a modality the config gives no normalisation);
- 'label_files': {split: {raw label value: the first file and list line holding it}}, so that
  the pipeline checks a config's classes without decoding an image;
- 'max_image_size': {split: [height, width]}, the size evaluation pads to.
"""

import numpy as np
import tensorflow_datasets as tfds

from asymfusion_jax.data import manual_builder
from asymfusion_jax.data.rgbx import layout as layout_lib
from asymfusion_jax.data.rgbx.layout import LayoutError

MODALITIES = 'modalities'
LABEL_FILES = 'label_files'
MAX_IMAGE_SIZE = 'max_image_size'


class _Moments:
  """Per-channel count, mean and sum of squared deviations, merged image by image (Chan et al.)
  in float64, so that millions of pixels of 16-bit values lose no precision."""

  def __init__(self, channels: int):
    self.count = 0
    self.mean = np.zeros(channels)
    self.m2 = np.zeros(channels)

  def add(self, array: np.ndarray) -> None:
    x = np.asarray(array, np.float64).reshape(-1, self.mean.size)
    n = x.shape[0]
    if not n:
      return
    mean = x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    total = self.count + n
    delta = mean - self.mean
    self.mean = self.mean + delta * n / total
    self.m2 = self.m2 + m2 + delta ** 2 * self.count * n / total
    self.count = total

  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.count, 1))


class Rgbx(manual_builder.IndexedBuilder):
  """A multimodal segmentation dataset in the RGB-X layout (see asymfusion_jax.data.rgbx)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The files of each sample as they are, ArrayRecord in list order.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the dataset in `manual_dir`: RGB/, one folder per other modality, Label/ and the list files
  (train.txt, test.txt), as config.data.modality_folders, label_folder and list_files say.
  """

  def __init__(self, *, layout: layout_lib.Layout, **kwargs):
    self._layout = layout
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Multimodal segmentation in the RGB-X layout, files kept as they are.',
        features=tfds.features.FeaturesDict({
            'data': tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            'sizes': tfds.features.Tensor(shape=(None,), dtype=np.int64),
            'index': tfds.features.Scalar(dtype=np.int32),
            'name': tfds.features.Text(),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Record i of a split is example i: random access by index.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The layout names the folder (config.data.manual_dir).
    layout = self._layout
    # Both lists are parsed and every file found first, so a bad line fails before any write.
    samples = layout_lib.read_lists(layout)
    metadata = self.info.metadata
    metadata['fingerprint'] = layout_lib.fingerprint(layout, samples)
    # Filled while the examples are generated; TFDS writes the metadata after the last one.
    metadata[MODALITIES] = {name: {'folder': folder} for name, folder in layout.folders}
    metadata[LABEL_FILES] = {split: {} for split in samples}
    metadata[MAX_IMAGE_SIZE] = {split: [0, 0] for split in samples}
    moments = {}
    return {split: self._generate_examples(split, split_samples, moments)
            for split, split_samples in samples.items()}

  def _generate_examples(self, split: str, samples: list[layout_lib.Sample], moments: dict):
    metadata = self.info.metadata
    for index, sample in enumerate(samples):
      blobs = [layout_lib.read_bytes(self._layout, relative, sample) for _, relative in sample.files]
      arrays = {key: layout_lib.decode(blob, f'{relative} listed in {sample.where()}',
                                       label=key == layout_lib.LABEL)
                for (key, relative), blob in zip(sample.files, blobs)}
      self._check(sample, arrays, split, moments)
      yield index, {
          'data': np.frombuffer(b''.join(blobs), np.uint8),
          'sizes': np.asarray([len(b) for b in blobs], np.int64),
          'index': index,
          'name': sample.name,
      }
    if split == 'train':  # The train split is generated first; val needs no statistics.
      for name, m in moments.items():
        metadata[MODALITIES][name].update(mean=m.mean.tolist(), std=m.std().tolist())

  def _check(self, sample: layout_lib.Sample, arrays: dict, split: str, moments: dict) -> None:
    """Checks one sample's arrays and records what the metadata keeps of them."""
    metadata = self.info.metadata
    label_file = sample.file(layout_lib.LABEL)
    label = arrays.pop(layout_lib.LABEL)
    layout_lib.check_label(label, f'{label_file} listed in {sample.where()}')
    for name, array in arrays.items():
      where = f'{sample.file(name)} listed in {sample.where()}'
      layout_lib.check_modality(array, where)
      if array.shape[:2] != label.shape:
        raise LayoutError(f'Mis-sized {where}: it is {array.shape[0]}x{array.shape[1]} but the '
                          f'label {label_file} is {label.shape[0]}x{label.shape[1]}.')
      info = metadata[MODALITIES][name]
      channels = 1 if array.ndim == 2 else 3
      if 'first' not in info:
        info.update(channels=channels, dtype=array.dtype.name, first=where)
      elif (info['channels'], info['dtype']) != (channels, array.dtype.name):
        raise LayoutError(f'{where} has {channels} channel(s) of {array.dtype.name}, but '
                          f'{info["first"]} has {info["channels"]} of {info["dtype"]}: the '
                          f'files of modality {name!r} must agree.')
      if split == 'train':
        moments.setdefault(name, _Moments(channels)).add(array)
    for value in np.unique(label):
      metadata[LABEL_FILES][split].setdefault(str(int(value)), f'{label_file} listed in '
                                                               f'{sample.where()}')
    size = metadata[MAX_IMAGE_SIZE][split]
    for axis in (0, 1):
      size[axis] = max(size[axis], int(label.shape[axis]))
