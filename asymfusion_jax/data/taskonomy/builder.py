"""TFDS builder for Taskonomy domains from the folder layout of `layout` (manual_dir only).

A build stores the decoded images (uint8, 3 channels, see `taskonomy.decode`) of one set of
domains, so reading it costs no decoding rule. Each domain set is its own builder config, named
by the sorted domain names joined with '+' (e.g. 'depth_euclidean+reshading+rgb'), hence its own
version folder: configs that translate different domains never overwrite each other's build, and
configs that only order their inputs differently share one. Examples keep their list-file
position (`index`) because TFDS stores them in a hashed order, and their list line (`name`).

The build records in its metadata the fingerprint of the manual folder it read (so a changed
folder is rebuilt), its domains, and per split every image size it saw with the first list line
of that size (metadata['sizes'], so a user sees at once whether a split mixes resolutions).
"""

import functools
import types
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from asymfusion_jax.data import manual_builder
from asymfusion_jax.data.taskonomy import layout as taskonomy

# The metadata key of {split: {'HxW': 'the first list line of that size'}}.
SIZES = 'sizes'


def config_name(domains: Sequence[str]) -> str:
  """The builder config name of a domain set: sorted names joined with '+'."""
  for domain in domains:
    taskonomy.check_domain(domain)
  return '+'.join(sorted(set(domains)))


def builder_config(domains: Sequence[str]) -> tfds.core.BuilderConfig:
  return tfds.core.BuilderConfig(name=config_name(domains),
                                 description=f'Domains {", ".join(sorted(set(domains)))}.')


class Taskonomy(manual_builder.ManualBuilder):
  """Taskonomy domains (decoded to 8 bits, 3 channels) for image translation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Sample-model layout: {domain}/ folders, train.txt, val.txt.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the Taskonomy folder in `manual_dir`: one folder per domain holding
  `{domain}/point_{P}_view_{V}_domain_{domain}.png`, and the list files `train.txt` and `val.txt`
  whose lines are paths with the placeholder, e.g.
  `{domain}/point_407_view_2_domain_{domain}.png`.
  """

  @property
  def domains(self) -> tuple[str, ...]:
    return tuple(self.builder_config.name.split('+'))

  def _info(self) -> tfds.core.DatasetInfo:
    features = {d: tfds.features.Image(shape=(None, None, 3), dtype=np.uint8)
                for d in self.domains}
    return self.dataset_info_from_configs(
        description='Taskonomy domains decoded to 8-bit, 3-channel images, for translation.',
        features=tfds.features.FeaturesDict({
            **features,
            'index': tfds.features.Scalar(dtype=np.int32),
            'name': tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage='http://taskonomy.stanford.edu/',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    # Parse both lists first, so a malformed list fails before anything is written.
    entries = {split: taskonomy.read_list(manual_dir, split) for split in taskonomy.LIST_FILES}
    self.info.metadata['fingerprint'] = taskonomy.fingerprint(manual_dir, self.domains)
    self.info.metadata['domains'] = list(self.domains)
    sizes = {split: {} for split in entries}  # Filled while the examples are generated.
    self.info.metadata[SIZES] = sizes
    return {split: self._generate_examples(manual_dir, split_entries, sizes[split])
            for split, split_entries in entries.items()}

  def _generate_examples(self, manual_dir, entries: list[taskonomy.Entry], sizes: dict):
    for index, entry in enumerate(entries):
      images = taskonomy.read_example(manual_dir, entry, self.domains)
      h, w = images[self.domains[0]].shape[:2]
      sizes.setdefault(f'{h}x{w}', entry.where())
      yield index, {**images, 'index': index, 'name': entry.line}


@functools.cache
def builder_class(domains: tuple[str, ...]) -> type[Taskonomy]:
  """The Taskonomy builder whose one builder config is the set of `domains`.

  TFDS warns at every construction with a builder config that the class does not list; a
  (cached, unregistered) subclass per domain set lists its own.
  """
  config = builder_config(domains)

  def body(namespace):
    namespace['BUILDER_CONFIGS'] = [config]
    namespace['__module__'] = __name__

  return types.new_class('Taskonomy', (Taskonomy,), {'skip_registration': True}, body)
