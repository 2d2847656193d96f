"""The segmentation task's config checks (Task.check_config, Task.check_training).

Each model's keys are checked by its own function, the dataset's by the dataset of
config.data.name (validation.check_dataset: RefineNet configs train on NYUDv2, DeepLab configs on
Cityscapes). The NYUDv2 label range is checked once the dataset is prepared (its prepare).
"""

import jax

from asymfusion_jax import data
from asymfusion_jax import sharding
from asymfusion_jax import validation as v
from asymfusion_jax.data import modalities as modality_lib
from asymfusion_jax.data import workers
from asymfusion_jax.models import deeplab, refinenet, resnet
from asymfusion_jax.tasks.segmentation import optim


def check_config(config) -> None:
  """Raises ConfigError naming the first invalid key of a segmentation config.

  Covers every check that needs neither the dataset nor the devices, so --mode=eval and export
  can run it too.
  """
  v.integer(config, 'seed', 0)
  v.modalities(config, modality_lib.known(config), 'modalities')

  model_name = v.value(config, 'model.name')
  if model_name not in MODEL_CHECKS:
    v.fail('model.name', model_name, f'one of {tuple(MODEL_CHECKS)} for segmentation')
  num_classes = MODEL_CHECKS[model_name](config)
  v.check_dataset(config)
  v.compute_dtype(config)
  v.kernels(config)
  v.boolean(config, 'frozen_bn')

  ignore = v.value(config, 'data.ignore_label')
  if not v.is_int(ignore) or 0 <= ignore < num_classes:
    v.fail('data.ignore_label', ignore, f'an integer outside the classes 0..{num_classes - 1} '
                                        f'(config.model.num_classes={num_classes})')
  v.boolean(config, 'data.synthetic')
  for key in ('data.num_train', 'data.num_val'):
    v.integer(config, key, 1)
  image_size = v.sequence(config, 'data.synthetic_image_size', 2)
  if not all(v.is_int(size) and size >= 1 for size in image_size):
    v.fail('data.synthetic_image_size', image_size, '(height, width) in positive integers')
  low, high = v.sequence(config, 'data.scale_range', 2)
  if not (v.is_number(low) and v.is_number(high) and 0 < low <= high):
    v.fail('data.scale_range', (low, high), '(low, high) with 0 < low <= high')
  v.integer(config, 'data.num_workers', 0)
  v.choice(config, 'data.worker_kind', workers.KINDS)
  v.integer(config, 'data.prefetch_to_device', 0)

  for key in ('batch_size', 'eval_batch_size', 'crop_size'):
    v.integer(config, key, 1)

  v.number(config, 'optim.momentum', 0, 1)
  v.number(config, 'optim.weight_decay', 0)
  if 'clip_grad_norm' in config.optim:
    v.number(config, 'optim.clip_grad_norm', 0)
  v.choice(config, 'optim.schedule', optim.SCHEDULES)
  if config.optim.schedule == 'poly':
    v.number(config, 'optim.lr', 0, low_open=True)
    v.number(config, 'optim.power', 0)
    v.integer(config, 'optim.total_steps', 1)
  else:
    stages = v.sequence(config, 'optim.epochs_per_stage')
    if not all(v.is_int(e) and e >= 1 for e in stages):
      v.fail('optim.epochs_per_stage', stages, 'a sequence of positive integers')
    for key in ('optim.lr_encoder', 'optim.lr_decoder'):
      rates = v.sequence(config, key)
      if len(rates) != len(stages) or not all(v.is_number(r) and r > 0 for r in rates):
        v.fail(key, rates, f'{len(stages)} finite learning rates > 0, one per stage of '
                           'config.optim.epochs_per_stage')
  v.check_run(config)


def _check_refinenet(config) -> int:
  """The RefineNet keys; returns num_classes."""
  v.choice(config, 'model.depth', resnet.STAGE_SIZES)
  num_classes = v.integer(config, 'model.num_classes', 1)
  v.fusion(config)
  v.integer(config, 'model.width', 1)
  v.integer(config, 'model.decoder_width', 1)
  v.number(config, 'model.dropout_rate', 0, 1)
  v.choice(config, 'model.remat', refinenet.REMAT)
  if 'scan_blocks' in config.model:
    v.boolean(config, 'model.scan_blocks')
  return num_classes


def _check_deeplab(config) -> int:
  """The DeepLab keys; returns num_classes."""
  num_classes = v.integer(config, 'model.num_classes', 1)
  if v.value(config, 'model.fusion') not in ('asym', 'none'):
    v.fail('model.fusion', config.model.fusion, "'asym' or 'none': DeepLab has AsymFusion or no "
           'fusion; the fusion baselines are built for RefineNet and the translation U-Net')
  v.choice(config, 'model.output_stride', deeplab.ASPP_RATES)
  v.choice(config, 'eval.output_stride', deeplab.ASPP_RATES)
  divisor = v.integer(config, 'model.width_divisor', 1)
  if 8 % divisor:
    v.fail('model.width_divisor', divisor, '1, 2, 4 or 8: a divisor of every width of the model '
                                           '(32, 48, 728, ...)')
  v.integer(config, 'model.middle_flow_units', 1)
  v.number(config, 'model.dropout_rate', 0, 1)
  v.choice(config, 'model.remat', deeplab.REMAT)
  v.boolean(config, 'model.upsample_logits')
  if 'scan_blocks' in config.model:
    v.boolean(config, 'model.scan_blocks')
  if 'bn_momentum' in config.model:
    v.number(config, 'model.bn_momentum', 0, 1)
  if not config.model.upsample_logits:
    v.fail('model.upsample_logits', False, 'True for training and evaluation (the loss and the '
                                           'metrics take logits at the label size)')
  return num_classes


# The models segmentation trains (config.model.name), each with the check of its own keys, which
# returns num_classes.
MODEL_CHECKS = {'refinenet': _check_refinenet, 'deeplab': _check_deeplab}


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
    raise v.ConfigError(f'{e} (with config.frozen_bn=False every device needs as many real rows)'
                        if not config.frozen_bn else str(e)) from None


def train_batch_rows(config, devices: int | None = None, processes: int | None = None) -> int:
  """Rows per process of each train batch as the mesh runs it (padding rows included)."""
  processes = jax.process_count() if processes is None else processes
  rows = (sharding.padded_batch_size(config.batch_size, devices, processes) if config.frozen_bn
          else config.batch_size)
  return rows // processes


def check_train_data(config) -> None:
  """The train split holds at least one batch; reads its size without writing anything."""
  available = data.get(config).planned_num_examples(config, 'train')
  if available is not None and config.batch_size > available:
    raise v.ConfigError(f'config.batch_size={config.batch_size} is larger than the {available} '
                        'training examples, so an epoch would have no step')


def check_crop(config) -> None:
  """The train crop fits in the train images at their largest augmentation scale.

  The images' size is the planned data's (recorded by its build, or config.data.
  synthetic_image_size for synthetic data still to generate); data not built yet is checked
  once it is (train.prepare_data checks again). A larger crop would train on padding, and
  slowly: a crop of 1000 on 96x128 images takes minutes and gigabytes for its first step.
  """
  largest = data.get(config).largest_crop(config)
  if largest is not None and config.crop_size > largest[0]:
    limit, why = largest
    raise v.ConfigError(f'config.crop_size={config.crop_size} is larger than the training data: '
                        f'{why}, so every crop would be partly padding; choose a crop_size of at '
                        f'most {limit}')


def check_training(config) -> None:
  """Every check that can run before a training run creates its workdir."""
  check_config(config)
  check_devices(config)
  check_train_data(config)
  check_crop(config)
