"""Train and evaluation batches for Cityscapes RGB-D, read by index from the TFDS build.

Cityscapes decodes to about 35 GB, so no split is held in memory: the build is ArrayRecord in
list order (`builder`) and `common.Reader` reads example i from disk, as NYUDv2's
pipeline does. Each process reads only its own rows of each batch; worker threads (`batching`)
read, decode and augment them while the caller trains, with `batching.PREFETCH` batches ahead,
so memory is a few batches whatever the dataset size. The dataset's random access is TFDS's own
(ArrayRecord, which TFDS installs on Linux): no loader library is needed beyond it.

The schedule is `batching`'s: the batch of step t is a pure function of (config.seed, t), so a
resumed run reads the same batches.

Train augmentation (TF-DeepLab's, docs/method.md section 13), one draw for every modality and
the label: a scale s uniform among low, low + step, ..., high (config.data.scale_range,
config.data.scale_step), resize to (int(H s), int(W s)) (RGB bilinear, disparity and label
nearest: no disparity is invented across object edges), pad at the bottom and right to at least
crop x crop (RGB with the mean pixel, disparity as invalid, label 255), a random crop x crop
window, then a horizontal flip with probability 1/2. Draw order: scale, top, left, flip.
The scaled image is never formed (at s = 2 that would cost more than decoding): each crop pixel
samples the source through cv2.warpAffine with cv2.resize's half-pixel-centred map
(x_source = (x_scaled + 0.5) / s - 0.5) and its replicated edges; crop pixels beyond the scaled
image's int(H s) x int(W s) extent are then set to the padding.

Batches (modalities ordered as config.modalities, 'rgb' and 'depth'):
  train: {'image': float32 (M, B, crop, crop, 3), 'label': int32 (B, crop, crop)}
  eval:  {'image': float32 (M, B, H, W, 3), 'label': int32 (B, H, W), 'mask': bool (B,),
          'name': list of B str ('' for padding rows)}
"""


from absl import logging
import cv2
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data import batching
from asymfusion_jax.data import common
from asymfusion_jax.data.cityscapes import layout as cityscapes
from asymfusion_jax.data.cityscapes import synthetic as synthetic_cityscapes

DATASET_NAME = 'cityscapes'


DATASET = common.IndexedDataset(DATASET_NAME,
                                'asymfusion_jax.data.cityscapes.builder.CityscapesRgbd', __name__)
# The build's example counts, and example `index` of a split read and decoded from disk:
# {'rgb': uint8 (H, W, 3), 'disparity': uint16 (H, W), 'label': uint8 (H, W), 'name': str,
# 'index': index}.
num_examples = DATASET.num_examples
steps_per_epoch = DATASET.steps_per_epoch
read = DATASET.read


def _has_images(manual_dir: str) -> bool:
  root = epath.Path(manual_dir)
  return (root / 'leftImg8bit').is_dir() or (root / cityscapes.ARCHIVES['leftImg8bit']).exists()


def prepare(config: ml_collections.ConfigDict) -> None:
  """Builds the TFDS dataset from config.data.manual_dir (synthetic scenes written there first).

  With config.data.synthetic, a manual folder without leftImg8bit/ first gets num_train +
  num_val synthetic scenes of synthetic_image_size. An existing build is reused when it was made
  from the same files (paths and sizes) and rebuilt otherwise; with an empty manual_dir an
  existing build is used as it is. Run it on one process per file system before the others read.
  """
  def write(manual_dir):
    height, width = config.data.synthetic_image_size
    logging.info('Writing a synthetic Cityscapes set of %d + %d scenes of %dx%d to %s.',
                 config.data.num_train, config.data.num_val, height, width, manual_dir)
    synthetic_cityscapes.write_cityscapes(manual_dir, int(config.data.num_train),
                                          int(config.data.num_val), int(height), int(width))

  common.write_synthetic(config, _has_images, write)
  if common.build(config, DATASET.builder(config.data.tfds_data_dir), cityscapes.fingerprint,
                  f'{DATASET_NAME} dataset', 'the Cityscapes folder (leftImg8bit/, disparity/, '
                  'gtFine/ or their *_trainvaltest.zip archives)'):
    DATASET.forget_readers()


def planned_num_examples(config: ml_collections.ConfigDict, split: str) -> int | None:
  """The number of examples `prepare` will give `split`, known before anything is written:
  the images in manual_dir, config.data.num_<split> for synthetic data, or the prepared
  dataset's (common.planned_num_examples)."""
  def count_source(manual_dir):
    return len(cityscapes.Files(manual_dir).list(split)) if _has_images(manual_dir) else None
  return common.planned_num_examples(config, split, count_source, num_examples)


def largest_crop(config: ml_collections.ConfigDict) -> tuple[int, str] | None:
  """(the largest crop_size the train images fill, why) for the planned train images
  (common.planned_image_size: Cityscapes images share one size, that of the first); None when
  their size is not known yet. A larger crop is padding in every crop (apply_augmentation)."""
  size = common.planned_image_size(config, _has_images,
                                   lambda c: read(c, 'train', 0)['label'].shape[:2])
  if size is None:
    return None
  high = float(scales(config.data.scale_range, config.data.scale_step).max())
  short = int(min(size) * high)
  return short, (f'the {size[0]}x{size[1]} train images have a short side of {short} pixels at '
                 f'the largest scale {high:g} of config.data.scale_range')


def scales(scale_range, scale_step: float) -> np.ndarray:
  """The scales low, low + step, ..., high of TF-DeepLab's random scaling (step 0: low only)."""
  low, high = float(scale_range[0]), float(scale_range[1])
  if scale_step <= 0 or high <= low:
    return np.asarray([low])
  count = int(round((high - low) / scale_step)) + 1
  return low + scale_step * np.arange(count)


def draw_augmentation(rng: np.random.Generator, height: int, width: int, crop_size: int,
                      scale_choices: np.ndarray) -> tuple[float, tuple[int, int], int, int, bool]:
  """(scale, scaled (height, width), top, left, flip) for a height x width example."""
  scale = float(scale_choices[rng.integers(len(scale_choices))])
  scaled = (int(height * scale), int(width * scale))
  top = int(rng.integers(0, max(scaled[0], crop_size) - crop_size + 1))
  left = int(rng.integers(0, max(scaled[1], crop_size) - crop_size + 1))
  return scale, scaled, top, left, bool(rng.integers(2))


def _warp(image: np.ndarray, scale: float, top: int, left: int, crop_size: int,
          interpolation: int) -> np.ndarray:
  """The crop x crop window at (top, left) of `image` resized by `scale` (see the module doc)."""
  shift = 0.5 * scale - 0.5
  matrix = np.asarray([[scale, 0.0, shift - left], [0.0, scale, shift - top]], np.float64)
  return cv2.warpAffine(image, matrix, (crop_size, crop_size), flags=interpolation,
                        borderMode=cv2.BORDER_REPLICATE)


def apply_augmentation(draw, example: dict, names, crop_size: int, ignore_label: int):
  """The crop of every modality ({name: float32 (crop, crop, 3)}) and of the label (int32)."""
  scale, scaled, top, left, flip = draw
  rows, cols = scaled[0] - top, scaled[1] - left  # The crop's pixels inside the scaled image.
  out = {}
  for name in names:
    interpolation = cv2.INTER_LINEAR if name == 'rgb' else cv2.INTER_NEAREST
    warped = _warp(example[cityscapes.raw_key(name)], scale, top, left, crop_size, interpolation)
    canvas = cityscapes.network_input(name, warped)
    canvas[rows:] = canvas[:, cols:] = cityscapes.pad_value(name)
    out[name] = canvas[:, ::-1] if flip else canvas
  label = _warp(example['label'], scale, top, left, crop_size, cv2.INTER_NEAREST).astype(np.int32)
  label[rows:] = label[:, cols:] = ignore_label
  return out, (label[:, ::-1] if flip else label)


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """This process's train batches for steps start_step, start_step + 1, ... forever."""
  names = tuple(config.modalities)
  crop, ignore_label = int(config.crop_size), int(config.data.ignore_label)
  choices = scales(config.data.scale_range, float(config.data.scale_step))
  reader = DATASET.reader(config, 'train')

  empty = batching.empty_segmentation_batch(len(names), crop)

  def fill(batch, row, index, rng):
    example = reader[index]
    draw = draw_augmentation(rng, *example['label'].shape, crop, choices)
    images, label = apply_augmentation(draw, example, names, crop, ignore_label)
    batch['label'][row] = label
    for m, name in enumerate(names):
      batch['image'][m, row] = images[name]

  return batching.train_batches(config, len(reader), empty, fill, start_step,
                                process_index, process_count)


def eval_batches(config: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every image once at full resolution.

  Global batch k holds val examples [k * B, (k + 1) * B) (B = batch_size, default
  config.eval_batch_size); the last one is filled up with padding rows (mask False, labels 255,
  images the pad value). Every val image must have the size of the first (1024x2048 in
  Cityscapes): one shape, one compilation. Batches carry the images' names ('name', a list of
  str, '' for padding rows).
  """
  names = tuple(config.modalities)
  ignore_label = int(config.data.ignore_label)
  reader = DATASET.reader(config, 'val')
  height, width = reader[0]['label'].shape

  def empty(local):
    image = np.empty((len(names), local, height, width, 3), np.float32)
    for m, name in enumerate(names):
      image[m] = cityscapes.pad_value(name)
    return {'image': image, 'label': np.full((local, height, width), ignore_label, np.int32),
            'name': [''] * local}

  def fill(batch, row, index):
    example = reader[index]
    if example['label'].shape != (height, width):
      raise ValueError(f'Val image {example["name"]} is {example["label"].shape[0]}x'
                       f'{example["label"].shape[1]}; evaluation needs every val image at the '
                       f'size of the first, {height}x{width}.')
    batch['label'][row] = example['label']
    batch['name'][row] = example['name']
    for m, name in enumerate(names):
      batch['image'][m, row] = cityscapes.network_input(name, example[cityscapes.raw_key(name)])

  return batching.eval_batches(config, len(reader), empty, fill, process_index,
                               process_count, batch_size)
