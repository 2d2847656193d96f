"""The tasks the training program runs, chosen by config.task.

- 'segmentation' (the default, and every config without the key): RGB-D semantic segmentation
  with RefineNet (tasks/segmentation.py).
- 'translation': several image domains translated to RGB with a U-Net generator and a PatchGAN
  discriminator (tasks/translation.py).

train.py runs either through the base.Task interface; what the tasks share (the loop,
checkpoints, sharding, logging) lives outside this package.
"""

from asymfusion_jax import validation
from asymfusion_jax.tasks.segmentation.task import Segmentation
from asymfusion_jax.tasks.translation.task import Translation
from asymfusion_jax.tasks.base import Task, TrainState

TASKS = ('segmentation', 'translation')


def name(config) -> str:
  """config.task, or 'segmentation' for configs written before the key existed."""
  return config.get('task', 'segmentation')


def get(config) -> Task:
  """The Task of config.task; a ConfigError naming the key for an unknown one."""
  task = name(config)
  if task == 'segmentation':
    return Segmentation()
  if task == 'translation':
    return Translation()
  raise validation.ConfigError(f'config.task={task!r} is not valid: it must be one of {TASKS}')


__all__ = ['get', 'name', 'Task', 'TASKS', 'TrainState']
