"""Input data: one package per dataset behind one interface (`base`), in one registry.

  nyudv2/      NYUDv2 RGB-D segmentation (and its synthetic stand-in)
  cityscapes/  Cityscapes RGB-D segmentation
  taskonomy/   Taskonomy domains for image translation
  rgbx/        your own multimodal segmentation data in the RGB-X layout (any modalities)
each with its `layout` (files on disk), TFDS `builder`, `pipeline` (batches) and `synthetic`
generator; what they share (reading a build by index, batching, workers, augmentation, modality
encoding, layout helpers) sits beside them. `get(config)` gives the dataset of
config.data.name.

Importing this package imports nothing heavy: a dataset is imported when first asked for, and
TensorFlow only by the functions that build or read a TFDS dataset.
"""

import importlib

# config.data.name -> the dataset: the module path of a package with data/base.py's members
# (imported on first use), or such an object itself. A new dataset is a package and a line here.
DATASETS = {
    'nyudv2': 'asymfusion_jax.data.nyudv2',
    'cityscapes': 'asymfusion_jax.data.cityscapes',
    'taskonomy': 'asymfusion_jax.data.taskonomy',
    'rgbx': 'asymfusion_jax.data.rgbx',
}


def get(config_or_name):
  """The dataset (data/base.py's interface) of a config's data.name, or of a name.

  An unknown name is a validation.ConfigError listing the known ones.
  """
  # pylint: disable=g-import-not-at-top
  from asymfusion_jax.data import base
  name = config_or_name if isinstance(config_or_name, str) else config_or_name.data.name
  if name not in DATASETS:
    from asymfusion_jax import validation  # Imports this package: not at the top.
    raise validation.ConfigError(f'config.data.name={name!r} must be one of {sorted(DATASETS)}')
  entry = DATASETS[name]
  dataset = importlib.import_module(entry) if isinstance(entry, str) else entry
  base.check_interface(dataset, name)
  return dataset


def for_model(model_name: str) -> list[str]:
  """The names of the registered datasets that serve config.model.name=`model_name`."""
  return sorted(name for name in DATASETS if model_name in get(name).MODELS)
