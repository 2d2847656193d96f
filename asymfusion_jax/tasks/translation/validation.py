"""The translation task's config checks (Task.check_config, Task.check_training)."""

import jax

from asymfusion_jax import data
from asymfusion_jax import sharding
from asymfusion_jax import validation as v
from asymfusion_jax.data import workers


def check_config(config) -> None:
  """Raises ConfigError naming the first invalid key of a translation config; the domains
  (config.modalities, config.target) are the dataset's to check (validation.check_dataset)."""
  v.integer(config, 'seed', 0)
  v.choice(config, 'model.name', ('unet',))
  num_downs = v.integer(config, 'model.num_downs', 1)
  v.integer(config, 'model.ngf', 1)
  v.integer(config, 'model.ndf', 1)
  v.fusion(config)
  blocks = v.value(config, 'model.fusion_blocks')
  if isinstance(blocks, (str, bytes)) or not hasattr(blocks, '__len__') or not all(
      v.is_int(b) and 2 <= b <= num_downs - 1 for b in blocks):
    v.fail('model.fusion_blocks', blocks, f'encoder blocks among 2..{num_downs - 1} (those '
                                          f'with an InstanceNorm for model.num_downs={num_downs})')
  v.number(config, 'model.dropout_rate', 0, 1, high_open=True)
  v.compute_dtype(config)
  v.kernels(config)

  v.boolean(config, 'data.synthetic')
  for key in ('data.num_train', 'data.num_val'):
    v.integer(config, key, 1)
  v.integer(config, 'data.num_workers', 0)
  v.choice(config, 'data.worker_kind', workers.KINDS)
  v.integer(config, 'data.prefetch_to_device', 0)
  crop = v.integer(config, 'crop_size', 1)
  if crop % 2 ** num_downs:
    v.fail('crop_size', crop, f'a multiple of 2**model.num_downs = {2 ** num_downs}')
  v.check_dataset(config)
  for key in ('batch_size', 'eval_batch_size'):
    v.integer(config, key, 1)

  v.number(config, 'optim.lr', 0, low_open=True)
  v.number(config, 'optim.b1', 0, 1, high_open=True)
  v.number(config, 'optim.b2', 0, 1, high_open=True)
  v.number(config, 'optim.l1_weight', 0)
  v.integer(config, 'num_epochs', 1)
  v.check_run(config)


def check_devices(config, devices: int | None = None, processes: int | None = None) -> None:
  """The train batch splits evenly over the processes (default: this run's).

  Training fills it up to the devices with zero rows that the losses leave out
  (train_batch_rows, task.pad_rows): the networks normalise per instance, so such rows change
  nothing, and the paper's batch 1 runs on any number of devices. The eval batch is filled up
  to the mesh with masked rows too.
  """
  try:
    sharding.check_batch_size(config.batch_size, 'config.batch_size', devices=1,
                              processes=processes)
  except ValueError as e:
    raise v.ConfigError(str(e)) from None


def train_batch_rows(config, devices: int | None = None, processes: int | None = None) -> int:
  """Rows per process of each train batch as the mesh runs it (padding rows included)."""
  processes = jax.process_count() if processes is None else processes
  return sharding.padded_batch_size(config.batch_size, devices, processes) // processes


def check_training(config) -> None:
  """Every check that can run before a training run creates its workdir."""
  check_config(config)
  check_devices(config)
  available = data.get(config).planned_num_examples(config, 'train')
  if available is not None and config.batch_size > available:
    raise v.ConfigError(
        f'config.batch_size={config.batch_size} is larger than the {available} training '
        'examples, so an epoch would have no step')
