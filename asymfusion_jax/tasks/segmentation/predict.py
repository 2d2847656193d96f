"""What `python -m asymfusion_jax.predict` needs of the segmentation task.

The model is the one evaluation runs (a DeepLab at config.eval.output_stride). Its outputs are
the logits of the M branches and the ensemble. The passes of --scales and --flip are combined as
Cityscapes evaluation combines them, by their mean softmax probability; the logits written for
several passes are the log of that mean, so that their softmax and argmax are the combination's.
Per image and branch it writes the predicted classes in the dataset's label convention
('labels', a PNG), in its palette ('colour') and, asked for, the float32 (H, W, K) logits
('logits', .npy).
"""

import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax.models import build_model
from asymfusion_jax.tasks import base


class SegmentationPredictor(base.Predictor):
  """predict's view of a segmentation config (see base.Predictor); outputs are logits."""

  def __init__(self, config, logits: bool = False):
    model = build_model(config)
    if 'output_stride' in config.get('eval', {}):  # The stride evaluation runs (DeepLab).
      model = model.clone(output_stride=config.eval.output_stride)
    super().__init__(config, model)
    self.logits = logits

  def params(self, variables: dict) -> dict:
    return variables

  @staticmethod
  def combine(passes: list[jax.Array]) -> jax.Array:
    """One pass's logits as they are; several: the log of their mean softmax."""
    if len(passes) == 1:
      return passes[0]
    mean = sum(jax.nn.softmax(p, axis=-1) for p in passes) / len(passes)
    return jnp.log(mean)

  def kinds(self) -> list[tuple[str, str]]:
    return [('labels', '.png'), ('colour', '.png')] + ([('logits', '.npy')] if self.logits else [])

  def host_outputs(self, combined: jax.Array) -> dict[str, np.ndarray]:
    classes = np.asarray(jnp.argmax(combined, axis=-1))
    out = {'labels': self.io.label_image(classes), 'colour': self.io.colour_image(classes)}
    if self.logits:
      out['logits'] = np.asarray(combined, np.float32)
    return out
