"""Input data: the NYUDv2, Cityscapes and Taskonomy TFDS builders, synthetic stand-ins and the
pipelines.

Importing this package imports nothing heavy; TensorFlow is only loaded by the functions that
build or read a TFDS dataset.
"""

# config.data.name of each segmentation dataset.
SEGMENTATION_DATASETS = ('nyudv2', 'cityscapes', 'rgbx')


def segmentation_pipeline(config):
  """The pipeline module of a segmentation config's dataset (config.data.name).

  Both modules have the same functions: prepare, planned_num_examples, num_examples,
  steps_per_epoch, read, train_batches and eval_batches. Both read examples by index from an
  ArrayRecord build (`common.Reader`) and batch them through `batching`; they differ in the
  files they build from, the augmentation, the input encoding and the evaluation shape (NYUDv2
  pads val images to the largest, which its build records; Cityscapes requires one size, that
  of its first val image).
  """
  # pylint: disable=g-import-not-at-top
  name = config.data.name
  if name == 'cityscapes':
    from asymfusion_jax.data import cityscapes_pipeline
    return cityscapes_pipeline
  if name == 'nyudv2':
    from asymfusion_jax.data import pipeline
    return pipeline
  if name == 'rgbx':  # Any modalities in the RGB-X layout; the package is its pipeline.
    from asymfusion_jax.data import rgbx
    return rgbx
  raise ValueError(f'config.data.name={name!r} is not a segmentation dataset; choose one of '
                   f'{SEGMENTATION_DATASETS}')


def dataset_function(config, name: str):
  """The function `name` of a segmentation config's dataset, or None where the dataset has none.

  For the hooks only some datasets define (rgbx): check_config (its own keys and modalities),
  normalisation (its own Modality per modality), input_encoding (the export sidecar's inputs),
  class_names and palette. Configs of other tasks or unknown datasets get None.
  """
  if config.get('data') is None or config.data.get('name') not in SEGMENTATION_DATASETS:
    return None
  return getattr(segmentation_pipeline(config), name, None)
