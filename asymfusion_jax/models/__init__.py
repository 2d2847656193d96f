"""Flax modules of AsymFusion: the multimodal ResNet encoder and the RefineNet segmentation
model, the multimodal Xception-65 and DeepLabv3+, the image-translation U-Net generator and
PatchGAN discriminator, and the FID Inception-v3 that scores image translation."""

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

# Values of config.model.name; a config without the key builds a RefineNet. 'unet' is the
# image-translation generator (build_generator), with its discriminator (build_discriminator).
MODEL_NAMES = ('refinenet', 'deeplab', 'unet')


def build_deeplab(config) -> DeepLab:
  """The DeepLab that a config describes (its `model` section, modalities and compute dtype).

  Its fusion is AsymFusion or none: config.model.fusion True / 'asym' or False / 'none'.
  """
  method = _fusion.method(config.model.fusion)
  if method not in ('asym', 'none'):
    raise ValueError(f'config.model.fusion={config.model.fusion!r}: the DeepLab model has '
                     "AsymFusion ('asym' or True) or no fusion ('none' or False); the fusion "
                     'baselines are built for RefineNet and the translation U-Net')
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
      bn_momentum=config.model.get('bn_momentum', BN_MOMENTUM))


def build_model(config) -> RefineNet | DeepLab:
  """The segmentation model of config.model.name: 'refinenet' (the default) or 'deeplab'."""
  name = config.model.get('name', 'refinenet')
  if name == 'refinenet':
    return _refinenet.build_model(config)
  if name == 'deeplab':
    return build_deeplab(config)
  if name == 'unet':
    raise ValueError("config.model.name 'unet' is the image-translation generator: build it "
                     'with build_generator(config) (and its discriminator with '
                     'build_discriminator(config)), not build_model')
  raise ValueError(f'unknown config.model.name {name!r}; choose one of {MODEL_NAMES}')


def build_generator(config) -> UNetGenerator:
  """The image-translation generator of a translation config (config.model.name == 'unet')."""
  name = config.model.get('name', 'refinenet')
  if name != 'unet':
    raise ValueError(f"build_generator builds config.model.name 'unet', got {name!r}")
  return UNetGenerator(
      num_modalities=len(config.modalities),
      ngf=config.model.ngf,
      num_downs=config.model.num_downs,
      fusion=config.model.fusion,
      fusion_blocks=tuple(config.model.fusion_blocks),
      dropout_rate=config.model.dropout_rate,
      dtype=resolve_compute_dtype(config.compute_dtype),
      kernels=config.model.kernels)


def build_discriminator(config) -> PatchDiscriminator:
  """The PatchGAN discriminator of a translation config (its config.model.ndf)."""
  return PatchDiscriminator(ndf=config.model.ndf,
                            dtype=resolve_compute_dtype(config.compute_dtype))


__all__ = ['build_deeplab', 'build_discriminator', 'build_generator', 'build_model', 'Bottleneck',
           'DeepLab', 'InceptionV3', 'InstanceNorm', 'MODEL_NAMES', 'ModalBatchNorm',
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
