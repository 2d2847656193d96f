"""What `python -m asymfusion_jax.predict` asks of a dataset: how a file of one modality becomes
network input, the pad value of each modality, how the files of one image are paired across the
modality folders, and how predicted classes are written in the dataset's own label convention
and palette.

Each dataset gives its own through its predict_io(config) member (data/base.py), defined in
its prediction.py; get(config) asks the dataset. The built-in ones:

  nyudv2      rgb and depth PNGs normalised as in training (data/modalities.py), padded with the
              training pad pixel; labels are the class indices 0..K-1 of the masks (no offset),
              coloured with the VOC-style palette of tasks/segmentation/visualize.py.
  cityscapes  leftImg8bit RGB and 16-bit disparity encoded as in training (data/cityscapes/layout.py),
              padded with the mean pixel and invalid disparity; files pair by the stem before
              _leftImg8bit / _disparity; labels are written as the 34 Cityscapes label ids (train
              ids mapped back), named <city>_<seq>_<frame>_leftImg8bit.png, in the Cityscapes
              palette: what cityscapesscripts' evaluator and the benchmark server read.
  taskonomy   domain images decoded as in training (data/taskonomy/layout.py) and mapped to [-1, 1];
              files pair by the stem before _domain_<domain>; padded with 0 (mid-grey). The
              U-Net's InstanceNorm sees padded pixels, so give images at a multiple of
              2**model.num_downs, or tile them (predict --tile) at the training size.
  rgbx        any modalities, read as the build reads them (images and .npy arrays, with the
              build's checks) and normalised as in training; labels written as the dataset's raw
              values (class + config.data.label_offset), coloured with config.data.palette.

Two members are optional: `extensions`, the file extensions predict takes from an input folder
(default IMAGE_EXTENSIONS), and `decode(data, path)`, a file's array as the dataset stores it
(default `decode`, images only). Every read error is a ValueError whose message says what is
wrong with the file; predict adds the file's path where the message does not name it.
"""

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


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


def strip_suffix(stem: str, suffix: str) -> str:
  return stem[:-len(suffix)] if suffix and stem.endswith(suffix) else stem


def extensions(dataset) -> tuple[str, ...]:
  """The file extensions (lower case, with the dot) that `dataset`'s predict I/O reads."""
  return tuple(getattr(dataset, 'extensions', IMAGE_EXTENSIONS))


def read_file(dataset, data: bytes, path: str) -> np.ndarray:
  """The array of a file (`data`, read from `path`): the dataset's own decode(data, path) where
  it has one, else `decode`."""
  own = getattr(dataset, 'decode', None)
  return own(data, path) if own is not None else decode(data)


def get(config):
  """The predict I/O of the dataset of config.data.name (its predict_io(config))."""
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  return data.get(config).predict_io(config)
