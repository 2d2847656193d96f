"""How the raw pixels of each modality become network input (docs/method.md section 8).

A plain dict, not a registry with decorators: the training pipeline looks modalities up by the
names in `config.modalities`, and the export tool writes the same numbers to a JSON sidecar so
that a deployed model normalises its inputs exactly as it was trained.
"""

import dataclasses
from typing import Sequence

import numpy as np

# Raw-valued pad of the train crop and of batched evaluation, per channel. The reference pads
# every modality (depth included, after repeating it to 3 channels) with the ImageNet mean in
# 0..255 units, so padded RGB normalises to zero and padded depth to these values / 5000.
RAW_PAD_VALUE = (123.675, 116.28, 103.53)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Modality:
  """Normalisation of one modality: `(raw * scale - mean) / std`, per channel.

  Attributes:
    scale: multiplies the raw pixel values first (1/255 for 8-bit colour, 1/5000 for depth).
    mean: per-channel mean subtracted after scaling.
    std: per-channel standard deviation divided by last.
    interpolation: 'cubic' or 'nearest', used when the train augmentation rescales the image.
      Depth is resized with nearest neighbours, like the label, so no depth values are invented
      across object boundaries.
  """
  scale: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  interpolation: str


MODALITIES = {
    'rgb': Modality(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation='cubic'),
    'depth': Modality(scale=1 / 5000, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      interpolation='nearest'),
}


def get(name: str) -> Modality:
  """The modality called `name`, with an error that lists the known ones."""
  if name not in MODALITIES:
    raise ValueError(f'Unknown modality {name!r}; known: {sorted(MODALITIES)}.')
  return MODALITIES[name]


def normalise(name: str | Modality, raw: np.ndarray) -> np.ndarray:
  """Normalises raw pixels (H, W), (H, W, 1) or (H, W, 3) to float32 (H, W, 3).

  `name` names a modality of the table, or is the Modality itself (a dataset's own, rgbx).
  Single-channel images (depth) are repeated to 3 channels, so every modality fits the same
  3-channel stem convolution.
  """
  m = name if isinstance(name, Modality) else get(name)
  x = np.asarray(raw, np.float32)
  if x.ndim == 2:
    x = x[..., None]
  # A (H, W, 1) input broadcasts against the (3,) mean, which repeats it to 3 channels.
  return (x * np.float32(m.scale) - np.asarray(m.mean, np.float32)) / np.asarray(m.std, np.float32)


def normalised_pad_value(name: str) -> np.ndarray:
  """The float32 (3,) value of a padded pixel of modality `name` after normalisation."""
  return normalise(name, np.asarray(RAW_PAD_VALUE, np.float32).reshape(1, 1, 3))[0, 0]


def known(config) -> tuple[str, ...]:
  """The modality names a segmentation config may use: those of its dataset where the dataset
  names its own (the optional member modality_names(config), rgbx: its modality folders), else
  this table's."""
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  own = getattr(data.get(config), 'modality_names', None)
  return tuple(own(config)) if own else tuple(MODALITIES)


def of_config(config) -> dict[str, Modality]:
  """The Modality of each of config.modalities: the dataset's own where it defines the optional
  member normalisation(config) (rgbx), else this table's."""
  from asymfusion_jax import data  # pylint: disable=g-import-not-at-top
  own = getattr(data.get(config), 'normalisation', None)
  return own(config) if own else {name: get(name) for name in config.modalities}


def to_json(names: Sequence[str]) -> dict:
  """A JSON-ready description of the input normalisation of a model trained on `names`."""
  return {
      'modalities': list(names),
      'raw_pad_value': list(RAW_PAD_VALUE),
      'normalisation': {n: dataclasses.asdict(get(n)) for n in names},
      'formula': '(raw * scale - mean) / std per channel; single-channel inputs repeated to 3',
  }
