"""Train and evaluation batches for NYUDv2 (or the synthetic stand-in) from the TFDS build.

A split is read from TFDS once into memory as NumPy arrays (NYUDv2 is about 1.5 GB decoded) and
augmented with OpenCV on a thread pool; TensorFlow is only used to build and read the dataset
and is imported lazily, so importing this module stays cheap.

Train batches are a pure function of (config.seed, global step), so a run resumes by asking for
the batches from its saved step on:
- Epoch e visits the examples in the order np.random.default_rng([seed, 0, e]).permutation(N),
  steps_per_epoch = N // batch_size steps of `batch_size` (global) examples each, dropping the
  remaining N % batch_size examples of that epoch (as the reference's drop_last does).
- The example at position p of epoch e is augmented with np.random.default_rng([seed, 1, e, p]).
- Process i of n takes rows [i * B / n, (i + 1) * B / n) of each global batch.

Batches are dicts of NumPy arrays, modalities ordered as in `config.modalities`:
  train: {'image': float32 (M, B, crop, crop, 3), 'label': int32 (B, crop, crop)}
  eval:  {'image': float32 (M, B, H, W, 3), 'label': int32 (B, H, W), 'mask': bool (B,)}
where B is the per-process share of the global batch size.
"""

import dataclasses
import functools
import itertools
import math

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from asymfusion_jax.data import augment
from asymfusion_jax.data import common
from asymfusion_jax.data import layout
from asymfusion_jax.data import modalities
from asymfusion_jax.data import synthetic
from asymfusion_jax.data import workers

SPLITS = ('train', 'val')
# Batches prepared ahead of the one being consumed: enough to hide augmentation behind a train
# step, few enough that memory stays small. It changes timing only, never the batches.
PREFETCH = 2


@functools.cache
def configure_tensorflow(num_threads: int) -> None:
  """Keeps TensorFlow off the accelerators (JAX owns them) and to a few CPU threads.

  Both settings only take effect before TensorFlow's runtime starts; if another library started
  it already, TensorFlow keeps its own settings, which is harmless.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    pass
  try:
    tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
  except RuntimeError:
    pass


def _builder(name: str, tfds_data_dir: str, num_threads: int):
  """The TFDS builder of dataset `name`, reading and writing `tfds_data_dir` ('' = TFDS default)."""
  if name != 'nyudv2':
    raise ValueError(f'Unknown dataset {name!r}; this pipeline knows nyudv2.')
  configure_tensorflow(max(num_threads, 1))
  from asymfusion_jax.data import builder  # pylint: disable=g-import-not-at-top
  return builder.Nyudv2(data_dir=tfds_data_dir or None)


def is_prepared(builder) -> bool:
  """Whether a TFDS builder's dataset is fully written (shared with the translation pipeline)."""
  # Checking the folder first spares TFDS's warning about a variant folder that does not exist.
  return builder.data_path.exists() and builder.is_prepared()


def _prepared_builder(name: str, tfds_data_dir: str, num_threads: int):
  builder = _builder(name, tfds_data_dir, num_threads)
  if not is_prepared(builder):
    raise FileNotFoundError(f'No prepared {name} dataset in {builder.data_dir_root}; run '
                            'asymfusion_jax.data.pipeline.prepare(config) first.')
  return builder


def _builder_args(config: ml_collections.ConfigDict) -> tuple[str, str, int]:
  return config.data.name, config.data.tfds_data_dir, int(config.data.num_workers)


def prepare(config: ml_collections.ConfigDict) -> None:
  """Builds the TFDS dataset from `config.data.manual_dir`, writing synthetic data there first.

  With `config.data.synthetic`, a manual folder without train.txt gets a synthetic dataset of
  num_train / num_val images of `config.data.synthetic_image_size`. An existing build is reused
  when it was made from the same manual folder contents (list files and file sizes) and rebuilt
  otherwise; with an empty manual_dir an existing build is used as it is. Run it on one process
  per file system before the others read. Then checks the masks against the config
  (`check_labels`).
  """
  _build(config)
  check_labels(config)


def _build(config: ml_collections.ConfigDict) -> None:
  manual_dir = config.data.manual_dir
  if config.data.synthetic:
    if not manual_dir:
      raise ValueError('config.data.synthetic needs config.data.manual_dir: the folder to write '
                       'the synthetic dataset to.')
    if not (epath.Path(manual_dir) / layout.LIST_FILES['train']).exists():
      height, width = config.data.synthetic_image_size
      logging.info('Writing a synthetic dataset of %d + %d images of %dx%d to %s.',
                   config.data.num_train, config.data.num_val, height, width, manual_dir)
      synthetic.write_dataset(manual_dir, config.data.num_train, config.data.num_val, height,
                              width)

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder(*_builder_args(config))
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if is_prepared(builder):
    if not manual_dir:
      return
    metadata = builder.info.metadata
    if metadata.get('fingerprint') != layout.fingerprint(manual_dir):
      logging.warning('The dataset in %s was built from other files than those now in %s; '
                      'rebuilding it.', builder.data_dir, manual_dir)
    elif _label_files(builder) is None:
      logging.warning('The dataset in %s does not record its label values (an earlier version '
                      'built it); rebuilding it from %s.', builder.data_dir, manual_dir)
    else:
      return
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Overwrites the prepared dataset.
  elif not manual_dir:
    raise ValueError(f'No prepared {config.data.name} dataset in {builder.data_dir_root}; set '
                     'config.data.manual_dir to the folder with rgb/, depth/, masks/, train.txt '
                     'and val.txt.')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode))
  _load_split.cache_clear()
  common.warn_about_split_sizes(config, builder)


def _label_files(builder) -> dict | None:
  """The build's record {split: {label value: first mask}}; None if it predates the record."""
  from asymfusion_jax.data import builder as builder_lib  # pylint: disable=g-import-not-at-top
  return builder.info.metadata.get(builder_lib.LABEL_FILES)


def _scan_labels(config: ml_collections.ConfigDict, split: str) -> dict[int, str]:
  """{label value: the first example holding it} of `split`, from the decoded masks."""
  data = load_split(config, split)
  found = {}
  for label, name in zip(data.labels, data.names):
    for value in np.flatnonzero(np.bincount(label.ravel(), minlength=256)):
      found.setdefault(int(value), f'The mask of {name} in the {split} split')
  return found


def check_labels(config: ml_collections.ConfigDict) -> None:
  """Raises LayoutError if a mask of the prepared dataset holds a label the config cannot use.

  Every label must be in [0, config.model.num_classes) or equal config.data.ignore_label:
  training drops other labels silently (as the metrics do), so a 5-class model would train on
  masks holding a 7 as if those pixels were unlabelled. The check runs against the config, not
  the build, because one build serves configs of different class counts. The build records the
  label values of each split and the first mask holding each, so this decodes no image; a build
  of an earlier version, without that record, is scanned in memory instead.
  """
  k, ignore = int(config.model.num_classes), int(config.data.ignore_label)
  recorded = _label_files(_prepared_builder(*_builder_args(config)))
  for split in SPLITS:
    if recorded is None:
      found = _scan_labels(config, split)
    else:
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
  """One split in memory, in list-file order.

  Attributes:
    images: modality name -> per-example raw arrays: rgb uint8 (H, W, 3), depth uint16 (H, W).
    labels: per-example uint8 (H, W).
    names: per-example rgb path from the list file, e.g. 'rgb/000001.png'.
  """
  images: dict[str, list[np.ndarray]]
  labels: list[np.ndarray]
  names: list[str]

  def __len__(self) -> int:
    return len(self.labels)


def load_split(config: ml_collections.ConfigDict, split: str) -> Split:
  """Reads `split` of the prepared dataset into memory (once per process; later calls are free)."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  for name in config.modalities:
    modalities.get(name)
  return _load_split(*_builder_args(config), split, tuple(config.modalities))


@functools.lru_cache(maxsize=4)
def _load_split(name: str, tfds_data_dir: str, num_workers: int, split: str,
                names: tuple[str, ...]) -> Split:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _prepared_builder(name, tfds_data_dir, num_workers)
  wanted = set(names) | {'label', 'index', 'name'}
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(num_workers, 1)
  ds = builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={k: tfds.decode.SkipDecoding() for k in builder.info.features if k not in wanted},
      read_config=tfds.ReadConfig(options=options, try_autocache=False))
  ds = ds.map(lambda ex: {k: ex[k] for k in wanted})
  examples = sorted(tfds.as_numpy(ds), key=lambda ex: int(ex['index']))
  squeeze = lambda x: x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
  return Split(images={n: [squeeze(ex[n]) for ex in examples] for n in names},
               labels=[squeeze(ex['label']) for ex in examples],
               names=[ex['name'].decode() for ex in examples])


def local_batch_size(global_batch: int, process_index: int, process_count: int,
                     what: str) -> int:
  """This process's share of a global batch (shared with the translation pipeline)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} is not divisible by the {process_count} processes.')
  return global_batch // process_count


def train_schedule(seed: int, step: int, batch_size: int,
                   num_examples: int) -> list[tuple[int, tuple[int, ...]]]:
  """The global batch at `step`: (example index, augmentation seed) per row (see module doc)."""
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(f'The train split has {num_examples} examples, fewer than one batch of '
                     f'{batch_size}.')
  epoch, within = divmod(step, per_epoch)
  order = np.random.default_rng([seed, 0, epoch]).permutation(num_examples)
  positions = range(within * batch_size, (within + 1) * batch_size)
  return [(int(order[p]), (seed, 1, epoch, p)) for p in positions]


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """This process's train batches for steps start_step, start_step + 1, ... forever."""
  local = local_batch_size(config.batch_size, process_index, process_count, 'batch_size')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  split = load_split(config, 'train')
  names = tuple(config.modalities)
  crop = int(config.crop_size)
  scale_range = tuple(float(s) for s in config.data.scale_range)
  min_short_side = int(config.data.min_short_side)
  ignore_label = int(config.data.ignore_label)
  seed, global_batch, n = int(config.seed), int(config.batch_size), len(split)
  train_schedule(seed, 0, global_batch, n)  # Fails now, not in the first next(), if N < batch.

  def fill(batch, row, index, key):
    label = split.labels[index]
    aug = augment.draw_augmentation(np.random.default_rng(key), *label.shape, crop, scale_range,
                                    min_short_side)
    images, out_label = augment.apply_augmentation(
        aug, {m: split.images[m][index] for m in names}, label, crop, ignore_label)
    batch['label'][row] = out_label
    for m, name in enumerate(names):
      batch['image'][m, row] = modalities.normalise(name, images[name])

  def plan(step):
    rows = train_schedule(seed, step, global_batch, n)[process_index * local:][:local]
    batch = {'image': np.empty((len(names), local, crop, crop, 3), np.float32),
             'label': np.empty((local, crop, crop), np.int32)}
    return batch, [functools.partial(fill, batch, j, *row) for j, row in enumerate(rows)]

  return workers.run_ahead(map(plan, itertools.count(start_step)), int(config.data.num_workers),
                           PREFETCH)


def eval_batches(config: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None):
  """This process's share of one pass over the val split, every image once at full resolution.

  Global batch k holds val examples [k * B, (k + 1) * B) with B = batch_size (default
  config.eval_batch_size); the last one is filled up with padding examples (mask False, label all
  ignore_label). Images are padded at the bottom and right to the largest size in the split, so
  every batch has one shape and jit compiles once; padded pixels get the ignore label and the
  normalised pad value.
  """
  global_batch = int(config.eval_batch_size if batch_size is None else batch_size)
  local = local_batch_size(global_batch, process_index, process_count, 'eval batch size')
  split = load_split(config, 'val')
  names = tuple(config.modalities)
  ignore_label = int(config.data.ignore_label)
  height = max(label.shape[0] for label in split.labels)
  width = max(label.shape[1] for label in split.labels)
  pads = [modalities.normalised_pad_value(name) for name in names]

  def fill(batch, row, index):
    label = split.labels[index]
    h, w = label.shape
    batch['label'][row, :h, :w] = label
    for m, name in enumerate(names):
      batch['image'][m, row, :h, :w] = modalities.normalise(name, split.images[name][index])

  def plan(k):
    batch = {'image': np.empty((len(names), local, height, width, 3), np.float32),
             'label': np.full((local, height, width), ignore_label, np.int32),
             'mask': np.zeros((local,), bool)}
    for m, pad in enumerate(pads):
      batch['image'][m] = pad
    tasks = []
    for row in range(local):
      index = k * global_batch + process_index * local + row
      if index < len(split):
        batch['mask'][row] = True
        tasks.append(functools.partial(fill, batch, row, index))
    return batch, tasks

  num_batches = math.ceil(len(split) / global_batch)
  return workers.run_ahead(map(plan, range(num_batches)), int(config.data.num_workers),
                           PREFETCH)
