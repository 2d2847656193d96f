"""Train and evaluation batches of an RGB-X dataset, read by index from its TFDS build.

The module functions are data/base.py's SegmentationDataset members (prepare,
planned_num_examples, num_examples, steps_per_epoch, train_batches, eval_batches, largest_crop,
input_encoding, class_names, palette, image_id; check_config from `checks`), plus `read`,
`check_labels` and the two optional members through which the rest of the program learns this
dataset's own modalities: `modality_names` (the names config.modalities may use) and
`normalisation` (each modality's Modality, for the prediction panels and predict).

The build (`builder`) keeps each sample's files as they are; `read` decodes example i of a split,
maps its labels through config.data.label_offset, and the batches normalise each modality
(`normalisation`). The schedule, augmentation and batch layout are the NYUDv2 pipeline's
(`batching`, `augment`): train batches are a pure function of (config.seed, step), so a resumed run
reads the same batches; evaluation sees every val image once at full resolution, padded at the
bottom and right to the split's largest size (padded pixels: ignore label, normalised input 0).

Batches are dicts of NumPy arrays, modalities ordered as in config.modalities (any subset of
config.data.modality_folders' names, M >= 1):
  train: {'image': float32 (M, B, crop, crop, 3), 'label': int32 (B, crop, crop)}
  eval:  {'image': float32 (M, B, H, W, 3), 'label': int32 (B, H, W), 'mask': bool (B,),
          'name': list of B str (the sample names, '' for padding rows)}
"""

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data import augment
from asymfusion_jax.data import batching
from asymfusion_jax.data import common
from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data.rgbx import layout as layout_lib
from asymfusion_jax.data.rgbx import normalisation as norm_lib
from asymfusion_jax.data.rgbx import checks
from asymfusion_jax.data.rgbx.checks import check_config  # pylint: disable=unused-import
from asymfusion_jax.data.rgbx.layout import LayoutError

DATASET_NAME = 'rgbx'
# The builder's metadata keys (builder.py, which imports TFDS).
MODALITIES, LABEL_FILES, MAX_IMAGE_SIZE = 'modalities', 'label_files', 'max_image_size'


class _Builds(common.IndexedDataset):
  """common.IndexedDataset whose builds are keyed by (tfds_data_dir, layout): one build per
  dataset folder and folder settings, in TFDS_DATA_DIR/rgbx/<Layout.build_name()>/."""

  def builder(self, where):
    tfds_data_dir, layout = where
    common.configure_tensorflow(1)
    from asymfusion_jax.data.rgbx import builder  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
    root = tfds_data_dir or constants.get_default_data_dir()
    return builder.Rgbx(layout=layout, data_dir=str(epath.Path(root) / 'rgbx' /
                                                     layout.build_name()))

  def where(self, config: ml_collections.ConfigDict):
    return config.data.tfds_data_dir, layout_lib.Layout.from_config(config)

  def num_examples(self, config: ml_collections.ConfigDict, split: str) -> int:
    """The number of examples of `split` ('train' or 'val') in the prepared dataset."""
    self._check(config, split)
    return self.prepared_builder(self.where(config)).info.splits[split].num_examples

  def metadata(self, config: ml_collections.ConfigDict) -> dict:
    self._check(config, 'train')
    return self.prepared_builder(self.where(config)).info.metadata

  def reader(self, config: ml_collections.ConfigDict, split: str) -> common.Reader:
    self._check(config, split)
    return self._open(self.where(config), split)


DATASET = _Builds(DATASET_NAME, 'asymfusion_jax.data.rgbx.builder.Rgbx', __name__)
num_examples = DATASET.num_examples
steps_per_epoch = DATASET.steps_per_epoch


def prepare(config: ml_collections.ConfigDict) -> None:
  """Builds the TFDS dataset from config.data.manual_dir, writing synthetic data there first.

  With config.data.synthetic, a folder without the train list gets a synthetic dataset
  (`synthetic`) of the config's modality folders. An existing build is reused while it was made
  from the same files (list files and file sizes) and rebuilt otherwise. Run it on one process
  per file system before the others read. Then checks the labels against the config
  (`check_labels`) and logs where each modality's normalisation comes from.
  """
  layout = layout_lib.Layout.from_config(config)

  def write(manual_dir):
    from asymfusion_jax.data.rgbx import synthetic  # pylint: disable=g-import-not-at-top
    height, width = config.data.synthetic_image_size
    logging.info('Writing a synthetic RGB-X dataset of %d + %d images of %dx%d to %s.',
                 config.data.num_train, config.data.num_val, height, width, manual_dir)
    synthetic.write_dataset(manual_dir, dict(layout.folders), config.data.num_train,
                            config.data.num_val, height, width, label_folder=layout.label_folder,
                            list_files=dict(layout.list_files))

  common.write_synthetic(config, lambda _: _has_source(config), write)
  if common.build(config, DATASET.builder(DATASET.where(config)),
                  lambda _: layout_lib.fingerprint(layout), f'rgbx dataset of {layout.root}',
                  'the dataset folder'):
    DATASET.forget_readers()
  check_labels(config)
  recorded = DATASET.metadata(config)[MODALITIES]
  for name in config.modalities:
    measured = _measured(config, name)
    source = norm_lib.resolve(config, name, measured)[1]
    if source == 'imagenet' and recorded[name].get('dtype') != 'uint8':
      logging.warning('Modality %r is normalised as 8-bit colour (ImageNet), but its files hold '
                      '%s values: set mean and std in config.data.normalisation.%s.', name,
                      recorded[name].get('dtype'), name)
    if measured is not None:
      logging.info('Modality %r is normalised with the statistics of its train split measured '
                   'at build time: mean %s, std %s (config.data.normalisation.%s sets them).',
                   name, _rounded(measured['mean']), _rounded(measured['std']), name)


def _has_source(config: ml_collections.ConfigDict) -> bool:
  layout = layout_lib.Layout.from_config(config)
  return (epath.Path(layout.root) / layout.list_file('train')).exists()


def largest_crop(config: ml_collections.ConfigDict) -> tuple[int, str] | None:
  """(the largest crop_size the planned train images fill, why), or None when their size is
  not known yet (augment.largest_filled_crop of common.planned_image_size)."""
  size = common.planned_image_size(config, lambda _: _has_source(config),
                                   lambda c: DATASET.metadata(c)[MAX_IMAGE_SIZE]['train'])
  if size is None:
    return None
  return augment.largest_filled_crop(size, config.data.scale_range, config.data.min_short_side)


def _rounded(values) -> list[float]:
  return [float(f'{v:.6g}') for v in values]


def planned_num_examples(config: ml_collections.ConfigDict, split: str) -> int | None:
  """The number of examples `prepare` will give `split`, known before anything is written."""
  def count_source(manual_dir):
    del manual_dir
    layout = layout_lib.Layout.from_config(config)
    if (epath.Path(layout.root) / layout.list_file(split)).exists():
      return len(layout_lib.list_lines(layout, split))
    return None
  return common.planned_num_examples(config, split, count_source, num_examples)


# Labels.


def _label_table(config: ml_collections.ConfigDict) -> np.ndarray:
  """int32 (65536,): raw label value -> class, or ignore_label. Raw values below the offset and
  the ignore label itself stay unlabelled; value v >= offset is class v - offset."""
  offset, ignore = int(config.data.label_offset), int(config.data.ignore_label)
  raw = np.arange(65536)
  return np.where((raw >= offset) & (raw != ignore), raw - offset, ignore).astype(np.int32)


def check_labels(config: ml_collections.ConfigDict) -> None:
  """Raises LayoutError if a label of the build maps outside the config's classes.

  Every raw value v must be unlabelled (below config.data.label_offset, or the ignore label) or
  give a class v - offset in [0, config.model.num_classes). The build records each split's raw
  values and the first file holding each, so this decodes no image; it runs against the config,
  not the build, because one build serves configs of different class counts and offsets.
  """
  k, ignore = int(config.model.num_classes), int(config.data.ignore_label)
  offset = int(config.data.label_offset)
  table = _label_table(config)
  recorded = DATASET.metadata(config)[LABEL_FILES]
  for split in DATASET.splits:
    found = {int(value): where for value, where in recorded[split].items()}
    bad = sorted(v for v in found if table[v] != ignore and not 0 <= table[v] < k)
    if bad:
      raise LayoutError(
          f'Label {found[bad[0]]} has the value {bad[0]}, class {table[bad[0]]} with '
          f'config.data.label_offset={offset}; this config has classes 0..{k - 1} '
          f'(config.model.num_classes={k}), so raw values {offset}..{offset + k - 1}, and '
          f'leaves {f"0..{offset - 1} and " if offset else ""}{ignore} unlabelled '
          f'(config.data.ignore_label). Bad values of the {split} split: {bad}.')


# Reading.


def _order(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return layout_lib.Layout.from_config(config).modalities + (layout_lib.LABEL,)


def read(config: ml_collections.ConfigDict, split: str, index: int) -> dict:
  """Example `index` of `split`, decoded: {modality name: its array as stored, (H, W) or
  (H, W, 3), 8/16-bit images as uint8/uint16, anything else float32; 'label': int32 (H, W)
  classes (ignore_label where unlabelled); 'name': the sample's name; 'index': index}."""
  return _decoder(config)(DATASET.reader(config, split)[index])


def _decoder(config: ml_collections.ConfigDict):
  """The function that decodes one record of the build (the files of one sample)."""
  keys, table = _order(config), _label_table(config)

  def decode(record: dict) -> dict:
    ends = np.cumsum(record['sizes'])
    data = record['data'].tobytes()
    out = {'name': record['name'], 'index': int(record['index'])}
    for key, start, end in zip(keys, np.concatenate([[0], ends[:-1]]), ends):
      label = key == layout_lib.LABEL
      array = layout_lib.decode(data[start:end], f'{key} of {record["name"]!r} in the build',
                                label)
      out[key] = table[array] if label else layout_lib.as_float(array)
    return out
  return decode


def _measured(config: ml_collections.ConfigDict, name: str) -> dict | None:
  if not norm_lib.needs_statistics(config, name):
    return None
  try:
    metadata = DATASET.metadata(config)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'Modality {name!r} is normalised with statistics measured when its dataset is built, '
        f'and there is no build ({e}); prepare the dataset, or set mean and std in '
        f'config.data.normalisation.{name}.') from None
  return metadata[MODALITIES][name]


def normalisation(config: ml_collections.ConfigDict) -> dict[str, modality_lib.Modality]:
  """The Modality of each of config.modalities (see `normalisation` module)."""
  return {name: norm_lib.resolve(config, name, _measured(config, name))[0]
          for name in config.modalities}


def input_encoding(config: ml_collections.ConfigDict) -> dict:
  """The export sidecar's inputs: modalities in input order, each one's normalisation (scale,
  mean, std, interpolation, where it came from, channel count, raw pad value), the formula, the
  label convention, class names and palette."""
  try:  # The channel counts, where the build is at hand.
    recorded = DATASET.metadata(config)[MODALITIES]
  except FileNotFoundError:
    recorded = {}
  described = {}
  for name in config.modalities:
    modality, source = norm_lib.resolve(config, name, _measured(config, name))
    described[name] = norm_lib.describe(name, modality, source,
                                         recorded.get(name, {}).get('channels'))
  return {'modalities': list(config.modalities), 'normalisation': described,
          'raw_pad_value': {n: d['raw_pad_value'] for n, d in described.items()},
          'formula': norm_lib.FORMULA, 'label_offset': int(config.data.label_offset),
          'class_names': list(class_names(config) or ()),
          'palette': [list(map(int, c)) for c in config.data.palette]}


def modality_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The modalities config.modalities may name: the keys of config.data.modality_folders
  (a ConfigError when that is not a mapping of distinct folders)."""
  return tuple(checks.folders(config))


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """config.data.class_names, or None when the config names no classes."""
  return tuple(config.data.class_names) or None


def palette(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """uint8 (256, 3): config.data.palette's colour for each class, the prediction panels'
  default colours for the other label values; None when the config gives no palette."""
  if not config.data.palette:
    return None
  from asymfusion_jax.tasks.segmentation import visualize  # pylint: disable=g-import-not-at-top
  colours = visualize.PALETTE.copy()
  colours[:len(config.data.palette)] = np.asarray(config.data.palette, np.uint8)
  return colours


def image_id(name: str) -> str:
  """A sample's name, sub-folders joined by '_', names its prediction files."""
  return name.replace('/', '_')


eval_image_size = common.synthetic_image_size  # None for a real dataset: its build knows.


def predict_io(config: ml_collections.ConfigDict):
  """What `python -m asymfusion_jax.predict` asks of this dataset (prediction.PredictIO)."""
  from asymfusion_jax.data.rgbx import prediction  # pylint: disable=g-import-not-at-top
  return prediction.PredictIO(config)


# Batches.


def _inputs(config: ml_collections.ConfigDict):
  """(modality names, their Modality objects) in config order."""
  names = tuple(config.modalities)
  norms = normalisation(config)
  return names, [norms[name] for name in names]


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """This process's train batches for steps start_step, start_step + 1, ... forever."""
  names, norms = _inputs(config)
  crop = int(config.crop_size)
  scale_range = tuple(float(s) for s in config.data.scale_range)
  min_short_side = int(config.data.min_short_side)
  ignore_label = int(config.data.ignore_label)
  reader, decode = DATASET.reader(config, 'train'), _decoder(config)
  interpolation = {n: m.interpolation for n, m in zip(names, norms)}
  raw_pad = {n: norm_lib.raw_pad_value(m) for n, m in zip(names, norms)}

  def fill(batch, row, index, rng):
    example = decode(reader[index])
    aug = augment.draw_augmentation(rng, *example['label'].shape, crop, scale_range,
                                    min_short_side)
    images, label = augment.apply_augmentation(
        aug, {n: example[n] for n in names}, example['label'], crop, ignore_label,
        interpolation, raw_pad)
    batch['label'][row] = label
    for m, (name, modality) in enumerate(zip(names, norms)):
      batch['image'][m, row] = modality_lib.normalise(modality, images[name])

  return batching.train_batches(config, len(reader),
                                batching.empty_segmentation_batch(len(names), crop), fill,
                                start_step, process_index, process_count)


def eval_batches(config: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every image once at full resolution
  (batching.eval_batches), padded to the split's largest image (which the build records)."""
  names, norms = _inputs(config)
  ignore_label = int(config.data.ignore_label)
  height, width = (int(x) for x in DATASET.metadata(config)[MAX_IMAGE_SIZE]['val'])
  reader, decode = DATASET.reader(config, 'val'), _decoder(config)

  def empty(local):
    return {'image': np.zeros((len(names), local, height, width, 3), np.float32),
            'label': np.full((local, height, width), ignore_label, np.int32),
            'name': [''] * local}

  def fill(batch, row, index):
    example = decode(reader[index])
    h, w = example['label'].shape
    batch['label'][row, :h, :w] = example['label']
    batch['name'][row] = example['name']
    for m, (name, modality) in enumerate(zip(names, norms)):
      batch['image'][m, row, :h, :w] = modality_lib.normalise(modality, example[name])

  return batching.eval_batches(config, len(reader), empty, fill, process_index,
                               process_count, batch_size)

