"""The tasks the training program runs, chosen by config.task through the TASKS registry.

- 'segmentation': RGB-D semantic segmentation with RefineNet or DeepLabv3+
  (tasks/segmentation/).
- 'translation': several image domains translated to RGB with a U-Net generator and a PatchGAN
  discriminator (tasks/translation/).

train.py and export.py run either through the base.Task interface; what the tasks share (the
loop, checkpoints, sharding, logging, config loading) lives outside this package. A new task is a
package with a base.Task subclass and one line in TASKS.
"""

from asymfusion_jax import validation
from asymfusion_jax.tasks.base import Task, TrainState
from asymfusion_jax.tasks.segmentation.task import Segmentation
from asymfusion_jax.tasks.translation.task import Translation

# config.task -> the Task class.
TASKS = {'segmentation': Segmentation, 'translation': Translation}


def get(config) -> Task:
  """The Task of config.task; a ConfigError naming the key and the known tasks otherwise."""
  name = config.get('task')
  if name not in TASKS:
    raise validation.ConfigError(f'config.task={name!r} is not valid: it must be one of '
                                 f'{tuple(TASKS)}')
  return TASKS[name]()


__all__ = ['get', 'Task', 'TASKS', 'TrainState']
