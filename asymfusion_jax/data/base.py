"""The interface of a dataset: what the training program, evaluation, export and the config
checks ask of the dataset that config.data.name names.

A dataset is a module (or any object) with the members below, registered under its name in
`asymfusion_jax.data.DATASETS`; `asymfusion_jax.data.get(config)` returns it. The three built-in
ones are the packages data/nyudv2/, data/cityscapes/ and data/taskonomy/, each a `layout` (its
files on disk), a TFDS `builder`, a `pipeline` (batches) and a `synthetic` generator, with the
members in its __init__.py. What they share sits beside them in data/ (common.py, batching.py,
workers.py, processes.py, augment.py, modalities.py, manual_builder.py, layout.py, pil_resize.py).

`Dataset` lists what every dataset provides; `SegmentationDataset` what a dataset of the
segmentation task provides besides. The protocols are documentation and the checklist that
`check_interface` (run by `data.get`) holds a dataset to; nothing subclasses them. A
segmentation dataset whose modalities are its own rather than data/modalities.py's table (rgbx)
also has the optional members modality_names(config) (the names config.modalities may use) and
normalisation(config) ({modality: modalities.Modality}); modalities.known and
modalities.of_config ask for them.

Batches are dicts of NumPy arrays in the layout the config's task reads, B being this process's
share of the global batch and M = len(config.modalities):
  segmentation train: {'image': float32 (M, B, crop, crop, 3), 'label': int32 (B, crop, crop)}
  segmentation eval:  {'image': float32 (M, B, H, W, 3), 'label': int32 (B, H, W),
                       'mask': bool (B,), 'name': list of B str ('' for padding rows)}
  translation train:  {'inputs': float32 (M, B, crop, crop, 3), 'target': float32 (B, crop,
                       crop, 3)}
  translation eval:   the same at the evaluation size, with 'mask': bool (B,)
Train batches must be a pure function of (config.seed, step), so that a resumed run reads the
batches it would have read (`batching.train_batches` gives that schedule); evaluation sees every
val example once, padding rows masked out.
"""

from typing import Iterator, Protocol

import ml_collections
import numpy as np

Config = ml_collections.ConfigDict

# The evaluation protocols a segmentation dataset can ask for (SegmentationDataset.EVALUATION):
# - 'single_scale': the model's logits resized (bicubic) to the label size, the argmax scored;
#   the first config.num_prediction_images images drawn as panels (inputs, ground truth, every
#   branch) with class_names and palette.
# - 'tf_deeplab': TF-DeepLab's: the model at config.eval.output_stride, the softmax summed over
#   config.eval.scales and (config.eval.flip) mirrored inputs; eval_step_N.json holds the per-class
#   IoU (class_names) and the confusion matrices; predictions are written as palette PNGs named
#   image_id(name)_BRANCH.png.
EVALUATIONS = ('single_scale', 'tf_deeplab')


class Dataset(Protocol):
  """What every dataset provides."""

  # The config.model.name values whose configs this dataset serves: its input encoding and its
  # evaluation are made for them. The config checks refuse other models with this dataset.
  MODELS: tuple[str, ...]

  def check_config(self, config: Config) -> None:
    """Raises validation.ConfigError naming the first invalid key that only this dataset reads
    (and any key whose valid values this dataset decides, e.g. its number of classes). Reads
    no data and no devices: it runs before a run writes anything."""

  def prepare(self, config: Config) -> None:
    """Makes the data ready to read (config.data.manual_dir, config.data.tfds_data_dir):
    writes the synthetic stand-in when config.data.synthetic asks for it, builds or reuses the
    build, and raises if the data cannot serve the config (e.g. labels out of range). Run on
    one process per file system before the others read."""

  def planned_num_examples(self, config: Config, split: str) -> int | None:
    """The number of examples `prepare` will give `split` ('train' or 'val'), known before
    anything is written; None when it cannot be known (prepare will fail and say why)."""

  def num_examples(self, config: Config, split: str) -> int:
    """The number of examples of `split` in the prepared data."""

  def steps_per_epoch(self, config: Config) -> int:
    """Train steps per epoch: num_examples(config, 'train') // config.batch_size."""

  def train_batches(self, config: Config, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict]:
    """This process's train batches for steps start_step, start_step + 1, ... forever."""

  def eval_batches(self, config: Config, process_index: int = 0, process_count: int = 1,
                   batch_size: int | None = None) -> Iterator[dict]:
    """This process's share of one pass over the val split; batch_size is the global batch
    (default config.eval_batch_size)."""

  def eval_image_size(self, config: Config) -> tuple[int, int] | None:
    """(height, width) of the images evaluation feeds the model, where the config alone says
    it (synthetic data, a fixed evaluation size); None where only the data knows. Export
    sizes its artifact's input by it (else config.crop_size squares)."""

  def input_encoding(self, config: Config) -> dict:
    """JSON-ready description of how the raw files become the model's input, for the export
    sidecar: 'modalities' (the input order) and the normalisation ('normalisation' per
    modality, or 'formula')."""

  def predict_io(self, config: Config):
    """What `python -m asymfusion_jax.predict` needs to read new images of this dataset and
    write predictions in its own convention (data/predict_io.py lists the methods: pairing_key,
    output_stem, network_input, pad_value; for segmentation label_image and colour_image)."""


class SegmentationDataset(Dataset, Protocol):
  """What a segmentation dataset provides besides `Dataset`."""

  EVALUATION: str  # One of EVALUATIONS.

  def class_names(self, config: Config) -> tuple[str, ...] | None:
    """The name of each class, indexed by label, for panels and per-class results; None when
    the dataset does not know them (labels are then shown as ids)."""

  def palette(self, config: Config) -> np.ndarray | None:
    """uint8 (256, 3): the RGB colour of each label value for prediction images (the ignore
    label's black), or None for visualize's default palette."""

  def largest_crop(self, config: Config) -> tuple[int, str] | None:
    """(the largest config.crop_size the planned train images fill, a phrase saying why) before
    anything is written, or None when their size is not known yet (checked again after
    prepare). The config checks refuse a larger crop: it would train on padding."""

  def image_id(self, name: str) -> str:
    """The short id of the eval image whose batch 'name' is `name`, that prediction files are
    named after."""


def members(protocol: type) -> tuple[str, ...]:
  """The names a dataset following `protocol` must have, its bases' included."""
  names = []
  for klass in reversed(protocol.__mro__):
    if klass.__module__ != __name__:  # Protocol, Generic, object.
      continue
    names += [n for n in klass.__dict__.get('__annotations__', {}) if n not in names]
    names += [n for n, v in vars(klass).items()
              if callable(v) and not n.startswith('_') and n not in names]
  return tuple(names)


def check_interface(dataset, name: str, protocol: type = Dataset) -> None:
  """Raises TypeError naming what `dataset`, registered as `name`, lacks of `protocol`."""
  missing = [m for m in members(protocol) if not hasattr(dataset, m)]
  if missing:
    raise TypeError(f'Dataset {name!r} ({getattr(dataset, "__name__", dataset)!r}) lacks '
                    f'{", ".join(missing)} of data.base.{protocol.__name__}.')
  evaluation = getattr(dataset, 'EVALUATION', None)
  if evaluation is not None and evaluation not in EVALUATIONS:
    raise TypeError(f'Dataset {name!r} has EVALUATION={evaluation!r}; expected one of '
                    f'{EVALUATIONS}.')
