"""What predict asks of Taskonomy (data/predict_io.py): its domain decoding and pad values."""

import numpy as np

from asymfusion_jax.data import predict_io
from asymfusion_jax.data.taskonomy import layout as taskonomy


class PredictIO:
  """Taskonomy domains: data/taskonomy.py's decoding, then x / 127.5 - 1."""

  def __init__(self, config):
    self.names = tuple(config.modalities)
    for name in self.names:
      taskonomy.check_domain(name)

  def pairing_key(self, modality: str, stem: str) -> str:
    return predict_io.strip_suffix(stem, f'_domain_{modality}')

  def output_stem(self, key: str) -> str:
    return key

  def network_input(self, modality: str, image: np.ndarray) -> np.ndarray:
    return taskonomy.decode(modality, image).astype(np.float32) / np.float32(127.5) - 1

  def pad_value(self, modality: str) -> np.ndarray:
    del modality
    return np.zeros((3,), np.float32)
