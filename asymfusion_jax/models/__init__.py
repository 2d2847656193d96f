"""Flax modules of AsymFusion: the multimodal ResNet encoder and the RefineNet segmentation
model, the multimodal Xception-65 and DeepLabv3+, the image-translation U-Net generator and
PatchGAN discriminator, and the FID Inception-v3 that scores image translation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import fusion as _fusion
from asymfusion_jax.models import refinenet as _refinenet
from asymfusion_jax.models.deeplab import DeepLab
from asymfusion_jax.models.inception import InceptionV3
from asymfusion_jax.models.layers import InstanceNorm, ModalBatchNorm, ModalInstanceNorm
from asymfusion_jax.models.patchgan import PatchDiscriminator
from asymfusion_jax.models.refinenet import RefineNet, resolve_compute_dtype
from asymfusion_jax.models.resnet import STAGE_SIZES, Bottleneck, ResNet
from asymfusion_jax.models.unet import UNetGenerator
from asymfusion_jax.models.xception import BN_MOMENTUM, Xception65

def build_deeplab(config) -> DeepLab:
  """The DeepLab that a config describes (its `model` section, modalities and compute dtype).

  Its fusion is AsymFusion or none: config.model.fusion 'asym' or 'none'.
  """
  method = _fusion.method(config.model.fusion)
  if method not in ('asym', 'none'):
    raise ValueError(f'config.model.fusion={config.model.fusion!r}: the DeepLab model has '
                     "AsymFusion ('asym') or no fusion ('none'); the fusion baselines are built "
                     'for RefineNet and the translation U-Net')
  return DeepLab(
      num_classes=config.model.num_classes,
      num_modalities=len(config.modalities),
      fusion=method == 'asym',
      output_stride=config.model.output_stride,
      dtype=resolve_compute_dtype(config.compute_dtype),
      frozen_bn=config.frozen_bn,
      width_divisor=config.model.width_divisor,
      middle_flow_units=config.model.middle_flow_units,
      dropout_rate=config.model.dropout_rate,
      remat=config.model.remat,
      upsample_logits=config.model.upsample_logits,
      bn_momentum=config.model.get('bn_momentum', BN_MOMENTUM),
      scan_blocks=config.model.get('scan_blocks', False))


def build_generator(config) -> UNetGenerator:
  """The image-translation U-Net generator that a translation config describes."""
  return UNetGenerator(
      num_modalities=len(config.modalities),
      ngf=config.model.ngf,
      num_downs=config.model.num_downs,
      fusion=config.model.fusion,
      fusion_blocks=tuple(config.model.fusion_blocks),
      dropout_rate=config.model.dropout_rate,
      dtype=resolve_compute_dtype(config.compute_dtype),
      kernels=config.model.kernels)


# config.model.name -> the function that builds that model from a config. Segmentation takes
# 'refinenet' and 'deeplab'; translation takes 'unet' as its generator, beside the PatchGAN
# discriminator (build_discriminator). A new model is a module and one line here.
MODELS = {
    'refinenet': _refinenet.build_model,
    'deeplab': build_deeplab,
    'unet': build_generator,
}


def build_model(config) -> nn.Module:
  """The model of config.model.name (MODELS); a one-line ValueError naming the known ones."""
  name = config.model.get('name')
  if name not in MODELS:
    raise ValueError(f'config.model.name={name!r} is not a model: choose one of {tuple(MODELS)}')
  return MODELS[name](config)


def build_discriminator(config) -> PatchDiscriminator:
  """The PatchGAN discriminator of a translation config (its config.model.ndf)."""
  return PatchDiscriminator(ndf=config.model.ndf,
                            dtype=resolve_compute_dtype(config.compute_dtype))


__all__ = ['build_deeplab', 'build_discriminator', 'build_generator', 'build_model', 'Bottleneck',
           'DeepLab', 'InceptionV3', 'InstanceNorm', 'MODELS', 'ModalBatchNorm',
           'ModalInstanceNorm', 'PatchDiscriminator', 'RefineNet', 'ResNet', 'STAGE_SIZES',
           'UNetGenerator', 'Xception65', 'resolve_compute_dtype']


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
