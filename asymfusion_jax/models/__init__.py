"""Flax modules of AsymFusion: the multimodal ResNet encoder and the RefineNet segmentation model,
and the FID Inception-v3 that scores image translation."""

from asymfusion_jax.models.inception import InceptionV3
from asymfusion_jax.models.layers import ModalBatchNorm
from asymfusion_jax.models.refinenet import RefineNet, build_model, resolve_compute_dtype
from asymfusion_jax.models.resnet import STAGE_SIZES, Bottleneck, ResNet

__all__ = ['build_model', 'Bottleneck', 'InceptionV3', 'ModalBatchNorm', 'RefineNet', 'ResNet',
           'STAGE_SIZES', 'resolve_compute_dtype']
