"""What predict asks of NYUDv2 (data/predict_io.py): its normalisation, pad values and labels."""

import numpy as np

from asymfusion_jax.data import modalities
from asymfusion_jax.data import predict_io


class PredictIO:
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
      raw = predict_io.colour_8bit(image, 'an rgb image')
    else:
      raw = predict_io.single_channel(image, (np.uint8, np.uint16), f'a {modality} image')
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
