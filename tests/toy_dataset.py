"""A toy segmentation dataset written as a user would add one: this module and one registry line.

tests/test_datasets.py registers it (data.DATASETS['toy'] = 'tests.toy_dataset') and trains and
evaluates it through the normal program. Its examples live in memory: RGB-D images whose label
is the quadrant's class, where it is not the ignore label; the batches come from the shared
helpers of data/ (batching, augment, modalities) exactly as NYUDv2's do, and every batch call is
recorded in CALLS so that the test can see who read what. The train examples named in
config.data.unreadable (if the key exists) fail as a file that cannot be read would.

Its images are 48x64, 16 train and 6 val, as the tiny synthetic NYUDv2 set of tests/tiny.py, so
that a tiny config's programs are those of the other tests (the compilation cache serves them).
"""

import functools

import numpy as np

from asymfusion_jax.data import augment
from asymfusion_jax.data import batching
from asymfusion_jax.data import modalities

MODELS = ('refinenet',)
EVALUATION = 'single_scale'
CLASS_NAMES = ('north-west', 'north-east', 'south-west', 'south-east', 'rim')
HEIGHT, WIDTH = 48, 64
SIZES = {'train': 16, 'val': 6}
CALLS = []  # ('prepare',), ('train', start_step), ('eval', batch_size), in call order.


def check_config(config) -> None:
  """The toy has CLASS_NAMES' classes; another config.model.num_classes is refused."""
  from asymfusion_jax import validation  # pylint: disable=g-import-not-at-top
  if config.model.num_classes != len(CLASS_NAMES):
    validation.fail('model.num_classes', config.model.num_classes,
                    f'{len(CLASS_NAMES)}, the toy dataset\'s classes')


@functools.cache
def _split(split: str) -> list[dict]:
  examples = []
  for i in range(SIZES[split]):
    rng = np.random.default_rng([split == 'val', i])
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    label[:, WIDTH // 2:] += 1
    label[HEIGHT // 2:] += 2
    label[rng.random((HEIGHT, WIDTH)) < 0.05] = 4
    label[0] = 255
    value = label.astype(np.int64) % 5
    rgb = (value[..., None] * 50 + rng.integers(0, 30, (HEIGHT, WIDTH, 3))).astype(np.uint8)
    depth = (1000 + 500 * value + rng.integers(0, 50, (HEIGHT, WIDTH))).astype(np.uint16)
    examples.append({'rgb': rgb, 'depth': depth, 'label': label, 'name': f'toy/{split}_{i}.png'})
  return examples


def prepare(config) -> None:
  del config
  CALLS.append(('prepare',))
  _split('train')
  _split('val')


def planned_num_examples(config, split: str) -> int:
  del config
  return SIZES[split]


def num_examples(config, split: str) -> int:
  del config
  return len(_split(split))


def steps_per_epoch(config) -> int:
  return num_examples(config, 'train') // config.batch_size


def read(config, split: str, index: int) -> dict:
  del config
  return _split(split)[index]


def train_batches(config, start_step: int = 0, process_index: int = 0, process_count: int = 1):
  CALLS.append(('train', start_step))
  names, crop = tuple(config.modalities), int(config.crop_size)
  examples = _split('train')

  def fill(batch, row, index, rng):
    example = examples[index]
    if example['name'] in config.data.get('unreadable', ()):  # A bad file, as a reader sees it.
      raise ValueError(f'Unreadable image {example["name"]}.')
    aug = augment.draw_augmentation(rng, HEIGHT, WIDTH, crop, tuple(config.data.scale_range),
                                    int(config.data.min_short_side))
    images, label = augment.apply_augmentation(aug, {m: example[m] for m in names},
                                               example['label'], crop,
                                               int(config.data.ignore_label))
    batch['label'][row] = label
    for m, name in enumerate(names):
      batch['image'][m, row] = modalities.normalise(name, images[name])

  return batching.train_batches(config, len(examples),
                                batching.empty_segmentation_batch(len(names), crop), fill,
                                start_step, process_index, process_count)


def eval_batches(config, process_index: int = 0, process_count: int = 1,
                 batch_size: int | None = None):
  CALLS.append(('eval', batch_size))
  names, examples = tuple(config.modalities), _split('val')

  def empty(local):
    image = np.stack([np.broadcast_to(modalities.normalised_pad_value(name),
                                      (local, HEIGHT, WIDTH, 3)) for name in names])
    return {'image': image.astype(np.float32),
            'label': np.full((local, HEIGHT, WIDTH), int(config.data.ignore_label), np.int32),
            'name': [''] * local}

  def fill(batch, row, index):
    example = examples[index]
    batch['label'][row] = example['label']
    batch['name'][row] = example['name']
    for m, name in enumerate(names):
      batch['image'][m, row] = modalities.normalise(name, example[name])

  return batching.eval_batches(config, len(examples), empty, fill, process_index,
                               process_count, batch_size)


def eval_image_size(config) -> tuple[int, int]:
  del config
  return HEIGHT, WIDTH


def input_encoding(config) -> dict:
  return modalities.to_json(config.modalities)


def class_names(config) -> tuple[str, ...]:
  del config
  return CLASS_NAMES


def palette(config) -> None:
  del config


def image_id(name: str) -> str:
  return name.rsplit('/', 1)[-1].removesuffix('.png')


def predict_io(config):
  """New images are read as NYUDv2's: the same modalities and normalisation."""
  from asymfusion_jax.data.nyudv2 import prediction  # pylint: disable=g-import-not-at-top
  return prediction.PredictIO(config)


def largest_crop(config):
  """The toy images' short side: crops up to it are all image."""
  del config
  return min(HEIGHT, WIDTH), f'the toy images are {HEIGHT}x{WIDTH}'
