"""The bases of the project's TFDS builders (NYUDv2, Taskonomy, Cityscapes)."""

import inspect

from absl import logging
from etils import epath
import tensorflow_datasets as tfds


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the project's builders: every one reads manual_dir and downloads nothing."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS computes this through the optional `importlib_resources` package for builders that
    # live outside its own tree; the source file is all it needs.
    return epath.Path(inspect.getfile(cls))

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and a "downloaded" line to
  # stdout around a build; nothing is downloaded here (the build reads manual_dir), so these say
  # what happens instead, in the log.
  def _log_download_bytes(self) -> None:
    logging.info('Building the TFDS dataset %s in %s from the manual_dir files...', self.name,
                 self.data_dir)

  def _log_download_done(self) -> None:
    logging.info('Built the TFDS dataset %s in %s.', self.name, self.data_dir)


class IndexedBuilder(ManualBuilder, skip_registration=True):
  """Base of the builders whose splits are read by index (NYUDv2, Cityscapes).

  They write ArrayRecord files, which `as_data_source` reads record by record, and their
  `_info` must set disable_shuffling so that record i of a split is example i, in list order
  (checked here); each example keeps its position in an 'index' feature, which `common.Reader`
  checks on every read.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)
    if not self.info.disable_shuffling:
      raise TypeError(f'{type(self).__name__}._info must set disable_shuffling=True: its '
                      'splits are read by index, in list order.')
