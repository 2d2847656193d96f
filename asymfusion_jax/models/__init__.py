"""Flax modules of AsymFusion: the multimodal ResNet encoder and the RefineNet segmentation
model, the multimodal Xception-65 and DeepLabv3+, and the FID Inception-v3 that scores image
translation."""

import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax.models import refinenet as _refinenet
from asymfusion_jax.models.deeplab import DeepLab
from asymfusion_jax.models.inception import InceptionV3
from asymfusion_jax.models.layers import ModalBatchNorm
from asymfusion_jax.models.refinenet import RefineNet, resolve_compute_dtype
from asymfusion_jax.models.resnet import STAGE_SIZES, Bottleneck, ResNet
from asymfusion_jax.models.xception import Xception65

# Values of config.model.name; a config without the key builds a RefineNet.
MODEL_NAMES = ('refinenet', 'deeplab')


def build_deeplab(config) -> DeepLab:
  """The DeepLab that a config describes (its `model` section, modalities and compute dtype)."""
  return DeepLab(
      num_classes=config.model.num_classes,
      num_modalities=len(config.modalities),
      fusion=config.model.fusion,
      output_stride=config.model.output_stride,
      dtype=resolve_compute_dtype(config.compute_dtype),
      frozen_bn=config.frozen_bn,
      width_divisor=config.model.width_divisor,
      middle_flow_units=config.model.middle_flow_units,
      dropout_rate=config.model.dropout_rate,
      remat=config.model.remat,
      upsample_logits=config.model.upsample_logits)


def build_model(config) -> RefineNet | DeepLab:
  """The segmentation model of config.model.name: 'refinenet' (the default) or 'deeplab'."""
  name = config.model.get('name', 'refinenet')
  if name == 'refinenet':
    return _refinenet.build_model(config)
  if name == 'deeplab':
    return build_deeplab(config)
  raise ValueError(f'unknown config.model.name {name!r}; choose one of {MODEL_NAMES}')


__all__ = ['build_deeplab', 'build_model', 'Bottleneck', 'DeepLab', 'InceptionV3', 'MODEL_NAMES',
           'ModalBatchNorm', 'RefineNet', 'ResNet', 'STAGE_SIZES', 'Xception65',
           'resolve_compute_dtype']


def random_variables(model, shape, seed: int = 0) -> dict:
  """Variables of `model` for inputs of `shape`, with random values, without compiling its init.

  Compiling a full-size model's init can take longer than the program one wants to time or
  test, so the shapes come from jax.eval_shape and the values from NumPy: He-normal kernels,
  BatchNorm scales and running variances in [0.5, 1.5], every other value N(0, 0.1).
  """
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'kernel'" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if "'var'" in name or "'scale'" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)
