"""What the three datasets' pipelines share (NYUDv2, Taskonomy, Cityscapes), batch loops aside
(`batching`).

(Their TFDS builders share manual_builder.ManualBuilder, and those read by index its
IndexedBuilder, kept apart so that importing a pipeline does not import TFDS; their file readers
share layout.decode_image and LayoutError.)

- `configure_tensorflow`, `is_prepared`: TensorFlow's settings, and whether a build is complete.
- `write_synthetic`, `build`: the synthetic stand-in when asked for, then the TFDS build from
  config.data.manual_dir, reused while the source files are unchanged.
- `planned_num_examples`, `planned_image_size`: a split's size and the train images' largest
  size before anything is written; `synthetic_image_size`.
- `warn_about_split_sizes`: after a build, the splits whose size is not the config's.
- `Reader`: example i of a split of an ArrayRecord build, read from disk; `IndexedDataset`: the
  builder, split sizes and readers of such a build (NYUDv2, Cityscapes).
"""

import functools
import importlib
from typing import Callable

from absl import logging
import ml_collections
import numpy as np


@functools.cache
def configure_tensorflow(num_threads: int) -> None:
  """Keeps TensorFlow off the accelerators (JAX owns them) and to a few CPU threads.

  Both settings only take effect before TensorFlow's runtime starts; if another library started
  it already, TensorFlow keeps its own settings, which is harmless. Worker
  processes (`processes`) only read builds, which TFDS's data source does without TensorFlow:
  there it is not imported.
  """
  from asymfusion_jax.data import processes  # pylint: disable=g-import-not-at-top
  if processes.in_worker():
    return
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


def is_prepared(builder) -> bool:
  """Whether a TFDS builder's dataset is fully written."""
  # Checking the folder first spares TFDS's warning about a variant folder that does not exist.
  return builder.data_path.exists() and builder.is_prepared()


def write_synthetic(config: ml_collections.ConfigDict, has_source: Callable[[str], bool],
                    write: Callable[[str], None]) -> None:
  """With config.data.synthetic, write(manual_dir) unless has_source(manual_dir) already."""
  if not config.data.synthetic:
    return
  manual_dir = config.data.manual_dir
  if not manual_dir:
    raise ValueError('config.data.synthetic needs config.data.manual_dir: the folder to write '
                     'the synthetic dataset to.')
  if not has_source(manual_dir):
    write(manual_dir)


def build(config: ml_collections.ConfigDict, builder, fingerprint: Callable[[str], str],
          what: str, source: str) -> bool:
  """Builds `builder`'s dataset from config.data.manual_dir; returns whether it built.

  An existing build is kept when it was made from the same files (its metadata 'fingerprint'
  equals fingerprint(manual_dir)), and rebuilt otherwise; with an empty manual_dir an existing
  build is used as it is. `what` names the dataset and `source`
  the folder manual_dir must name, for the error when there is neither.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  manual_dir = config.data.manual_dir
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if is_prepared(builder):
    if not manual_dir:
      return False
    if builder.info.metadata.get('fingerprint') == fingerprint(manual_dir):
      return False
    logging.warning('The dataset in %s was built from other files than those now in %s; '
                    'rebuilding it.', builder.data_dir, manual_dir)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Overwrites the prepared dataset.
  elif not manual_dir:
    raise ValueError(f'No prepared {what} (version {builder.version}) in '
                     f'{builder.data_dir_root}; set config.data.manual_dir to {source}.')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode))
  warn_about_split_sizes(config, builder)
  return True


def synthetic_image_size(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(height, width) of the synthetic images when config.data.synthetic, else None: a
  segmentation dataset's eval_image_size where only its build knows the real size."""
  if not config.data.synthetic:
    return None
  height, width = config.data.synthetic_image_size
  return int(height), int(width)


def planned_num_examples(config: ml_collections.ConfigDict, split: str,
                         count_source: Callable[[str], int | None],
                         num_examples: Callable[[ml_collections.ConfigDict, str], int]
                         ) -> int | None:
  """The number of examples `prepare` will give `split`, known before anything is written.

  From the source files in config.data.manual_dir when there are some (count_source(manual_dir)
  returns their count, or None when the folder holds none); else config.data.num_<split> for
  synthetic data that `prepare` will generate; else the prepared dataset's (num_examples). None
  when none of these exists (`prepare` will then fail and say why).
  """
  manual_dir = config.data.manual_dir
  if manual_dir:
    found = count_source(manual_dir)
    if found is not None:
      return found
  if config.data.synthetic:
    return int(config.data[f'num_{split}'])
  if manual_dir:
    return None
  try:
    return num_examples(config, split)
  except FileNotFoundError:
    return None


def planned_image_size(config: ml_collections.ConfigDict, has_source: Callable[[str], bool],
                       prepared_size: Callable[[ml_collections.ConfigDict], tuple[int, int]]
                       ) -> tuple[int, int] | None:
  """The largest (height, width) of the train images `prepare` will give, known before anything
  is written: config.data.synthetic_image_size for synthetic data that `prepare` will generate
  (has_source(manual_dir) is False); else the prepared build's, prepared_size(config). None
  when neither is known (source files not built yet, or a build that did not record it)."""
  manual_dir = config.data.manual_dir
  if config.data.synthetic and not (manual_dir and has_source(manual_dir)):
    return tuple(int(x) for x in config.data.synthetic_image_size)
  try:
    return tuple(int(x) for x in prepared_size(config))
  except (FileNotFoundError, KeyError):
    return None


def warn_about_split_sizes(config: ml_collections.ConfigDict, builder) -> None:
  """Warns about every split of a prepared builder whose size is not config.data.num_<split>
  (which synthetic data is generated from and which logs describe)."""
  for split in ('train', 'val'):
    found, expected = builder.info.splits[split].num_examples, config.data[f'num_{split}']
    if found != expected:
      logging.warning('The %s split has %d examples; config.data.num_%s says %d.', split, found,
                      split, expected)


class Reader:
  """Example i of one split of a prepared build, read and decoded from disk on each access.

  The build must be ArrayRecord in list order (disable_shuffling), as NYUDv2's and Cityscapes'
  are: record i holds the example whose 'index' feature is i, which every read checks. Images of
  one channel come as (H, W), names as str. Worker threads may read concurrently.
  """

  def __init__(self, builder, split: str):
    self._source = builder.as_data_source(split)
    self._split = split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    if int(example['index']) != index:
      raise ValueError(f'Record {index} of the {self._split} split holds example '
                       f'{example["index"]}; the build is not in list order: delete it and '
                       'prepare again.')
    out = {}
    for key, value in example.items():
      if isinstance(value, bytes):
        value = value.decode()
      elif isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[-1] == 1:
        value = value[..., 0]
      out[key] = value
    return out


class IndexedDataset:
  """A dataset whose build is read by index (`Reader`): what its pipeline module exposes.

  Its methods are the pipeline's num_examples, steps_per_epoch and read; the build lives in
  config.data.tfds_data_dir ('' = TFDS's default folder). Every method that takes a config
  checks that config.data.name names this dataset.
  """

  def __init__(self, name: str, builder_class: str, module: str):
    """builder_class names the TFDS builder class, 'package.module.Class' (imported on first
    use: TFDS is heavy); `module` is the pipeline's, whose prepare(config) the not-prepared
    error tells the user to run."""
    self.name = name
    self.splits = ('train', 'val')
    self._builder_class = builder_class
    self._module = module
    self._open = functools.lru_cache(maxsize=4)(self._open_uncached)

  def builder(self, tfds_data_dir: str):
    """The TFDS builder reading and writing `tfds_data_dir`."""
    configure_tensorflow(1)
    module, _, name = self._builder_class.rpartition('.')
    return getattr(importlib.import_module(module), name)(data_dir=tfds_data_dir or None)

  def prepared_builder(self, tfds_data_dir: str):
    builder = self.builder(tfds_data_dir)
    if not is_prepared(builder):
      raise FileNotFoundError(f'No prepared {self.name} dataset (version {builder.version}) in '
                              f'{builder.data_dir_root}; run {self._module}.prepare(config) '
                              'first.')
    return builder

  def _check(self, config: ml_collections.ConfigDict, split: str) -> None:
    if config.data.name != self.name:
      raise ValueError(f'config.data.name={config.data.name!r}, but {self._module} reads '
                       f'{self.name!r}; asymfusion_jax.data.get(config) gives the config\'s '
                       'dataset.')
    if split not in self.splits:
      raise ValueError(f'Unknown split {split!r}; expected one of {self.splits}.')

  def num_examples(self, config: ml_collections.ConfigDict, split: str) -> int:
    """The number of examples of `split` ('train' or 'val') in the prepared dataset."""
    self._check(config, split)
    return self.prepared_builder(config.data.tfds_data_dir).info.splits[split].num_examples

  def steps_per_epoch(self, config: ml_collections.ConfigDict) -> int:
    """Train steps per epoch: N // global batch size (the remainder is dropped each epoch)."""
    return self.num_examples(config, 'train') // config.batch_size

  def metadata(self, config: ml_collections.ConfigDict) -> dict:
    """The prepared build's metadata (what its builder recorded beside the examples)."""
    self._check(config, 'train')
    return self.prepared_builder(config.data.tfds_data_dir).info.metadata

  def _open_uncached(self, tfds_data_dir: str, split: str) -> Reader:
    return Reader(self.prepared_builder(tfds_data_dir), split)

  def reader(self, config: ml_collections.ConfigDict, split: str) -> Reader:
    """The reader of `split` (one per build and split, shared by every caller). Batch loops
    open it on the calling thread, so that their worker threads only read."""
    self._check(config, split)
    return self._open(config.data.tfds_data_dir, split)

  def read(self, config: ml_collections.ConfigDict, split: str, index: int) -> dict:
    """Example `index` of `split`, read and decoded from disk (`Reader`)."""
    return self.reader(config, split)[index]

  def forget_readers(self) -> None:
    """Drops the open readers, after a (re)build replaced the files they read."""
    self._open.cache_clear()
