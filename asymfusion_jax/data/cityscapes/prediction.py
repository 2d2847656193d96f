"""What predict asks of Cityscapes (data/predict_io.py): its encoding, label ids and palette."""

import numpy as np

from asymfusion_jax.data import predict_io
from asymfusion_jax.data.cityscapes import layout as cityscapes


class PredictIO:
  """Cityscapes RGB-D: data/cityscapes.py's encoding, label ids and palette."""

  SUFFIXES = {'rgb': '_leftImg8bit', 'depth': '_disparity'}

  def __init__(self, config):
    self.config = config
    self.names = tuple(config.modalities)
    unknown = [n for n in self.names if n not in self.SUFFIXES]
    if unknown:
      raise ValueError(f'Cityscapes has the modalities {sorted(self.SUFFIXES)}, not {unknown}')

  def pairing_key(self, modality: str, stem: str) -> str:
    return predict_io.strip_suffix(stem, self.SUFFIXES[modality])

  def output_stem(self, key: str) -> str:
    return key + self.SUFFIXES['rgb']

  def network_input(self, modality: str, image: np.ndarray) -> np.ndarray:
    if modality == 'rgb':
      return cityscapes.rgb_input(predict_io.colour_8bit(image, 'a leftImg8bit (rgb) image'))
    return cityscapes.depth_input(predict_io.single_channel(image, (np.uint16,), 'a disparity image'))

  def pad_value(self, modality: str) -> np.ndarray:
    return np.full((3,), cityscapes.pad_value(modality), np.float32)

  def label_image(self, classes: np.ndarray) -> np.ndarray:
    """Train ids (H, W) -> the uint8 label ids (0..33) of cityscapesScripts' labels.py."""
    ids = np.full((256,), 0, np.uint8)  # 0: 'unlabeled', for anything not a train id.
    ids[:cityscapes.NUM_CLASSES] = cityscapes.TRAIN_LABEL_IDS
    return ids[np.clip(classes, 0, 255).astype(np.int64)]

  def colour_image(self, classes: np.ndarray) -> np.ndarray:
    from asymfusion_jax.data import cityscapes as dataset  # pylint: disable=g-import-not-at-top
    from asymfusion_jax.tasks.segmentation import visualize  # pylint: disable=g-import-not-at-top
    return visualize.colorize(classes, dataset.palette(self.config))
