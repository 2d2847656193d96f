"""The base of the project's TFDS builders (NYUDv2, Taskonomy, Cityscapes)."""

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
