"""Starting weights for a run that has no checkpoint in its workdir.

Order (after resuming from the workdir, which train.py tries first): a checkpoint written by
`python -m asymfusion_jax.convert` (config.init.checkpoint), else a TF-DeepLab checkpoint read
directly (config.init.tf_checkpoint, DeepLab configs), else ImageNet torchvision ResNet weights
(config.init.torch_resnet), else the random initialisation. Pretrained variables are
merged by name: every pretrained entry must exist in the model with the same shape, and model
entries the pretrained weights lack (a fresh decoder, say) keep their initialisation.
"""

from absl import logging
import flax
import jax
import numpy as np

from asymfusion_jax import torch_pickle, variables_io
from asymfusion_jax.convert import deeplab as deeplab_convert
from asymfusion_jax.convert import refinenet as refinenet_convert
from asymfusion_jax.models import scan_layout


def merge(variables: dict, pretrained: dict, source: str) -> dict:
  """Replaces the leaves of `variables` named in `pretrained` (same shapes required), either in
  variables' models.scan_layout (pretrained weights of the other layout are converted)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  pretrained = scan_layout.to_layout(flax.core.unfreeze(pretrained), variables)
  new = flax.traverse_util.flatten_dict(pretrained, sep='/')
  unexpected = sorted(set(new) - set(flat))
  if unexpected:
    raise KeyError(f'{source}: entries not in the model: {unexpected[:10]}'
                   f'{" ..." if len(unexpected) > 10 else ""}')
  mismatched = [f'{k}: {np.shape(v)} vs model {flat[k].shape}' for k, v in new.items()
                if tuple(np.shape(v)) != tuple(flat[k].shape)]
  if mismatched:
    raise ValueError(f'{source}: {len(mismatched)} arrays do not fit the model (pretrained vs '
                     f'model shape): {mismatched[:10]}{" ..." if len(mismatched) > 10 else ""}')
  kept = len(flat) - len(new)
  logging.info('Loaded %d arrays from %s; %d model arrays keep their initialisation.',
               len(new), source, kept)
  for k, v in new.items():
    flat[k] = jax.device_put(np.asarray(v, dtype=flat[k].dtype), flat[k].sharding)
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def from_pretrained(state, config):
  """`state` with config.init's pretrained weights merged into params and batch_stats."""
  if config.init.checkpoint:
    source = config.init.checkpoint
    pretrained = variables_io.load_variables(source)
  elif config.init.get('tf_checkpoint'):
    from asymfusion_jax import models  # pylint: disable=g-import-not-at-top
    source = config.init.tf_checkpoint
    pretrained, _ = deeplab_convert.deeplab_from_tf(source, models.build_model(config))
  elif config.init.torch_resnet:
    source = config.init.torch_resnet
    backbone = refinenet_convert.resnet_from_torch(torch_pickle.load_state_dict(source),
                                                   len(config.modalities))
    pretrained = {'params': {'backbone': backbone['params']},
                  'batch_stats': {'backbone': backbone['batch_stats']}}
  else:
    if config.frozen_bn:
      logging.warning(
          'No pretrained weights (config.init.checkpoint, tf_checkpoint and torch_resnet are '
          'empty) but config.frozen_bn is on: the encoder starts from random weights and its '
          'BatchNorm layers keep their initial statistics (mean 0, variance 1) for the whole '
          'run. The paper recipe starts from ImageNet weights: pass '
          '--config.init.torch_resnet=/path/to/resnet.pth, or --config.frozen_bn=False to train '
          'from scratch.')
    return state
  variables = merge({'params': state.params, 'batch_stats': state.batch_stats},
                    {k: v for k, v in pretrained.items() if k in ('params', 'batch_stats')}, source)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
