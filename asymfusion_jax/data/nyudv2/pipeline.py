"""Train and evaluation batches for NYUDv2 (or the synthetic stand-in), read by index from disk.

The TFDS build is ArrayRecord in list order (`builder`), and the batches read example i of a
split from it (`common.Reader`) when they need it: no split is held in memory, a run starts
without loading one, and each process reads only the rows of its own batches. Worker threads
(`batching`) read, decode and augment the rows of upcoming batches with OpenCV while the caller
trains. TensorFlow is only used to build and read the dataset and is imported lazily, so
importing this module stays cheap.

Train batches are a pure function of (config.seed, global step), following the schedule of
`batching`, so a run resumes by asking for the batches from its saved step on. Each row is the
authors' augmentation (`augment`) of its example.

Batches are dicts of NumPy arrays, modalities ordered as in `config.modalities`:
  train: {'image': float32 (M, B, crop, crop, 3), 'label': int32 (B, crop, crop)}
  eval:  {'image': float32 (M, B, H, W, 3), 'label': int32 (B, H, W), 'mask': bool (B,),
          'name': list of B str (the rgb file of the list, '' for padding rows)}
where B is the per-process share of the global batch size.
"""

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data import augment
from asymfusion_jax.data import batching
from asymfusion_jax.data import common
from asymfusion_jax.data import modalities
from asymfusion_jax.data.nyudv2 import layout
from asymfusion_jax.data.nyudv2 import synthetic

DATASET_NAME = 'nyudv2'


DATASET = common.IndexedDataset(DATASET_NAME, 'asymfusion_jax.data.nyudv2.builder.Nyudv2',
                                __name__)
# The build's example counts, and example `index` of a split read and decoded from disk:
# {'rgb': uint8 (H, W, 3), 'depth': uint16 (H, W), 'label': uint8 (H, W), 'name': the rgb file
# of the list line, 'index': index}.
num_examples = DATASET.num_examples
steps_per_epoch = DATASET.steps_per_epoch
read = DATASET.read


def prepare(config: ml_collections.ConfigDict) -> None:
  """Builds the TFDS dataset from `config.data.manual_dir`, writing synthetic data there first.

  With `config.data.synthetic`, a manual folder without train.txt gets a synthetic dataset of
  num_train / num_val images of `config.data.synthetic_image_size`. An existing build is reused
  when it was made from the same manual folder contents (list files and file sizes) and rebuilt
  otherwise; with an empty manual_dir an existing build is used as it is. Run it on one process
  per file system before the others read. Then checks the masks against the config
  (`check_labels`).
  """
  def write(manual_dir):
    height, width = config.data.synthetic_image_size
    logging.info('Writing a synthetic dataset of %d + %d images of %dx%d to %s.',
                 config.data.num_train, config.data.num_val, height, width, manual_dir)
    synthetic.write_dataset(manual_dir, config.data.num_train, config.data.num_val, height, width)

  common.write_synthetic(config, _has_source, write)
  if common.build(config, DATASET.builder(config.data.tfds_data_dir), layout.fingerprint,
                  f'{DATASET_NAME} dataset',
                  'the folder with rgb/, depth/, masks/, train.txt and val.txt'):
    DATASET.forget_readers()
  check_labels(config)


def _has_source(manual_dir: str) -> bool:
  return (epath.Path(manual_dir) / layout.LIST_FILES['train']).exists()


def largest_crop(config: ml_collections.ConfigDict) -> tuple[int, str] | None:
  """(the largest crop_size the train images fill, why) for the planned train images
  (common.planned_image_size, augment.largest_filled_crop); None when their size is not known
  yet."""
  size = common.planned_image_size(
      config, _has_source, lambda c: DATASET.metadata(c)[layout.MAX_IMAGE_SIZE]['train'])
  if size is None:
    return None
  return augment.largest_filled_crop(size, config.data.scale_range, config.data.min_short_side)


def check_labels(config: ml_collections.ConfigDict) -> None:
  """Raises LayoutError if a mask of the prepared dataset holds a label the config cannot use.

  Every label must be in [0, config.model.num_classes) or equal config.data.ignore_label:
  training drops other labels silently (as the metrics do), so a 5-class model would train on
  masks holding a 7 as if those pixels were unlabelled. The check runs against the config, not
  the build, because one build serves configs of different class counts. The build records the
  label values of each split and the first mask holding each, so this decodes no image.
  """
  k, ignore = int(config.model.num_classes), int(config.data.ignore_label)
  recorded = DATASET.metadata(config)[layout.LABEL_FILES]
  for split in DATASET.splits:
    found = {int(value): where for value, where in recorded[split].items()}
    bad = sorted(v for v in found if not (0 <= v < k or v == ignore))
    if bad:
      raise layout.LayoutError(
          f'{found[bad[0]]} has label {bad[0]}; this config allows 0..{k - 1} '
          f'(config.model.num_classes={k}) and the ignore label {ignore} '
          f'(config.data.ignore_label). Out-of-range labels of the {split} split: {bad}.')


def planned_num_examples(config: ml_collections.ConfigDict, split: str) -> int | None:
  """The number of examples `prepare` will give `split`, known before anything is written:
  the list file's lines, config.data.num_<split> for synthetic data, or the prepared
  dataset's (common.planned_num_examples)."""
  def count_source(manual_dir):
    if (epath.Path(manual_dir) / layout.LIST_FILES[split]).exists():
      return len(layout.read_list(manual_dir, split))
    return None
  return common.planned_num_examples(config, split, count_source, num_examples)


def _modality_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  for name in config.modalities:
    modalities.get(name)  # An unknown modality fails here, naming the registered ones.
  return tuple(config.modalities)


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """This process's train batches for steps start_step, start_step + 1, ... forever."""
  names = _modality_names(config)
  crop = int(config.crop_size)
  scale_range = tuple(float(s) for s in config.data.scale_range)
  min_short_side = int(config.data.min_short_side)
  ignore_label = int(config.data.ignore_label)
  reader = DATASET.reader(config, 'train')

  empty = batching.empty_segmentation_batch(len(names), crop)

  def fill(batch, row, index, rng):
    example = reader[index]
    aug = augment.draw_augmentation(rng, *example['label'].shape, crop, scale_range,
                                    min_short_side)
    images, label = augment.apply_augmentation(aug, {m: example[m] for m in names},
                                               example['label'], crop, ignore_label)
    batch['label'][row] = label
    for m, name in enumerate(names):
      batch['image'][m, row] = modalities.normalise(name, images[name])

  return batching.train_batches(config, len(reader), empty, fill, start_step,
                                process_index, process_count)


def eval_batches(config: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every image once at full resolution.

  Global batch k holds val examples [k * B, (k + 1) * B) with B = batch_size (default
  config.eval_batch_size); the last one is filled up with padding examples (mask False, label all
  ignore_label). Images are padded at the bottom and right to the largest size in the split (which
  the build records), so every batch has one shape and jit compiles once; padded pixels get the
  ignore label and the normalised pad value.
  """
  names = _modality_names(config)
  ignore_label = int(config.data.ignore_label)
  height, width = (int(x) for x in DATASET.metadata(config)[layout.MAX_IMAGE_SIZE]['val'])
  reader = DATASET.reader(config, 'val')
  pads = [modalities.normalised_pad_value(name) for name in names]

  def empty(local):
    image = np.empty((len(names), local, height, width, 3), np.float32)
    for m, pad in enumerate(pads):
      image[m] = pad
    return {'image': image, 'label': np.full((local, height, width), ignore_label, np.int32),
            'name': [''] * local}

  def fill(batch, row, index):
    example = reader[index]
    h, w = example['label'].shape
    batch['label'][row, :h, :w] = example['label']
    batch['name'][row] = example['name']
    for m, name in enumerate(names):
      batch['image'][m, row, :h, :w] = modalities.normalise(name, example[name])

  return batching.eval_batches(config, len(reader), empty, fill, process_index,
                               process_count, batch_size)
