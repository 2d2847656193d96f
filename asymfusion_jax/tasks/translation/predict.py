"""What `python -m asymfusion_jax.predict` needs of the translation task.

The model is the generator; its outputs are the M branches' and the ensemble's images in
[-1, 1]. Windows, scales and flips are averaged in that space, then written per image and branch
as 8-bit RGB PNGs (round((x + 1) * 127.5), as evaluation) in a folder named after config.target.
"""

import jax
import numpy as np

from asymfusion_jax.models import build_model
from asymfusion_jax.tasks import base
from asymfusion_jax.tasks.translation import evaluation


class TranslationPredictor(base.Predictor):
  """predict's view of a translation config (see base.Predictor); outputs are images."""

  def __init__(self, config, logits: bool = False):
    if logits:
      raise ValueError('--logits applies to segmentation models; a translation model writes '
                       'images')
    super().__init__(config, build_model(config))

  def params(self, variables: dict) -> dict:
    return {'params': variables['params']['generator']}

  @staticmethod
  def combine(passes: list[jax.Array]) -> jax.Array:
    return passes[0] if len(passes) == 1 else sum(passes) / len(passes)

  def kinds(self) -> list[tuple[str, str]]:
    return [(self.config.target, '.png')]

  def host_outputs(self, combined: jax.Array) -> dict[str, np.ndarray]:
    return {self.config.target: np.asarray(evaluation.to_uint8(combined))}
