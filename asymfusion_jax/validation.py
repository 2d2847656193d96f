"""Checks of a config that run before a run writes anything.

Errors found later cost more: a negative learning rate trains by gradient ascent until the loss
is NaN, a batch larger than the dataset fails once the workdir and its data exist. So training
and --mode=eval check every key first, and each error names the key, its value and what would be
valid. Checks that need the dataset's size (`check_train_data`) read it without writing anything
(planned_num_examples of the dataset's pipeline); the NYUDv2 label range is checked once the
dataset is prepared (pipeline.check_labels).
"""

import math
import numbers

import jax

from asymfusion_jax import fusion, optim, sharding
from asymfusion_jax.data import cityscapes
from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data import segmentation_pipeline
from asymfusion_jax.data import taskonomy
from asymfusion_jax.models import deeplab, kernels, refinenet, resnet


class ConfigError(ValueError):
  """A config value that cannot run; the message names the key, its value and what is valid."""


def _value(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _fail(key: str, value, requirement: str):
  raise ConfigError(f'config.{key}={value!r} must be {requirement}')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _int(config, key: str, minimum: int) -> int:
  value = _value(config, key)
  if not _is_int(value) or value < minimum:
    _fail(key, value, 'a positive integer' if minimum == 1 else f'an integer >= {minimum}')
  return value


def _number(config, key: str, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = True) -> float:
  """A finite number in the interval given by low, high and whether each end is open."""
  value = _value(config, key)
  inside = _is_number(value) and (low < value if low_open else low <= value) and (
      value < high if high_open else value <= high)
  if not inside:
    if high == math.inf:
      _fail(key, value, f'a finite number {">" if low_open else ">="} {low:g}')
    _fail(key, value, f'a number in {"(" if low_open else "["}{low:g}, {high:g}'
                      f'{")" if high_open else "]"}')
  return value


def _sequence(config, key: str, length: int | None = None) -> tuple:
  value = _value(config, key)
  if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or (
      length is not None and len(value) != length) or (length is None and not value):
    _fail(key, value, f'a sequence of {length} values' if length else 'a non-empty sequence')
  return tuple(value)


def _choice(config, key: str, choices) -> None:
  value = _value(config, key)
  if value not in choices:
    _fail(key, value, f'one of {sorted(choices) if isinstance(choices, dict) else choices}')


def _bool(config, key: str) -> None:
  value = _value(config, key)
  if not isinstance(value, bool):
    _fail(key, value, 'True or False')


def _fusion(config) -> None:
  """config.model.fusion names a fusion method (a bool is read as 'asym' / 'none')."""
  value = _value(config, 'model.fusion')
  try:
    fusion.method(value)
  except ValueError:
    _fail('model.fusion', value, f'one of {fusion.METHODS} (or True for \'asym\', False for '
                                 "'none')")


def check_config(config) -> None:
  """Raises ValueError naming the first invalid key of a training config.

  Covers every check that needs neither the dataset nor the devices, so --mode=eval and export
  can run it too.
  """
  _int(config, 'seed', 0)
  names = _sequence(config, 'modalities')
  known = sorted(modality_lib.MODALITIES)
  if not all(name in modality_lib.MODALITIES for name in names):
    _fail('modalities', names, f'a sequence of known modalities, among {known}')
  if len(set(names)) != len(names):
    _fail('modalities', names, 'a sequence without repeats')

  model_name = config.model.get('name', 'refinenet')
  if model_name not in ('refinenet', 'deeplab'):
    _fail('model.name', model_name, "'refinenet' or 'deeplab' for segmentation")
  if model_name == 'deeplab':
    num_classes = _check_deeplab(config)
  else:
    num_classes = _check_refinenet(config)
  _choice(config, 'compute_dtype', refinenet.COMPUTE_DTYPES)
  _choice(config, 'model.kernels', kernels.KERNELS)
  _bool(config, 'frozen_bn')

  ignore = _value(config, 'data.ignore_label')
  if not _is_int(ignore) or 0 <= ignore < num_classes:
    _fail('data.ignore_label', ignore, f'an integer outside the classes 0..{num_classes - 1} '
                                       f'(config.model.num_classes={num_classes})')
  _bool(config, 'data.synthetic')
  for key in ('data.num_train', 'data.num_val'):
    _int(config, key, 1)
  image_size = _sequence(config, 'data.synthetic_image_size', 2)
  if not all(_is_int(size) and size >= 1 for size in image_size):
    _fail('data.synthetic_image_size', image_size, '(height, width) in positive integers')
  low, high = _sequence(config, 'data.scale_range', 2)
  if not (_is_number(low) and _is_number(high) and 0 < low <= high):
    _fail('data.scale_range', (low, high), '(low, high) with 0 < low <= high')
  _int(config, 'data.num_workers', 0)

  for key in ('batch_size', 'eval_batch_size', 'crop_size'):
    _int(config, key, 1)

  _number(config, 'optim.momentum', 0, 1)
  _number(config, 'optim.weight_decay', 0)
  if 'clip_grad_norm' in config.optim:
    _number(config, 'optim.clip_grad_norm', 0)
  if 'schedule' in config.optim:
    _choice(config, 'optim.schedule', optim.SCHEDULES)
  if optim.schedule_name(config) == 'poly':
    _number(config, 'optim.lr', 0, low_open=True)
    _number(config, 'optim.power', 0)
    _int(config, 'optim.total_steps', 1)
  else:
    stages = _sequence(config, 'optim.epochs_per_stage')
    if not all(_is_int(e) and e >= 1 for e in stages):
      _fail('optim.epochs_per_stage', stages, 'a sequence of positive integers')
    for key in ('optim.lr_encoder', 'optim.lr_decoder'):
      rates = _sequence(config, key)
      if len(rates) != len(stages) or not all(_is_number(r) and r > 0 for r in rates):
        _fail(key, rates, f'{len(stages)} finite learning rates > 0, one per stage of '
                          'config.optim.epochs_per_stage')

  _int(config, 'max_steps', -1)
  for key in ('log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps',
              'keep_checkpoints'):
    _int(config, key, 1)
  _int(config, 'num_prediction_images', 0)


def _check_refinenet(config) -> int:
  """The RefineNet keys and the NYUDv2 data keys; returns num_classes."""
  _choice(config, 'data.name', ('nyudv2',))
  _choice(config, 'model.depth', resnet.STAGE_SIZES)
  num_classes = _int(config, 'model.num_classes', 1)
  _fusion(config)
  _int(config, 'model.width', 1)
  _int(config, 'model.decoder_width', 1)
  _number(config, 'model.dropout_rate', 0, 1)
  _choice(config, 'model.remat', refinenet.REMAT)
  _int(config, 'data.min_short_side', 0)
  return num_classes


def _check_deeplab(config) -> int:
  """The DeepLab keys and the Cityscapes data and evaluation keys; returns num_classes."""
  _choice(config, 'data.name', ('cityscapes',))
  names = tuple(config.modalities)
  if not set(names) <= {'rgb', 'depth'}:
    _fail('modalities', names, "a sequence of the Cityscapes modalities 'rgb' and 'depth'")
  num_classes = _value(config, 'model.num_classes')
  if num_classes != cityscapes.NUM_CLASSES:
    _fail('model.num_classes', num_classes, f'{cityscapes.NUM_CLASSES}: the Cityscapes train '
                                            'ids the data pipeline produces')
  _bool(config, 'model.fusion')
  _choice(config, 'model.output_stride', deeplab.ASPP_RATES)
  _choice(config, 'eval.output_stride', deeplab.ASPP_RATES)
  divisor = _int(config, 'model.width_divisor', 1)
  if 8 % divisor:
    _fail('model.width_divisor', divisor, '1, 2, 4 or 8: a divisor of every width of the model '
                                          '(32, 48, 728, ...)')
  _int(config, 'model.middle_flow_units', 1)
  _number(config, 'model.dropout_rate', 0, 1)
  _choice(config, 'model.remat', deeplab.REMAT)
  _bool(config, 'model.upsample_logits')
  if 'bn_momentum' in config.model:
    _number(config, 'model.bn_momentum', 0, 1)
  if not config.model.upsample_logits:
    _fail('model.upsample_logits', False, 'True for training and evaluation (the loss and the '
                                          'metrics take logits at the label size)')
  _number(config, 'data.scale_step', 0)
  eval_scales = _sequence(config, 'eval.scales')
  if not all(_is_number(x) and x > 0 for x in eval_scales):
    _fail('eval.scales', eval_scales, 'a non-empty sequence of positive scales')
  _bool(config, 'eval.flip')
  return num_classes


def check_translation_config(config) -> None:
  """check_config for a translation config (config.task == 'translation')."""
  _int(config, 'seed', 0)
  names = _sequence(config, 'modalities')
  known = sorted(taskonomy.DOMAINS)
  if not all(name in taskonomy.DOMAINS for name in names):
    _fail('modalities', names, f'a sequence of known Taskonomy domains, among {known}')
  if len(set(names)) != len(names):
    _fail('modalities', names, 'a sequence without repeats')
  target = _value(config, 'target')
  if target not in taskonomy.DOMAINS or target in names:
    _fail('target', target, f'a known domain that is not an input, among {known}')

  _choice(config, 'model.name', ('unet',))
  num_downs = _int(config, 'model.num_downs', 1)
  _int(config, 'model.ngf', 1)
  _int(config, 'model.ndf', 1)
  _fusion(config)
  blocks = _value(config, 'model.fusion_blocks')
  if isinstance(blocks, (str, bytes)) or not hasattr(blocks, '__len__') or not all(
      _is_int(b) and 2 <= b <= num_downs - 1 for b in blocks):
    _fail('model.fusion_blocks', blocks, f'encoder blocks among 2..{num_downs - 1} (those '
                                         f'with an InstanceNorm for model.num_downs={num_downs})')
  _number(config, 'model.dropout_rate', 0, 1, high_open=True)
  _choice(config, 'compute_dtype', refinenet.COMPUTE_DTYPES)
  _choice(config, 'model.kernels', kernels.KERNELS)

  _bool(config, 'data.synthetic')
  for key in ('data.num_train', 'data.num_val', 'data.synthetic_image_size'):
    _int(config, key, 1)
  _int(config, 'data.num_workers', 0)
  crop = _int(config, 'crop_size', 1)
  if crop % 2 ** num_downs:
    _fail('crop_size', crop, f'a multiple of 2**model.num_downs = {2 ** num_downs}')
  _int(config, 'data.load_size', crop)
  for key in ('batch_size', 'eval_batch_size'):
    _int(config, key, 1)

  _number(config, 'optim.lr', 0, low_open=True)
  _number(config, 'optim.b1', 0, 1, high_open=True)
  _number(config, 'optim.b2', 0, 1, high_open=True)
  _number(config, 'optim.l1_weight', 0)
  _int(config, 'num_epochs', 1)
  _int(config, 'max_steps', -1)
  for key in ('log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps',
              'keep_checkpoints'):
    _int(config, key, 1)
  _int(config, 'num_prediction_images', 0)


def check_devices(config, devices: int | None = None, processes: int | None = None) -> None:
  """The train batch splits evenly over the devices and processes (default: this run's).

  With frozen BatchNorm (the paper configs) the batch need only split over the processes:
  training fills it up to the devices with rows that change nothing (train_batch_rows). Trained
  BatchNorm statistics would see such rows, so there every device needs as many real rows. The
  eval batch needs no check: evaluation fills it up to the mesh with masked rows.
  """
  try:
    if config.frozen_bn:
      sharding.check_batch_size(config.batch_size, 'config.batch_size', devices=1,
                                processes=processes)
    else:
      sharding.check_batch_size(config.batch_size, 'config.batch_size', devices, processes)
  except ValueError as e:
    raise ConfigError(f'{e} (with config.frozen_bn=False every device needs as many real rows)'
                      if not config.frozen_bn else str(e)) from None


def train_batch_rows(config, devices: int | None = None, processes: int | None = None) -> int:
  """Rows per process of each train batch as the mesh runs it (padding rows included)."""
  processes = jax.process_count() if processes is None else processes
  rows = (sharding.padded_batch_size(config.batch_size, devices, processes) if config.frozen_bn
          else config.batch_size)
  return rows // processes


def check_train_data(config) -> None:
  """The train split holds at least one batch; reads its size without writing anything."""
  available = segmentation_pipeline(config).planned_num_examples(config, 'train')
  if available is not None and config.batch_size > available:
    raise ConfigError(f'config.batch_size={config.batch_size} is larger than the {available} '
                     'training examples, so an epoch would have no step')


def check_training(config) -> None:
  """Every check that can run before a training run creates its workdir."""
  check_config(config)
  check_devices(config)
  check_train_data(config)
