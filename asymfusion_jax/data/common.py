"""What the three datasets' pipelines share (NYUDv2, Taskonomy, Cityscapes).

(Their TFDS builders share manual_builder.ManualBuilder, kept apart so that importing a
pipeline does not import TFDS; their readers share layout.decode_image and LayoutError.)

- `planned_num_examples`: a split's size before anything is written.
- `warn_about_split_sizes`: after a build, the splits whose size is not the config's.
"""

from typing import Callable

from absl import logging
import ml_collections


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


def warn_about_split_sizes(config: ml_collections.ConfigDict, builder) -> None:
  """Warns about every split of a prepared builder whose size is not config.data.num_<split>
  (which synthetic data is generated from and which logs describe)."""
  for split in ('train', 'val'):
    found, expected = builder.info.splits[split].num_examples, config.data[f'num_{split}']
    if found != expected:
      logging.warning('The %s split has %d examples; config.data.num_%s says %d.', split, found,
                      split, expected)
