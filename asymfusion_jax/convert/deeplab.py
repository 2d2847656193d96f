"""TF-DeepLab's name-based TensorFlow checkpoints (Xception-65 / DeepLabv3+) -> models.deeplab.

The ImageNet `xception_65` backbone checkpoint or a whole Cityscapes DeepLabv3+ loads by
variable name (docs/method.md section 13); every BatchNorm of the checkpoint is copied to every
modality. TensorFlow is imported only when a checkpoint file is read.
"""

import re
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from asymfusion_jax import models
from asymfusion_jax import variables_io
from asymfusion_jax.convert import keys
from asymfusion_jax.models.deeplab import DeepLab

TF_BACKBONE_SCOPE = 'xception_65/'
# Checkpoint entries that are not model variables: the step counter, optimiser slots and moving
# averages of the weights. Always skipped.
_TF_BOOKKEEPING = re.compile(
    r'global_step|.*/(Momentum|ExponentialMovingAverage|Adam|Adam_1|RMSProp|RMSProp_1)')
# The ImageNet classifier of the backbone checkpoint, which DeepLab has no place for.
_TF_IMAGENET_LOGITS = TF_BACKBONE_SCOPE + 'logits/'
_TF_BN_LEAVES = {('params', 'scale'): 'gamma', ('params', 'bias'): 'beta',
                 ('batch_stats', 'mean'): 'moving_mean', ('batch_stats', 'var'): 'moving_variance'}


def _tf_scope_parts(name: str) -> list[str]:
  """The TF-DeepLab scope components of one Flax module name of models.deeplab / xception."""
  if name == 'backbone':
    return [TF_BACKBONE_SCOPE[:-1]]
  unit = re.fullmatch(r'(entry_flow|middle_flow|exit_flow)_(block\d+)_(unit_\d+)', name)
  if unit:
    return [unit[1], unit[2], unit[3], 'xception_module']
  for pattern, parts in ((r'entry_flow_(conv1_\d+)', ['entry_flow', r'\1']),
                         (r'decoder_(feature_projection\d+)', ['decoder', r'\1']),
                         (r'(decoder_conv\d+)', ['decoder', r'\1']),
                         (r'logits_(semantic)', ['logits', r'\1'])):
    match = re.fullmatch(pattern, name)
    if match:
      return [match.expand(p) for p in parts]
  return [name]


def _tf_scope(path: tuple[str, ...]) -> str:
  """The TF scope of the Flax module at `path`; depthwise/pointwise halves join with '_'."""
  parts = []
  for name in path:
    if name in ('depthwise', 'pointwise'):
      parts[-1] += '_' + name
    else:
      parts += _tf_scope_parts(name)
  return '/'.join(parts)


def _deeplab_tf_entries(abstract: Mapping[str, Any]) -> list[keys.Entry]:
  """The TF-DeepLab variable name of every DeepLab variable except the ensemble's alpha.

  kind 'copy', 'depthwise' (TF (k, k, C, 1) -> Flax (k, k, 1, C)) or 'rows' (one BatchNorm
  vector copied to every modality's row). torch_shape holds the TF shape.
  """
  entries = []
  for path, leaves in keys.modules(abstract['params']):
    if not path:
      continue  # alpha: the ensemble weights, which TF-DeepLab does not have.
    if path[-1] == 'conv':
      scope = _tf_scope(path[:-1])
      kh, kw, cin, cout = leaves['kernel'].shape
      if path[-2] == 'depthwise':
        entries.append(keys.Entry(f'{scope}/depthwise_weights', 'depthwise', 'params',
                                  path + ('kernel',), torch_shape=(kh, kw, cout, cin)))
      else:
        entries.append(keys.Entry(f'{scope}/weights', 'copy', 'params', path + ('kernel',),
                                  torch_shape=(kh, kw, cin, cout)))
    elif path[-1] == 'BatchNorm':
      scope = _tf_scope(path)
      channels = leaves['scale'].shape[1]
      for (collection, leaf), tf_name in _TF_BN_LEAVES.items():
        entries.append(keys.Entry(f'{scope}/{tf_name}', 'rows', collection, path + (leaf,),
                                  torch_shape=(channels,)))
    elif path == ('logits_semantic',):
      scope = _tf_scope(path)
      entries.append(keys.Entry(f'{scope}/weights', 'copy', 'params', path + ('kernel',),
                                torch_shape=tuple(leaves['kernel'].shape)))
      entries.append(keys.Entry(f'{scope}/biases', 'copy', 'params', path + ('bias',),
                                torch_shape=tuple(leaves['bias'].shape)))
    else:
      raise ValueError(f'no TF-DeepLab name for the Flax module {"/".join(path)} with '
                       f'parameters {sorted(leaves)}')
  return entries


def read_tf_checkpoint(prefix: str) -> dict[str, np.ndarray]:
  """{variable name: NumPy array} of a name-based TF checkpoint (PREFIX.index + PREFIX.data-*).

  A directory is also accepted: its latest checkpoint (the `checkpoint` file) is read.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only this format needs it)
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'{prefix}: not a readable TensorFlow checkpoint (give the prefix, e.g. '
                     f'model.ckpt for model.ckpt.index): {e}') from e
  return {name: np.asarray(reader.get_tensor(name))
          for name in sorted(reader.get_variable_to_shape_map())}


def deeplab_from_tf(checkpoint: str | Mapping[str, Any], model: DeepLab,
                    backbone_only: bool | None = None) -> tuple[dict[str, Any], list[str]]:
  """A TF-DeepLab Xception-65 / DeepLabv3+ checkpoint as variables of models.deeplab.DeepLab.

  Every BatchNorm of the checkpoint is copied to every modality (docs/method.md section 13).

  Args:
    checkpoint: the checkpoint prefix (read_tf_checkpoint), or its {name: array} already read.
    model: the DeepLab to fill (e.g. build_model(config)); its widths and number of classes are
      checked against the checkpoint's shapes.
    backbone_only: True loads the `xception_65/` variables only (the ImageNet checkpoint) and
      returns {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}, the layout that
      config.init.checkpoint merges into a fresh model; its other variables (the ImageNet
      classifier, any head) are skipped. False loads the whole model (a Cityscapes checkpoint);
      the ensemble weights alpha, which TF-DeepLab does not have, start equal (ones). None
      decides by the presence of `logits/semantic/weights`.

  Returns:
    (variables as float32 NumPy arrays, the names of the checkpoint variables that were skipped:
    step counters, optimiser slots, moving averages, and in a backbone load everything outside
    the backbone).

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped variable.
  """
  what = 'the TF checkpoint'
  if isinstance(checkpoint, str):
    what = checkpoint
    checkpoint = read_tf_checkpoint(checkpoint)
  values = {k: np.asarray(v) for k, v in checkpoint.items()}
  if backbone_only is None:
    backbone_only = 'logits/semantic/weights' not in values
  abstract = keys.abstract_variables(model, model.num_modalities, train=False)
  if backbone_only:
    abstract = {name: {'backbone': abstract[name]['backbone']}
                for name in variables_io.COLLECTIONS}
  entries = _deeplab_tf_entries(abstract)
  shapes = {e.torch_key: e.torch_shape for e in entries}

  skipped = [k for k in values if _TF_BOOKKEEPING.fullmatch(k)]
  if backbone_only:
    skipped += [k for k in values if k not in skipped and (
        not k.startswith(TF_BACKBONE_SCOPE) or k.startswith(_TF_IMAGENET_LOGITS))]
  values = {k: v for k, v in values.items() if k not in set(skipped)}
  missing = [k for k in shapes if k not in values]
  unexpected = [k for k in values if k not in shapes]
  misshaped = [f'{k}: got {values[k].shape}, expected {shape}' for k, shape in shapes.items()
               if k in values and values[k].shape != shape]
  part = 'the backbone of ' if backbone_only else ''
  error = keys.mismatch(f'{what} does not match {part}{keys.describe(model)}', missing,
                        unexpected, misshaped, noun='variables')
  if error:
    raise ValueError(error)

  leaves = {}
  for e in entries:
    value = values[e.torch_key]
    target = keys.get(abstract[e.collection], e.path)
    if e.kind == 'depthwise':
      value = value.transpose(0, 1, 3, 2)
    leaves[e.collection, e.path] = np.broadcast_to(value, target.shape).astype(np.float32)

  def fill(key_path, leaf):
    collection, *path = (k.key for k in key_path)
    if (collection, tuple(path)) not in leaves:  # alpha.
      return np.ones(leaf.shape, np.float32)
    return leaves[collection, tuple(path)]

  return jax.tree_util.tree_map_with_path(fill, dict(abstract)), skipped


def convert_tf_file(prefix: str, config, out_dir: str, overwrite: bool = False,
                    backbone_only: bool | None = None) -> dict[str, Any]:
  """Converts a TF-DeepLab checkpoint for build_model(config) (a DeepLab) and saves it.

  Returns:
    The variables written to out_dir (the backbone only for a backbone checkpoint).
  """
  model = models.build_model(config)
  if not isinstance(model, DeepLab):
    raise ValueError(f'--tf_checkpoint loads TF-DeepLab Xception-65 checkpoints into a DeepLab; '
                     f'the config builds a {type(model).__name__} (set config.model.name='
                     "'deeplab')")
  variables, skipped = deeplab_from_tf(prefix, model, backbone_only)
  if skipped:
    logging.info('%s: skipped %d checkpoint variables: %s', prefix, len(skipped),
                 keys.listing('skipped', skipped))
  variables_io.save_variables(out_dir, variables, overwrite=overwrite)
  return variables
