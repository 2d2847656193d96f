"""Train and evaluation batches for image translation (Taskonomy domains -> a target domain).

The dataset is the TFDS build of `builder` for the domains the config names
(config.modalities, the inputs in order, and config.target), read from `config.data.manual_dir`
in the layout of `layout`. Every image is resized once when its split is loaded into memory,
with PIL's antialiased bilinear filter (`pil_resize`): train images to
load_size x load_size, val images to crop_size x crop_size. The resize does not depend on the
step, so doing it once gives the same batches as doing it per step, at a fraction of the cost.
This is why Taskonomy, unlike NYUDv2 and Cityscapes, holds its splits in memory rather than
reading by index: what it keeps is the resized images (286x286 by default, not the 512x512
files), and reading by index would redo the antialiased resize of every domain at every step.

Train batches are a pure function of (config.seed, global step), with the schedule of the
input pipelines (`batching.train_schedule`): epoch e visits the examples in the order
np.random.default_rng([seed, 0, e]).permutation(N), N // batch_size steps per epoch; the example
at position p of epoch e is augmented with np.random.default_rng([seed, 1, e, p]), which draws
(`draw_augmentation`) the crop's left offset x, then its top offset y, each uniform in
[0, load_size - crop_size], then a horizontal flip with probability 1/2. The one crop and flip
apply to every domain of the example. Process i of n takes rows [i * B / n, (i + 1) * B / n) of
each global batch. Pixels are mapped to [-1, 1] as `x / 127.5 - 1`.

Batches are dicts of NumPy arrays, inputs ordered as in config.modalities:
  train: {'inputs': float32 (M, B, crop, crop, 3), 'target': float32 (B, crop, crop, 3)}
  eval:  {'inputs': float32 (M, B, S, S, 3), 'target': float32 (B, S, S, 3), 'mask': bool (B,)}
with B this process's share of the global batch and S = crop_size. TensorFlow is imported only
by the functions that build or read the dataset.
"""

import concurrent.futures
import dataclasses
import functools
import itertools

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data import batching
from asymfusion_jax.data import common
from asymfusion_jax.data import pil_resize
from asymfusion_jax.data.taskonomy import layout as taskonomy
from asymfusion_jax.data.taskonomy import synthetic

SPLITS = ('train', 'val')
DATASET_NAME = 'taskonomy'
# Examples decoded and resized together while a split loads: bounds the memory of raw images.
_LOAD_CHUNK = 64


def domains(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config's domains: its inputs (config.modalities, in order), then config.target."""
  inputs, target = tuple(config.modalities), config.target
  if not inputs:
    raise ValueError('config.modalities names no input domain.')
  if len(set(inputs)) != len(inputs) or target in inputs:
    raise ValueError(f'The input domains {inputs} (config.modalities) and the target {target!r} '
                     '(config.target) must all differ.')
  for name in (*inputs, target):
    taskonomy.check_domain(name)
  return (*inputs, target)


def _builder(tfds_data_dir: str, names: tuple[str, ...], num_threads: int):
  common.configure_tensorflow(max(num_threads, 1))
  # pylint: disable-next=g-import-not-at-top
  from asymfusion_jax.data.taskonomy import builder as taskonomy_builder
  return taskonomy_builder.builder_class(names)(data_dir=tfds_data_dir or None,
                                              config=taskonomy_builder.config_name(names))


def _builder_args(config: ml_collections.ConfigDict) -> tuple[str, tuple[str, ...], int]:
  return config.data.tfds_data_dir, tuple(sorted(domains(config))), int(config.data.num_workers)


def _prepared_builder(tfds_data_dir: str, names: tuple[str, ...], num_threads: int):
  builder = _builder(tfds_data_dir, names, num_threads)
  if not common.is_prepared(builder):
    raise FileNotFoundError(
        f'No prepared {DATASET_NAME} dataset of the domains {", ".join(names)} (version '
        f'{builder.version}) in '
        f'{builder.data_dir_root}; run asymfusion_jax.data.taskonomy.prepare(config) '
        'first.')
  return builder


def synthetic_size(config: ml_collections.ConfigDict) -> int:
  """config.data.synthetic_image_size as one side: an int, or a (height, width) pair if square."""
  size = config.data.synthetic_image_size
  if isinstance(size, (tuple, list)):
    if len(size) != 2 or size[0] != size[1]:
      raise ValueError(f'config.data.synthetic_image_size={size!r}: synthetic Taskonomy scenes '
                       'are square; give one side.')
    size = size[0]
  return int(size)


def prepare(config: ml_collections.ConfigDict) -> None:
  """Builds the TFDS dataset of the config's domains from `config.data.manual_dir`.

  With `config.data.synthetic`, a manual folder without train.txt first gets a synthetic set
  (`synthetic.write_taskonomy`) of num_train / num_val scenes of synthetic_image_size. An existing
  build is reused when it was made from the same manual folder contents (list files and file
  sizes of these domains) and rebuilt otherwise; with an empty manual_dir an existing build is
  used as it is. Run it on one process per file system before the others read.
  """
  names = domains(config)
  if config.data.synthetic:
    missing = sorted(set(names) - set(synthetic.DOMAINS))
    if missing:
      raise ValueError(f'The synthetic Taskonomy set has no domain {", ".join(missing)}; it '
                       f'renders {", ".join(synthetic.DOMAINS)}.')

  def write(manual_dir):
    size = synthetic_size(config)
    logging.info('Writing a synthetic Taskonomy set of %d + %d scenes of %dx%d to %s.',
                 config.data.num_train, config.data.num_val, size, size, manual_dir)
    synthetic.write_taskonomy(manual_dir, int(config.data.num_train), int(config.data.num_val),
                              size)

  common.write_synthetic(
      config, lambda manual_dir: (epath.Path(manual_dir) / taskonomy.LIST_FILES['train']).exists(),
      write)
  if common.build(config, _builder(*_builder_args(config)),
                  lambda manual_dir: taskonomy.fingerprint(manual_dir, names),
                  f'{DATASET_NAME} dataset of the domains {", ".join(names)}',
                  'the Taskonomy folder (one folder per domain, train.txt and val.txt)'):
    _load_split.cache_clear()


def planned_num_examples(config: ml_collections.ConfigDict, split: str) -> int | None:
  """The number of examples `prepare` will give `split`, known before anything is written:
  the list file's lines, config.data.num_<split> for synthetic data, or the prepared
  dataset's (common.planned_num_examples)."""
  def count_source(manual_dir):
    if (epath.Path(manual_dir) / taskonomy.LIST_FILES[split]).exists():
      return len(taskonomy.read_list(manual_dir, split))
    return None
  return common.planned_num_examples(config, split, count_source, num_examples)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """The number of examples of `split` ('train' or 'val') in the prepared dataset."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  return _prepared_builder(*_builder_args(config)).info.splits[split].num_examples


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """Train steps per epoch: N // global batch size (the remainder is dropped each epoch)."""
  return num_examples(config, 'train') // config.batch_size


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory, in list-file order, resized for its use.

  Attributes:
    images: domain -> uint8 (N, size, size, 3); size is load_size for train, crop_size for val.
    names: per-example list-file line, e.g. '{domain}/point_407_view_2_domain_{domain}.png'.
  """
  images: dict[str, np.ndarray]
  names: list[str]

  def __len__(self) -> int:
    return len(self.names)


def split_image_size(config: ml_collections.ConfigDict, split: str) -> int:
  """The side every image of `split` is resized to: load_size (train) or crop_size (val)."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  return int(config.data.load_size if split == 'train' else config.crop_size)


def load_split(config: ml_collections.ConfigDict, split: str) -> Split:
  """Reads and resizes `split` of the prepared dataset (once per process; later calls are free)."""
  return _load_split(*_builder_args(config), split, split_image_size(config, split))


@functools.lru_cache(maxsize=4)
def _load_split(tfds_data_dir: str, names: tuple[str, ...], num_workers: int, split: str,
                size: int) -> Split:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _prepared_builder(tfds_data_dir, names, num_workers)
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(num_workers, 1)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(options=options, try_autocache=False))

  def resize(example):
    return (int(example['index']), example['name'].decode(),
            {n: pil_resize.resize_bilinear(example[n], (size, size)) for n in names})

  loaded = []
  examples = iter(tfds.as_numpy(ds))
  with concurrent.futures.ThreadPoolExecutor(max(num_workers, 1)) as pool:
    while chunk := list(itertools.islice(examples, _LOAD_CHUNK)):
      loaded.extend(pool.map(resize, chunk))
  loaded.sort(key=lambda item: item[0])
  return Split(images={n: np.stack([item[2][n] for item in loaded]) for n in names},
               names=[item[1] for item in loaded])


def draw_augmentation(rng: np.random.Generator, load_size: int,
                      crop_size: int) -> tuple[int, int, bool]:
  """(x, y, flip): the crop's left and top offsets in [0, load - crop], and the flip."""
  x = int(rng.integers(0, load_size - crop_size + 1))
  y = int(rng.integers(0, load_size - crop_size + 1))
  return x, y, bool(rng.random() < 0.5)


def to_unit_range(image: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1."""
  return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """This process's train batches for steps start_step, start_step + 1, ... forever."""
  crop, load = int(config.crop_size), int(config.data.load_size)
  if not 0 < crop <= load:
    raise ValueError(f'crop_size {crop} must be in [1, config.data.load_size={load}].')
  batching.check_train_request(config, start_step, process_index, process_count)
  split = load_split(config, 'train')
  inputs, target = tuple(config.modalities), config.target

  def empty(local):
    return {'inputs': np.empty((len(inputs), local, crop, crop, 3), np.float32),
            'target': np.empty((local, crop, crop, 3), np.float32)}

  def augment(name, index, x, y, flip):
    image = split.images[name][index, y:y + crop, x:x + crop]
    return to_unit_range(image[:, ::-1] if flip else image)

  def fill(batch, row, index, rng):
    x, y, flip = draw_augmentation(rng, load, crop)
    for m, name in enumerate(inputs):
      batch['inputs'][m, row] = augment(name, index, x, y, flip)
    batch['target'][row] = augment(target, index, x, y, flip)

  return batching.train_batches(config, len(split), empty, fill, start_step, process_index,
                                process_count)


def eval_batches(config: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every image once.

  Global batch k holds val examples [k * B, (k + 1) * B) with B = batch_size (default
  config.eval_batch_size); the last one is filled up with padding rows (mask False, all pixels
  0.0, i.e. mid-grey), so every batch has one shape and jit compiles once.
  """
  split = load_split(config, 'val')
  inputs, target = tuple(config.modalities), config.target
  size = int(config.crop_size)

  def empty(local):
    return {'inputs': np.zeros((len(inputs), local, size, size, 3), np.float32),
            'target': np.zeros((local, size, size, 3), np.float32)}

  def fill(batch, row, index):
    for m, name in enumerate(inputs):
      batch['inputs'][m, row] = to_unit_range(split.images[name][index])
    batch['target'][row] = to_unit_range(split.images[target][index])

  return batching.eval_batches(config, len(split), empty, fill, process_index, process_count,
                               batch_size)
