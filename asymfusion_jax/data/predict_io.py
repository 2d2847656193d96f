"""What `python -m asymfusion_jax.predict` asks of a dataset: how a file of one modality becomes
network input, the pad value of each modality, how the files of one image are paired across the
modality folders, and how predicted classes are written in the dataset's own label convention
and palette.

One object per config.data.name in DATASETS, the one place predict looks a dataset up:

  nyudv2      rgb and depth PNGs normalised as in training (data/modalities.py), padded with the
              training pad pixel; labels are the class indices 0..K-1 of the masks (no offset),
              coloured with the VOC-style palette of tasks/segmentation/visualize.py.
  cityscapes  leftImg8bit RGB and 16-bit disparity encoded as in training (data/cityscapes.py),
              padded with the mean pixel and invalid disparity; files pair by the stem before
              _leftImg8bit / _disparity; labels are written as the 34 Cityscapes label ids (train
              ids mapped back), named <city>_<seq>_<frame>_leftImg8bit.png, in the Cityscapes
              palette: what cityscapesscripts' evaluator and the benchmark server read.
  taskonomy   domain images decoded as in training (data/taskonomy.py) and mapped to [-1, 1];
              files pair by the stem before _domain_<domain>; padded with 0 (mid-grey). The
              U-Net's InstanceNorm sees padded pixels, so give images at a multiple of
              2**model.num_downs, or tile them (predict --tile) at the training size.

Every read error is a ValueError whose message says what is wrong with the image; predict adds
the file's path.
"""

import cv2
import numpy as np

from asymfusion_jax.data import cityscapes
from asymfusion_jax.data import modalities
from asymfusion_jax.data import taskonomy


def decode(data: bytes) -> np.ndarray:
  """The image as stored (cv2.IMREAD_UNCHANGED: 16 bits kept, colour in RGB order, no EXIF
  rotation, so that the modalities of one image keep their pixel correspondence)."""
  array = np.frombuffer(data, np.uint8)
  image = None
  if array.size:
    try:
      image = cv2.imdecode(array, cv2.IMREAD_UNCHANGED)
    except cv2.error:
      image = None
  if image is None:
    raise ValueError('not a readable image (empty, truncated or of an unknown format)')
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 3 and image.shape[-1] in (3, 4):
    image = np.ascontiguousarray(image[..., 2::-1])  # BGR(A) -> RGB; alpha dropped.
  if image.ndim == 3 and image.shape[-1] != 3:
    raise ValueError(f'an image of {image.shape[-1]} channels; expected 1, 3 or 4')
  return image


def _describe(image: np.ndarray) -> str:
  channels = 1 if image.ndim == 2 else image.shape[-1]
  return f'{channels}-channel {image.dtype.name}'


def colour_8bit(image: np.ndarray, what: str) -> np.ndarray:
  """An 8-bit grey or RGB image as uint8 (H, W, 3); grey is repeated to 3 channels."""
  if image.dtype != np.uint8:
    raise ValueError(f'{what} must be an 8-bit grey or colour image; this one is '
                     f'{_describe(image)}')
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def single_channel(image: np.ndarray, dtypes, what: str) -> np.ndarray:
  """A single-channel image of one of `dtypes`, as stored."""
  if image.ndim != 2 or image.dtype not in dtypes:
    raise ValueError(f'{what} must be a single-channel '
                     f'{" or ".join(np.dtype(d).name for d in dtypes)} image; this one is '
                     f'{_describe(image)}')
  return image


def _strip(stem: str, suffix: str) -> str:
  return stem[:-len(suffix)] if suffix and stem.endswith(suffix) else stem


class Nyudv2:
  """NYUDv2 (and its synthetic stand-in): data/modalities.py's normalisation."""

  def __init__(self, config):
    self.names = tuple(config.modalities)
    for name in self.names:
      modalities.get(name)  # An unknown modality fails here, naming the known ones.
    self.label_dtype = np.uint8 if config.model.num_classes <= 256 else np.uint16

  def pairing_key(self, modality: str, stem: str) -> str:
    """The part of a file's stem (relative path, no extension) shared by an image's files."""
    del modality
    return stem

  def output_stem(self, key: str) -> str:
    """The stem (relative path, no extension) of an image's output files."""
    return key

  def network_input(self, modality: str, image: np.ndarray) -> np.ndarray:
    """float32 (H, W, 3) network input of a decoded image (decode's output)."""
    if modality == 'rgb':
      raw = colour_8bit(image, 'an rgb image')
    else:
      raw = single_channel(image, (np.uint8, np.uint16), f'a {modality} image')
    return modalities.normalise(modality, raw)

  def pad_value(self, modality: str) -> np.ndarray:
    """float32 (3,): a padded pixel of `modality`, after normalisation."""
    return modalities.normalised_pad_value(modality)

  def label_image(self, classes: np.ndarray) -> np.ndarray:
    """Predicted classes (H, W) in the dataset's label convention: the class index itself."""
    return classes.astype(self.label_dtype)

  def colour_image(self, classes: np.ndarray) -> np.ndarray:
    """The VOC-style palette of segmentation's prediction panels."""
    from asymfusion_jax.tasks.segmentation import visualize  # pylint: disable=g-import-not-at-top
    return visualize.colorize(classes)


class Cityscapes:
  """Cityscapes RGB-D: data/cityscapes.py's encoding, label ids and palette."""

  SUFFIXES = {'rgb': '_leftImg8bit', 'depth': '_disparity'}

  def __init__(self, config):
    self.names = tuple(config.modalities)
    unknown = [n for n in self.names if n not in self.SUFFIXES]
    if unknown:
      raise ValueError(f'Cityscapes has the modalities {sorted(self.SUFFIXES)}, not {unknown}')

  def pairing_key(self, modality: str, stem: str) -> str:
    return _strip(stem, self.SUFFIXES[modality])

  def output_stem(self, key: str) -> str:
    return key + self.SUFFIXES['rgb']

  def network_input(self, modality: str, image: np.ndarray) -> np.ndarray:
    if modality == 'rgb':
      return cityscapes.rgb_input(colour_8bit(image, 'a leftImg8bit (rgb) image'))
    return cityscapes.depth_input(single_channel(image, (np.uint16,), 'a disparity image'))

  def pad_value(self, modality: str) -> np.ndarray:
    return np.full((3,), cityscapes.pad_value(modality), np.float32)

  def label_image(self, classes: np.ndarray) -> np.ndarray:
    """Train ids (H, W) -> the uint8 label ids (0..33) of cityscapesScripts' labels.py."""
    ids = np.full((256,), 0, np.uint8)  # 0: 'unlabeled', for anything not a train id.
    ids[:cityscapes.NUM_CLASSES] = cityscapes.TRAIN_LABEL_IDS
    return ids[np.clip(classes, 0, 255).astype(np.int64)]

  def colour_image(self, classes: np.ndarray) -> np.ndarray:
    return cityscapes.colorize(classes)


class Taskonomy:
  """Taskonomy domains: data/taskonomy.py's decoding, then x / 127.5 - 1."""

  def __init__(self, config):
    self.names = tuple(config.modalities)
    for name in self.names:
      taskonomy.check_domain(name)

  def pairing_key(self, modality: str, stem: str) -> str:
    return _strip(stem, f'_domain_{modality}')

  def output_stem(self, key: str) -> str:
    return key

  def network_input(self, modality: str, image: np.ndarray) -> np.ndarray:
    return taskonomy.decode(modality, image).astype(np.float32) / np.float32(127.5) - 1

  def pad_value(self, modality: str) -> np.ndarray:
    del modality
    return np.zeros((3,), np.float32)


# config.data.name -> the class whose instance (made from the config) predict uses.
DATASETS = {'nyudv2': Nyudv2, 'cityscapes': Cityscapes, 'taskonomy': Taskonomy}


def get(config):
  """The predict I/O of config.data.name; a ValueError listing the known names otherwise."""
  name = config.data.get('name', 'nyudv2')
  if name not in DATASETS:
    raise ValueError(f'config.data.name={name!r} has no predict I/O; known: {sorted(DATASETS)}')
  return DATASETS[name](config)
