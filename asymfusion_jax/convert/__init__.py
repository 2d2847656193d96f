"""Weights between PyTorch / TensorFlow checkpoints and the Flax models.

One module per source, the shared key mapping in one, the command line in __main__:

  keys          Entry records, the checks and fills every converter shares
  refinenet     torchvision ResNet, the reference AsymFusion RefineNet (both ways)
  inception     pytorch-fid's FID Inception-v3 (both ways)
  translation   CEN's image-translation U-Net generator and PatchGAN discriminator
  deeplab       TF-DeepLab's Xception-65 / DeepLabv3+ checkpoints (TensorFlow read lazily)
  pth           convert_file: a .pth recognised by its keys, converted for a config, saved
  __main__      python -m asymfusion_jax.convert

Every public function is importable from the package itself (asymfusion_jax.convert.<name>);
importing the package loads none of the converters, which load on first use.

The sources: torchvision's ResNet-50/101/152 and the reference AsymFusion RefineNet
(docs/method.md section 9), CEN's image-translation generator and discriminator (section 11),
pytorch-fid's FID Inception-v3 (for asymfusion_jax.fid), and TF-DeepLab's name-based
Xception-65 / DeepLabv3+ checkpoints (section 13); each module's docstring gives its layout.

The Flax module names mirror the PyTorch attribute names, so a conversion is a renaming plus a
transposition of the convolution kernels, torch (out, in, kh, kw) <-> Flax (kh, kw, in, out), and a
stacking of the per-modality BatchNorm vectors into (M, C) arrays. Every conversion is checked
against the shapes that the Flax model expects (from jax.eval_shape, so nothing is allocated), and
missing, unexpected or mis-shaped keys are all reported at once, by name.

`num_batches_tracked`, the one PyTorch BatchNorm buffer without a Flax counterpart: it only
changes the computation when a BatchNorm has momentum=None (a cumulative average), and every
BatchNorm here uses momentum 0.1 (docs/method.md section 2), so it is inert in both frameworks.
It is checked (a 0-d value, where PyTorch puts it) but not stored in the Flax variables, whose
`batch_stats` shapes the model defines. Export writes 0 (what a fresh PyTorch BatchNorm holds, and
what frozen-BatchNorm training leaves) or, for a faithful round trip, the counters of a given
state_dict: `refinenet_to_torch(refinenet_from_torch(sd), num_batches_tracked=sd) == sd`.

Command line (reads the .pth with asymfusion_jax.torch_pickle, so torch is not needed):

  python -m asymfusion_jax.convert --torch=refinenet.pth --config=configs/nyudv2_refinenet101.py \\
      --out=/tmp/refinenet101_ckpt

  python -m asymfusion_jax.convert --torch=G.pth [--torch_discriminator=D.pth] \\
      --config=configs/taskonomy_shade_depth.py --out=/tmp/translation_ckpt

  python -m asymfusion_jax.convert --inception=pt_inception-2015-12-05-6726825d.pth \
      --out=/tmp/fid_inception

  python -m asymfusion_jax.convert --tf_checkpoint=/path/to/model.ckpt \
      --config=configs/cityscapes_deeplab_xception65_rgb.py --out=/tmp/deeplab_ckpt

Each command writes an orbax checkpoint (asymfusion_jax.variables_io) that
`config.init.checkpoint` can load (or, for --inception, pytorch-fid's FID Inception-v3 for
asymfusion_jax.fid's --weights).
Given a reference RefineNet .pth it holds the full model variables; given a torchvision ResNet
.pth it holds the encoder only, at the full model's paths ({'params': {'backbone': ...},
'batch_stats': {'backbone': ...}}); training initialises the decoder itself. A TF-DeepLab
checkpoint gives the whole DeepLab, or, from the ImageNet backbone checkpoint, its backbone
alone at the same paths. A CEN generator (and discriminator) gives
{'params': {'generator': ..., 'discriminator': ...}, 'batch_stats': {}}, the parameter tree of the
translation training state.
"""

import importlib

# Public name -> the module of this package that defines it.
_EXPORTS = {
    'DATA_PARALLEL_PREFIX': 'keys',
    'NUM_BATCHES_TRACKED': 'keys',
    'resnet_from_torch': 'refinenet',
    'refinenet_from_torch': 'refinenet',
    'refinenet_to_torch': 'refinenet',
    'STANDARD_INCEPTION_SHA256_PREFIX': 'inception',
    'inception_from_torch': 'inception',
    'inception_to_torch': 'inception',
    'load_inception_file': 'inception',
    'convert_inception_file': 'inception',
    'CEN_CONV1_KEY': 'translation',
    'CEN_GENERATOR_KEY': 'translation',
    'unet_from_torch': 'translation',
    'patchgan_from_torch': 'translation',
    'translation_from_torch': 'translation',
    'TF_BACKBONE_SCOPE': 'deeplab',
    'read_tf_checkpoint': 'deeplab',
    'deeplab_from_tf': 'deeplab',
    'convert_tf_file': 'deeplab',
    'convert_file': 'pth',
}
_MODULES = ('keys', 'refinenet', 'inception', 'translation', 'deeplab', 'pth')

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  """Imports the module of a public name (or a submodule) on first access."""
  if name in _MODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
