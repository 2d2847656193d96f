"""What predict asks of an RGB-X dataset (data/predict_io.py): each modality's own normalisation,
pad values and the dataset's label convention.

New images (image files and `.npy` arrays, layout.EXTENSIONS) are read as the build reads its
files (16 bits kept, colour in RGB order, arrays as they are: layout.decode), checked as the
build checks them (one or three channels, no NaN: layout.check_modality) and normalised as in
training (`normalisation`: the config's, ImageNet for 'rgb', or the statistics the build
measured, which therefore must be at hand). Predicted classes are written back in the
dataset's own convention: class c as the raw value c + config.data.label_offset.
"""

import numpy as np

from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data.nyudv2 import prediction as nyudv2_prediction
from asymfusion_jax.data.rgbx import layout
from asymfusion_jax.data.rgbx import pipeline


class PredictIO(nyudv2_prediction.PredictIO):
  """An RGB-X dataset's modalities, as the config's build normalises them. Files pair by their
  name and outputs are named after it, as NYUDv2's (pairing_key, output_stem)."""

  def __init__(self, config):  # pylint: disable=super-init-not-called (NYUDv2's table check)
    self.norms = pipeline.normalisation(config)
    self.offset = int(config.data.label_offset)
    top = int(config.model.num_classes) - 1 + self.offset
    self.label_dtype = np.uint8 if top < 256 else np.uint16
    self.colours = pipeline.palette(config)

  # The files a dataset folder may hold (layout.EXTENSIONS: images and .npy arrays).
  extensions = layout.EXTENSIONS

  def decode(self, data: bytes, path: str) -> np.ndarray:
    """A file's array as the build reads it, checked as the build checks it; a LayoutError (a
    ValueError) naming `path`."""
    array = layout.decode(data, path)
    layout.check_modality(array, path)
    return array

  def network_input(self, modality: str, image: np.ndarray) -> np.ndarray:
    """float32 (H, W, 3) network input of a decoded array of `modality` (decode's output)."""
    layout.check_modality(image, f'a {modality} input')
    return modality_lib.normalise(self.norms[modality], layout.as_float(image))

  def pad_value(self, modality: str) -> np.ndarray:
    """Every modality pads with the raw value that normalises to 0 (normalisation module)."""
    del modality
    return np.zeros((3,), np.float32)

  def label_image(self, classes: np.ndarray) -> np.ndarray:
    """Predicted classes as the dataset's raw labels: class c is c + config.data.label_offset."""
    return (classes.astype(np.int64) + self.offset).astype(self.label_dtype)

  def colour_image(self, classes: np.ndarray) -> np.ndarray:
    """The config's palette (config.data.palette), else the prediction panels' colours."""
    from asymfusion_jax.tasks.segmentation import visualize  # pylint: disable=g-import-not-at-top
    return visualize.colorize(classes, self.colours)
