"""Train and evaluation batches for Cityscapes RGB-D, read by index from the TFDS build.

Cityscapes decodes to about 35 GB, so no split is held in memory: the build is ArrayRecord in
list order (`cityscapes_builder`) and `as_data_source` reads example i from disk. Each process
reads only its own rows of each batch; worker threads (`workers.run_ahead`) read, decode and
augment them while the caller trains, with `pipeline.PREFETCH` batches ahead, so memory is a
few batches whatever the dataset size. The dataset's random access is TFDS's own (ArrayRecord,
which TFDS installs on Linux): no loader library is needed beyond it.

The schedule is the NYUDv2 pipeline's (`pipeline.train_schedule`): the batch of step t is a
pure function of (config.seed, t), so a resumed run reads the same batches:
- Epoch e visits the examples in the order np.random.default_rng([seed, 0, e]).permutation(N),
  N // batch_size steps of batch_size (global) examples each.
- The example at position p of epoch e is augmented with np.random.default_rng([seed, 1, e, p]).
- Process i of n takes rows [i * B / n, (i + 1) * B / n) of each global batch.

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
  eval:  {'image': float32 (M, B, H, W, 3), 'label': int32 (B, H, W), 'mask': bool (B,)}
"""

import functools
import itertools
import math

from absl import logging
import cv2
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data import cityscapes
from asymfusion_jax.data import common
from asymfusion_jax.data import pipeline
from asymfusion_jax.data import synthetic_cityscapes
from asymfusion_jax.data import workers

DATASET_NAME = 'cityscapes'
SPLITS = cityscapes.SPLITS


def _builder(tfds_data_dir: str):
  pipeline.configure_tensorflow(1)
  from asymfusion_jax.data import cityscapes_builder  # pylint: disable=g-import-not-at-top
  return cityscapes_builder.CityscapesRgbd(data_dir=tfds_data_dir or None)


def _prepared_builder(tfds_data_dir: str):
  builder = _builder(tfds_data_dir)
  if not pipeline.is_prepared(builder):
    raise FileNotFoundError(f'No prepared {DATASET_NAME} dataset in {builder.data_dir_root}; run '
                            'asymfusion_jax.data.cityscapes_pipeline.prepare(config) first.')
  return builder


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
  manual_dir = config.data.manual_dir
  if config.data.synthetic:
    if not manual_dir:
      raise ValueError('config.data.synthetic needs config.data.manual_dir: the folder to write '
                       'the synthetic dataset to.')
    if not _has_images(manual_dir):
      height, width = config.data.synthetic_image_size
      logging.info('Writing a synthetic Cityscapes set of %d + %d scenes of %dx%d to %s.',
                   config.data.num_train, config.data.num_val, height, width, manual_dir)
      synthetic_cityscapes.write_cityscapes(manual_dir, int(config.data.num_train),
                                            int(config.data.num_val), int(height), int(width))

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder(config.data.tfds_data_dir)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if pipeline.is_prepared(builder):
    if not manual_dir:
      return
    if builder.info.metadata.get('fingerprint') == cityscapes.fingerprint(manual_dir):
      return
    logging.warning('The dataset in %s was built from other files than those now in %s; '
                    'rebuilding it.', builder.data_dir, manual_dir)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Overwrites the prepared dataset.
  elif not manual_dir:
    raise ValueError(f'No prepared {DATASET_NAME} dataset in {builder.data_dir_root}; set '
                     'config.data.manual_dir to the Cityscapes folder (leftImg8bit/, '
                     'disparity/, gtFine/ or their *_trainvaltest.zip archives).')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode))
  _source.cache_clear()
  common.warn_about_split_sizes(config, builder)


def planned_num_examples(config: ml_collections.ConfigDict, split: str) -> int | None:
  """The number of examples `prepare` will give `split`, known before anything is written:
  the images in manual_dir, config.data.num_<split> for synthetic data, or the prepared
  dataset's (common.planned_num_examples)."""
  def count_source(manual_dir):
    return len(cityscapes.Files(manual_dir).list(split)) if _has_images(manual_dir) else None
  return common.planned_num_examples(config, split, count_source, num_examples)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  return _prepared_builder(config.data.tfds_data_dir).info.splits[split].num_examples


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """Train steps per epoch: N // global batch size (the remainder is dropped each epoch)."""
  return num_examples(config, 'train') // config.batch_size


@functools.lru_cache(maxsize=4)
def _source(tfds_data_dir: str, split: str):
  """The random-access data source of `split`; reads nothing until indexed."""
  return _prepared_builder(tfds_data_dir).as_data_source(split)


def read(config: ml_collections.ConfigDict, split: str, index: int) -> dict[str, np.ndarray]:
  """Example `index` of `split`: {'rgb': uint8 (H, W, 3), 'disparity': uint16 (H, W),
  'label': uint8 (H, W), 'name': str}, read and decoded from disk."""
  example = _source(config.data.tfds_data_dir, split)[index]
  if int(example['index']) != index:
    raise ValueError(f'Record {index} of the {split} split holds example {example["index"]}; '
                     'the build is not in list order: delete it and prepare again.')
  name = example['name']
  return {'rgb': example['rgb'], 'disparity': example['disparity'][..., 0],
          'label': example['label'][..., 0],
          'name': name.decode() if isinstance(name, bytes) else str(name)}


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
  local = pipeline.local_batch_size(config.batch_size, process_index, process_count,
                                    'batch_size')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  names = tuple(config.modalities)
  crop, ignore_label = int(config.crop_size), int(config.data.ignore_label)
  choices = scales(config.data.scale_range, float(config.data.scale_step))
  seed, global_batch = int(config.seed), int(config.batch_size)
  n = num_examples(config, 'train')
  pipeline.train_schedule(seed, 0, global_batch, n)  # Fails now, not in the first next().

  def fill(batch, row, index, key):
    example = read(config, 'train', index)
    draw = draw_augmentation(np.random.default_rng(key), *example['label'].shape, crop, choices)
    images, label = apply_augmentation(draw, example, names, crop, ignore_label)
    batch['label'][row] = label
    for m, name in enumerate(names):
      batch['image'][m, row] = images[name]

  def plan(step):
    rows = pipeline.train_schedule(seed, step, global_batch, n)[process_index * local:][:local]
    batch = {'image': np.empty((len(names), local, crop, crop, 3), np.float32),
             'label': np.empty((local, crop, crop), np.int32)}
    return batch, [functools.partial(fill, batch, j, *row) for j, row in enumerate(rows)]

  return workers.run_ahead(map(plan, itertools.count(start_step)), int(config.data.num_workers),
                           pipeline.PREFETCH)


def eval_batches(config: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every image once at full resolution.

  Global batch k holds val examples [k * B, (k + 1) * B) (B = batch_size, default
  config.eval_batch_size); the last one is filled up with padding rows (mask False, labels 255).
  Every val image must have the size of the first (1024x2048 in Cityscapes): one shape, one
  compilation. Batches carry the images' names ('name', a list of str, '' for padding rows).
  """
  global_batch = int(config.eval_batch_size if batch_size is None else batch_size)
  local = pipeline.local_batch_size(global_batch, process_index, process_count,
                                    'eval batch size')
  names = tuple(config.modalities)
  ignore_label = int(config.data.ignore_label)
  n = num_examples(config, 'val')
  height, width = read(config, 'val', 0)['label'].shape

  def fill(batch, row, index):
    example = read(config, 'val', index)
    if example['label'].shape != (height, width):
      raise ValueError(f'Val image {example["name"]} is {example["label"].shape[0]}x'
                       f'{example["label"].shape[1]}; evaluation needs every val image at the '
                       f'size of the first, {height}x{width}.')
    batch['label'][row] = example['label']
    batch['name'][row] = example['name']
    for m, name in enumerate(names):
      batch['image'][m, row] = cityscapes.network_input(name, example[cityscapes.raw_key(name)])

  def plan(k):
    batch = {'image': np.zeros((len(names), local, height, width, 3), np.float32),
             'label': np.full((local, height, width), ignore_label, np.int32),
             'mask': np.zeros((local,), bool), 'name': [''] * local}
    tasks = []
    for row in range(local):
      index = k * global_batch + process_index * local + row
      if index < n:
        batch['mask'][row] = True
        tasks.append(functools.partial(fill, batch, row, index))
    return batch, tasks

  return workers.run_ahead(map(plan, range(math.ceil(n / global_batch))),
                           int(config.data.num_workers), pipeline.PREFETCH)
