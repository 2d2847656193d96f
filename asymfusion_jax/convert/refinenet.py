"""torchvision's ResNet and the reference AsymFusion RefineNet <-> the Flax RefineNet.

Two PyTorch layouts of the segmentation models are understood (docs/method.md section 9):

- torchvision's ResNet-50/101/152 (`conv1.weight`, `bn1.running_mean`, `layer3.5.conv2.weight`,
  ...), the ImageNet initialisation of the encoder;
- the reference AsymFusion RefineNet, whose shared convolutions sit in `ModuleParallel` wrappers
  (`layer3.5.conv2.module.weight`) and whose BatchNorms are one `BatchNorm2d` per modality
  (`layer3.5.bn2.bn_1.running_var`), optionally saved from DataParallel (`module.` prefix).

`num_batches_tracked` has no Flax counterpart (see asymfusion_jax.convert): it is checked and
dropped on import; export writes 0, or the counters of a given state_dict for a faithful round
trip: `refinenet_to_torch(refinenet_from_torch(sd), num_batches_tracked=sd) == sd`.
"""

import re
from typing import Any, Mapping

import numpy as np

from asymfusion_jax import variables_io
from asymfusion_jax.convert import keys
from asymfusion_jax.models import scan_layout
from asymfusion_jax.models.refinenet import RefineNet
from asymfusion_jax.models.resnet import STAGE_SIZES, ResNet

_DOWNSAMPLE = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}


def _torch_module_name(path: tuple[str, ...]) -> str:
  """The PyTorch module path of the Flax module at `path` (inside a RefineNet's params)."""
  if path and path[0] == 'backbone':
    parts = []
    for name in path[1:]:
      block = re.fullmatch(r'layer(\d+)_(\d+)', name)
      parts.append(f'layer{block[1]}.{block[2]}' if block else _DOWNSAMPLE.get(name, name))
    return '.'.join(parts)
  # The decoder's RCU and CRP chains are one block wrapped in an nn.Sequential, hence the '.0.'.
  return '.0.'.join(path)


def _entries(variables: Mapping[str, Any], reference: bool) -> list[keys.Entry]:
  """Every PyTorch state_dict entry of `variables` (RefineNet layout), in the Flax tree's order.

  reference=True gives the reference AsymFusion names (`.module.` convs, per-modality `bn_{m}`
  with num_batches_tracked); False gives torchvision's names, where all modalities' BatchNorm rows
  come from the one ImageNet BatchNorm.
  """
  entries = []
  for path, leaves in keys.modules(variables['params']):
    name = _torch_module_name(path)
    if 'kernel' in leaves and set(leaves) <= {'kernel', 'bias'}:
      base = name + ('.module' if reference else '')
      kh, kw, cin, cout = leaves['kernel'].shape
      entries.append(keys.Entry(f'{base}.weight', 'kernel', 'params', path + ('kernel',),
                                torch_shape=(cout, cin, kh, kw)))
      if 'bias' in leaves:
        entries.append(keys.Entry(f'{base}.bias', 'copy', 'params', path + ('bias',),
                                  torch_shape=tuple(leaves['bias'].shape)))
    elif set(leaves) == {'scale', 'bias'}:
      num_modalities, channels = leaves['scale'].shape
      for m in range(num_modalities):
        prefix = f'{name}.bn_{m}' if reference else name
        for collection, leaf, torch_name in keys.BN_LEAVES:
          entries.append(keys.Entry(f'{prefix}.{torch_name}', 'row', collection,
                                    path + (leaf,), row=m, torch_shape=(channels,)))
        if reference or m == 0:
          entries.append(keys.Entry(f'{prefix}.{keys.NUM_BATCHES_TRACKED}', 'counter'))
    elif not path:
      for leaf, value in leaves.items():
        entries.append(keys.Entry(leaf, 'copy', 'params', (leaf,),
                                  torch_shape=tuple(value.shape)))
    else:
      raise ValueError(f'no PyTorch name for the Flax module {"/".join(path)} with parameters '
                       f'{sorted(leaves)}')
  return entries


def _infer_depth(state_dict: Mapping[str, Any], conv_suffix: str) -> int:
  """The ResNet depth whose blocks per stage match the `layer{s}.{i}.conv1` keys present."""
  blocks = []
  for s in range(1, 5):
    count = 0
    while f'layer{s}.{count}.conv1{conv_suffix}' in state_dict:
      count += 1
    blocks.append(count)
  for depth, sizes in STAGE_SIZES.items():
    if tuple(blocks) == sizes:
      return depth
  raise ValueError(f'the state_dict has {tuple(blocks)} blocks per stage (keys '
                   f'layer{{s}}.{{i}}.conv1{conv_suffix}), which matches no supported ResNet '
                   f'depth: {STAGE_SIZES}')


def resnet_from_torch(state_dict: Mapping[str, Any], num_modalities: int,
                      model: ResNet | None = None) -> dict[str, Any]:
  """A torchvision ResNet state_dict as multimodal backbone variables.

  Args:
    state_dict: torchvision ResNet-50/101/152 keys (torch tensors or NumPy arrays; a DataParallel
      `module.` prefix is dropped). `fc.*` is ignored: the classifier has no place here.
    num_modalities: M. The ImageNet BatchNorm is copied to every modality (docs/method.md
      section 8).
    model: the ResNet to fill (its depth and width are checked against the state_dict); by
      default one whose depth and width are inferred from the keys.

  Returns:
    {'params': ..., 'batch_stats': ...} laid out as a ResNet's init gives them, i.e. as
    params['backbone'] and batch_stats['backbone'] of a RefineNet.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  state_dict = {k: v for k, v in keys.numpy_state_dict(state_dict).items()
                if not k.startswith('fc.')}
  if model is None:
    model = ResNet(depth=_infer_depth(state_dict, '.weight'),
                   width=keys.require(state_dict, 'conv1.weight').shape[0])
  abstract = keys.abstract_variables(model, num_modalities)
  wrapped = {name: {'backbone': abstract[name]} for name in variables_io.COLLECTIONS}
  what = f'torchvision weights for {keys.describe(model)} with {num_modalities} modalities'
  variables = keys.from_torch(state_dict, wrapped, _entries(wrapped, reference=False), what)
  return {name: variables[name]['backbone'] for name in variables_io.COLLECTIONS}


def _infer_refinenet(state_dict: Mapping[str, Any]) -> RefineNet:
  """The RefineNet whose hyperparameters the reference state_dict's keys and shapes imply."""
  num_modalities = 0
  while f'bn1.bn_{num_modalities}.weight' in state_dict:
    num_modalities += 1
  if num_modalities == 0:
    hint = (' (this looks like a torchvision ResNet: use resnet_from_torch)'
            if 'bn1.weight' in state_dict else '')
    raise ValueError('not a state_dict of the reference AsymFusion RefineNet: it has no key '
                     f'bn1.bn_0.weight{hint}')
  return RefineNet(
      depth=_infer_depth(state_dict, '.module.weight'),
      num_classes=keys.require(state_dict, 'clf_conv.module.weight').shape[0],
      num_modalities=num_modalities,
      width=keys.require(state_dict, 'conv1.module.weight').shape[0],
      decoder_width=keys.require(state_dict, 'p_ims1d2_outl2_dimred.module.weight').shape[0])


def refinenet_from_torch(state_dict: Mapping[str, Any], num_modalities: int | None = None,
                         model: RefineNet | None = None) -> dict[str, Any]:
  """The reference AsymFusion RefineNet's state_dict as variables of asymfusion_jax's RefineNet.

  Args:
    state_dict: docs/method.md section 9 keys, with or without DataParallel's `module.` prefix
      (torch tensors or NumPy arrays). num_batches_tracked entries may be present or not; they are
      checked and dropped (see the module docstring).
    num_modalities: M, checked against the state_dict's `bn1.bn_{m}` keys; inferred when None.
    model: the RefineNet to fill (e.g. build_model(config)); by default one with the depth, widths,
      number of classes and modalities that the state_dict implies. Fusion has no parameters, so
      the variables serve a model with or without it.

  Returns:
    {'params': ..., 'batch_stats': ...} for RefineNet.apply, float32.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  state_dict = keys.numpy_state_dict(state_dict)
  if model is None:
    model = _infer_refinenet(state_dict)
  if num_modalities is not None and num_modalities != model.num_modalities:
    raise ValueError(f'num_modalities={num_modalities} disagrees with {keys.describe(model)} '
                     '(inferred from the keys bn1.bn_{m}.weight unless a model is given)')
  abstract = keys.abstract_variables(model, model.num_modalities, train=False)
  return keys.from_torch(state_dict, abstract, _entries(abstract, reference=True),
                         what=f'the reference AsymFusion {keys.describe(model)}')


def refinenet_to_torch(variables: Mapping[str, Any], num_batches_tracked=0,
                       prefix: str = '') -> dict[str, np.ndarray]:
  """asymfusion_jax RefineNet variables as the reference implementation's state_dict.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a RefineNet, in either models.scan_layout.
    num_batches_tracked: the BatchNorm counters to write, which the Flax variables do not hold
      (see the module docstring): an int for all of them, or a state_dict (with or without the
      `module.` prefix) to copy every `...bn_{m}.num_batches_tracked` from.
    prefix: put before every key, e.g. 'module.' for a DataParallel model.

  Returns:
    {key: NumPy array} with docs/method.md section 9's keys: float32 weights and buffers (kernels
    as (out, in, kh, kw)) and int64 0-d num_batches_tracked, ready for
    `model.load_state_dict({k: torch.from_numpy(v) ...})`.
  """
  variables = scan_layout.canonical(variables)
  counters = None
  if isinstance(num_batches_tracked, Mapping):
    counters = keys.strip_data_parallel(num_batches_tracked)
  out = {}
  for e in _entries(variables, reference=True):
    if e.kind == 'counter':
      if counters is None:
        value = num_batches_tracked
      elif e.torch_key in counters:
        value = keys.to_numpy(counters[e.torch_key])
      else:
        raise ValueError(f'num_batches_tracked has no entry {e.torch_key!r}')
      out[prefix + e.torch_key] = np.asarray(value, np.int64).reshape(())
    else:
      out[prefix + e.torch_key] = keys.to_torch(variables, e)
  return out
