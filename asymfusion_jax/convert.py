"""Weights between PyTorch state_dicts and the Flax models.

Two PyTorch layouts of the segmentation models are understood (docs/method.md section 9):

- torchvision's ResNet-50/101/152 (`conv1.weight`, `bn1.running_mean`, `layer3.5.conv2.weight`,
  ...), the ImageNet initialisation of the encoder;
- the reference AsymFusion RefineNet, whose shared convolutions sit in `ModuleParallel` wrappers
  (`layer3.5.conv2.module.weight`) and whose BatchNorms are one `BatchNorm2d` per modality
  (`layer3.5.bn2.bn_1.running_var`), optionally saved from DataParallel (`module.` prefix).

The image-translation models load from the layout of CEN's PyTorch generator and discriminator
(docs/method.md section 11): `conv{k}.conv.module.weight`, `conv{k}.insnorm_conv.insnorm_{m}.*`,
`deconv{k}.deconv.module.weight`, `deconv{k}.insnorm_deconv.insnorm_{m}.*` and `alpha`; the
discriminator's `conv{k}.conv.module.*` and `conv{k}.insnorm.module.*` (translation_from_torch).
Their InstanceNorm running statistics and counters, and the norms that CEN creates but never
applies, are checked for shape when present and otherwise ignored: the models normalise with
every image's own statistics.

A third, pytorch-fid's FID Inception-v3 (`pt_inception-2015-12-05-6726825d.pth`, torchvision's
Inception3 names), converts with inception_from_torch for asymfusion_jax.fid.

The Flax module names mirror the PyTorch attribute names, so a conversion is a renaming plus a
transposition of the convolution kernels, torch (out, in, kh, kw) <-> Flax (kh, kw, in, out), and a
stacking of the per-modality BatchNorm vectors into (M, C) arrays. Every conversion is checked
against the shapes that the Flax model expects (from jax.eval_shape, so nothing is allocated), and
missing, unexpected or mis-shaped keys are all reported at once, by name.

`num_batches_tracked`, the one PyTorch BatchNorm buffer without a Flax counterpart: it only
changes the computation when a BatchNorm has momentum=None (a cumulative average), and every
BatchNorm here uses momentum 0.1 (docs/method.md section 2), so it is inert in both frameworks.
It is checked (a 0-d value, where PyTorch puts it) but not stored in the Flax variables, whose
`batch_stats` shapes the model defines. Export writes 0 (what a fresh PyTorch BatchNorm holds, and
what frozen-BatchNorm training leaves) or, for a faithful round trip, the counters of a given
state_dict: `refinenet_to_torch(refinenet_from_torch(sd), num_batches_tracked=sd) == sd`.

Command line (reads the .pth with asymfusion_jax.torch_pickle, so torch is not needed):

  python -m asymfusion_jax.convert --torch=refinenet.pth --config=configs/nyudv2_refinenet101.py \\
      --out=/tmp/refinenet101_ckpt

  python -m asymfusion_jax.convert --torch=G.pth [--torch_discriminator=D.pth] \\
      --config=configs/taskonomy_shade_depth.py --out=/tmp/translation_ckpt

  python -m asymfusion_jax.convert --inception=pt_inception-2015-12-05-6726825d.pth \
      --out=/tmp/fid_inception

A fourth, TF-DeepLab's name-based TensorFlow checkpoints of Xception-65 / DeepLabv3+ (the
ImageNet `xception_65` backbone or a whole Cityscapes model), converts with deeplab_from_tf:

  python -m asymfusion_jax.convert --tf_checkpoint=/path/to/model.ckpt \
      --config=configs/cityscapes_deeplab_xception65_rgb.py --out=/tmp/deeplab_ckpt

Each command writes an orbax checkpoint (asymfusion_jax.variables_io) that
`config.init.checkpoint` can load (or, for --inception, pytorch-fid's FID Inception-v3 for
asymfusion_jax.fid's --weights).
Given a reference RefineNet .pth it holds the full model variables; given a torchvision ResNet
.pth it holds the encoder only, at the full model's paths ({'params': {'backbone': ...},
'batch_stats': {'backbone': ...}}); training initialises the decoder itself. A TF-DeepLab
checkpoint gives the whole DeepLab, or, from the ImageNet backbone checkpoint, its backbone
alone at the same paths. A CEN generator (and discriminator) gives
{'params': {'generator': ..., 'discriminator': ...}, 'batch_stats': {}}, the parameter tree of the
translation training state.
"""

import dataclasses
import functools
import hashlib
import re
from typing import Any, Iterator, Mapping

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax import cli
from asymfusion_jax import config_lib
from asymfusion_jax import logger
from asymfusion_jax import models
from asymfusion_jax import torch_pickle
from asymfusion_jax import variables_io
from asymfusion_jax.models import inception
from asymfusion_jax.models.deeplab import DeepLab
from asymfusion_jax.models.patchgan import PatchDiscriminator
from asymfusion_jax.models.refinenet import RefineNet, build_model
from asymfusion_jax.models.resnet import STAGE_SIZES, ResNet
from asymfusion_jax.models.unet import UNetGenerator

DATA_PARALLEL_PREFIX = 'module.'
NUM_BATCHES_TRACKED = 'num_batches_tracked'
# Flax BatchNorm leaves and their PyTorch names, in the order PyTorch lists them.
_BN_LEAVES = (('params', 'scale', 'weight'), ('params', 'bias', 'bias'),
              ('batch_stats', 'mean', 'running_mean'), ('batch_stats', 'var', 'running_var'))
_DOWNSAMPLE = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
# Spatial size of the abstract input used to get the expected shapes; any size >= 32 works.
_SHAPE_PROBE_SIZE = 64
_MAX_LISTED = 20
# _Entry kinds that a state_dict may lack and that are not stored in the Flax variables.
_OPTIONAL_KINDS = ('counter', 'ignored')
# pytorch-fid's weights file is named after the first hex digits of its SHA-256 (torch.hub's rule).
STANDARD_INCEPTION_SHA256_PREFIX = '6726825d'


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One PyTorch state_dict value and where it lives in the Flax variables.

  kind: 'kernel' (a convolution kernel, transposed), 'matrix' (a Linear weight, transposed into a
  Dense kernel), 'copy' (same array), 'row' (row `row` of a per-modality (M, C) BatchNorm array),
  'counter' (num_batches_tracked, no Flax counterpart) or 'ignored' (a value without Flax
  counterpart that the model does not use, such as an InstanceNorm's running statistics).
  'counter' and 'ignored' entries are checked for shape when present and may be absent.
  """
  torch_key: str
  kind: str
  collection: str | None = None
  path: tuple[str, ...] = ()
  row: int | None = None
  torch_shape: tuple[int, ...] = ()


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


def _modules(params: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator:
  """Yields (module path, {leaf name: leaf}) for every module that holds parameters, in order."""
  leaves = {k: v for k, v in params.items() if not isinstance(v, Mapping)}
  if leaves:
    yield path, leaves
  for name, child in params.items():
    if isinstance(child, Mapping):
      yield from _modules(child, path + (name,))


def _get(tree: Mapping[str, Any], path: tuple[str, ...]):
  for name in path:
    tree = tree[name]
  return tree


def _entries(variables: Mapping[str, Any], reference: bool) -> list[_Entry]:
  """Every PyTorch state_dict entry of `variables` (RefineNet layout), in the Flax tree's order.

  reference=True gives the reference AsymFusion names (`.module.` convs, per-modality `bn_{m}`
  with num_batches_tracked); False gives torchvision's names, where all modalities' BatchNorm rows
  come from the one ImageNet BatchNorm.
  """
  entries = []
  for path, leaves in _modules(variables['params']):
    name = _torch_module_name(path)
    if 'kernel' in leaves and set(leaves) <= {'kernel', 'bias'}:
      base = name + ('.module' if reference else '')
      kh, kw, cin, cout = leaves['kernel'].shape
      entries.append(_Entry(f'{base}.weight', 'kernel', 'params', path + ('kernel',),
                            torch_shape=(cout, cin, kh, kw)))
      if 'bias' in leaves:
        entries.append(_Entry(f'{base}.bias', 'copy', 'params', path + ('bias',),
                              torch_shape=tuple(leaves['bias'].shape)))
    elif set(leaves) == {'scale', 'bias'}:
      num_modalities, channels = leaves['scale'].shape
      for m in range(num_modalities):
        prefix = f'{name}.bn_{m}' if reference else name
        for collection, leaf, torch_name in _BN_LEAVES:
          entries.append(_Entry(f'{prefix}.{torch_name}', 'row', collection, path + (leaf,),
                                row=m, torch_shape=(channels,)))
        if reference or m == 0:
          entries.append(_Entry(f'{prefix}.{NUM_BATCHES_TRACKED}', 'counter'))
    elif not path:
      for leaf, value in leaves.items():
        entries.append(_Entry(leaf, 'copy', 'params', (leaf,), torch_shape=tuple(value.shape)))
    else:
      raise ValueError(f'no PyTorch name for the Flax module {"/".join(path)} with parameters '
                       f'{sorted(leaves)}')
  return entries


def _to_numpy(value) -> np.ndarray:
  """A NumPy view of a torch tensor (duck-typed, so the library never imports torch) or array."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':  # NumPy has no bfloat16: exact in float32.
      value = value.float()
  if hasattr(value, 'numpy'):
    value = value.numpy()
  return np.asarray(value)


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops the `module.` prefix that DataParallel puts on every key (when every key has it)."""
  keys = list(state_dict)
  if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
    return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _listing(title: str, items: list[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f'\n    ... and {len(items) - len(shown)} more' if len(items) > len(shown) else ''
  return f'  {title} ({len(items)}):\n    ' + '\n    '.join(shown) + more


def _from_torch(state_dict: Mapping[str, Any], abstract: Mapping[str, Any],
                entries: list[_Entry], what: str) -> dict[str, Any]:
  """Fills the variables shaped like `abstract` from a (prefix-free, NumPy) state_dict.

  `entries` say where each state_dict key goes (_entries, _inception_entries); 'counter' entries
  (num_batches_tracked) may be absent from the state_dict.
  """
  shapes = {e.torch_key: e.torch_shape for e in entries}
  missing = [e.torch_key for e in entries
             if e.kind not in _OPTIONAL_KINDS and e.torch_key not in state_dict]
  missing = list(dict.fromkeys(missing))  # torchvision BatchNorms serve every modality's row.
  unexpected = [k for k in state_dict if k not in shapes]
  misshaped = [f'{k}: got {state_dict[k].shape}, expected {shape}'
               for k, shape in shapes.items()
               if k in state_dict and state_dict[k].shape != shape]
  if missing or unexpected or misshaped:
    parts = [_listing(title, items) for title, items in (
        ('missing keys', missing), ('unexpected keys', unexpected),
        ('mis-shaped keys', misshaped)) if items]
    raise ValueError(f'the state_dict does not match {what}:\n' + '\n'.join(parts))

  leaves = {}
  for e in entries:
    if e.kind in _OPTIONAL_KINDS:
      continue
    value = state_dict[e.torch_key]
    target = _get(abstract[e.collection], e.path)
    buf = leaves.setdefault((e.collection, e.path), np.empty(target.shape, target.dtype))
    if e.kind == 'kernel':
      buf[...] = value.transpose(2, 3, 1, 0)
    elif e.kind == 'matrix':
      buf[...] = value.T
    elif e.kind == 'row':
      buf[e.row] = value
    else:
      buf[...] = value

  def fill(key_path, _):
    collection, *path = (k.key for k in key_path)
    return leaves[collection, tuple(path)]

  return jax.tree_util.tree_map_with_path(fill, dict(abstract))


def _abstract_variables(model, num_modalities: int, **init_kwargs) -> dict[str, Any]:
  probe = jax.ShapeDtypeStruct(
      (num_modalities, 1, _SHAPE_PROBE_SIZE, _SHAPE_PROBE_SIZE, 3), jnp.float32)
  init = functools.partial(model.init, **init_kwargs)
  return dict(jax.eval_shape(init, jax.random.key(0), probe))


def _require(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f'the state_dict has no key {key!r}, so its model cannot be inferred')
  return state_dict[key]


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


def _describe(model) -> str:
  fields = ('depth', 'width', 'width_divisor', 'middle_flow_units', 'num_modalities',
            'decoder_width', 'num_classes', 'ngf', 'num_downs', 'ndf')
  values = ', '.join(f'{f}={getattr(model, f)}' for f in fields if hasattr(model, f))
  return f'{type(model).__name__}({values})'


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
  state_dict = {k: _to_numpy(v) for k, v in _strip_data_parallel(state_dict).items()
                if not k.startswith('fc.')}
  if model is None:
    model = ResNet(depth=_infer_depth(state_dict, '.weight'),
                   width=_require(state_dict, 'conv1.weight').shape[0])
  abstract = _abstract_variables(model, num_modalities)
  wrapped = {name: {'backbone': abstract[name]} for name in variables_io.COLLECTIONS}
  what = f'torchvision weights for {_describe(model)} with {num_modalities} modalities'
  variables = _from_torch(state_dict, wrapped, _entries(wrapped, reference=False), what)
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
      num_classes=_require(state_dict, 'clf_conv.module.weight').shape[0],
      num_modalities=num_modalities,
      width=_require(state_dict, 'conv1.module.weight').shape[0],
      decoder_width=_require(state_dict, 'p_ims1d2_outl2_dimred.module.weight').shape[0])


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
  state_dict = {k: _to_numpy(v) for k, v in _strip_data_parallel(state_dict).items()}
  if model is None:
    model = _infer_refinenet(state_dict)
  if num_modalities is not None and num_modalities != model.num_modalities:
    raise ValueError(f'num_modalities={num_modalities} disagrees with {_describe(model)} '
                     '(inferred from the keys bn1.bn_{m}.weight unless a model is given)')
  abstract = _abstract_variables(model, model.num_modalities, train=False)
  return _from_torch(state_dict, abstract, _entries(abstract, reference=True),
                     what=f'the reference AsymFusion {_describe(model)}')


def refinenet_to_torch(variables: Mapping[str, Any], num_batches_tracked=0,
                       prefix: str = '') -> dict[str, np.ndarray]:
  """asymfusion_jax RefineNet variables as the reference implementation's state_dict.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a RefineNet.
    num_batches_tracked: the BatchNorm counters to write, which the Flax variables do not hold
      (see the module docstring): an int for all of them, or a state_dict (with or without the
      `module.` prefix) to copy every `...bn_{m}.num_batches_tracked` from.
    prefix: put before every key, e.g. 'module.' for a DataParallel model.

  Returns:
    {key: NumPy array} with docs/method.md section 9's keys: float32 weights and buffers (kernels
    as (out, in, kh, kw)) and int64 0-d num_batches_tracked, ready for
    `model.load_state_dict({k: torch.from_numpy(v) ...})`.
  """
  counters = None
  if isinstance(num_batches_tracked, Mapping):
    counters = _strip_data_parallel(num_batches_tracked)
  out = {}
  for e in _entries(variables, reference=True):
    if e.kind == 'counter':
      if counters is None:
        value = num_batches_tracked
      elif e.torch_key in counters:
        value = _to_numpy(counters[e.torch_key])
      else:
        raise ValueError(f'num_batches_tracked has no entry {e.torch_key!r}')
      out[prefix + e.torch_key] = np.asarray(value, np.int64).reshape(())
      continue
    value = np.asarray(_get(variables[e.collection], e.path), np.float32)
    if e.kind == 'kernel':
      value = value.transpose(3, 2, 0, 1)
    elif e.kind == 'row':
      value = value[e.row]
    out[prefix + e.torch_key] = np.ascontiguousarray(value)
  return out


def _inception_entries(abstract: Mapping[str, Any]) -> list[_Entry]:
  """The PyTorch key of every FID Inception variable: its Flax module paths are the torch names."""
  entries = []
  for path, leaves in _modules(abstract['params']):
    name = '.'.join(path)
    if path[-1] == 'conv':
      kh, kw, cin, cout = leaves['kernel'].shape
      entries.append(_Entry(f'{name}.weight', 'kernel', 'params', path + ('kernel',),
                            torch_shape=(cout, cin, kh, kw)))
    elif path[-1] == 'bn':
      for collection, leaf, torch_name in _BN_LEAVES:
        entries.append(_Entry(f'{name}.{torch_name}', 'copy', collection, path + (leaf,),
                              torch_shape=tuple(leaves['scale'].shape)))
      entries.append(_Entry(f'{name}.{NUM_BATCHES_TRACKED}', 'counter'))
    elif path == ('fc',):
      cin, cout = leaves['kernel'].shape
      entries.append(_Entry('fc.weight', 'matrix', 'params', path + ('kernel',),
                            torch_shape=(cout, cin)))
      entries.append(_Entry('fc.bias', 'copy', 'params', path + ('bias',), torch_shape=(cout,)))
    else:
      raise ValueError(f'no PyTorch name for the Flax module {"/".join(path)} with parameters '
                       f'{sorted(leaves)}')
  return entries


def inception_from_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """pytorch-fid's FID Inception state_dict as variables of models.inception.InceptionV3.

  Args:
    state_dict: the keys of `pt_inception-2015-12-05-6726825d.pth` (torchvision Inception3 names:
      `Mixed_6b.branch7x7dbl_3.conv.weight`, ..., `fc.weight` of 1008 classes), torch tensors or
      NumPy arrays; num_batches_tracked may be present or not.

  Returns:
    {'params': ..., 'batch_stats': ...} float32, with the `fc` logits layer.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  state_dict = {k: _to_numpy(v) for k, v in _strip_data_parallel(state_dict).items()}
  what = 'the FID Inception-v3 (pytorch-fid pt_inception-2015-12-05)'
  if any(k.startswith('blocks.') for k in state_dict):
    what += (": keys 'blocks.*' are pytorch-fid's InceptionV3 wrapper, not the weights file "
             'that its fid_inception_v3() loads')
  abstract = inception.abstract_variables(logits=True)
  return _from_torch(state_dict, abstract, _inception_entries(abstract), what)


def inception_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """InceptionV3 variables (with `fc`) as pytorch-fid's state_dict, float32 NumPy arrays.

  The inverse of inception_from_torch; num_batches_tracked is written as 0 (inert at inference).
  """
  out = {}
  for e in _inception_entries(variables):
    if e.kind == 'counter':
      out[e.torch_key] = np.zeros((), np.int64)
      continue
    value = np.asarray(_get(variables[e.collection], e.path), np.float32)
    if e.kind == 'kernel':
      value = value.transpose(3, 2, 0, 1)
    elif e.kind == 'matrix':
      value = value.T
    out[e.torch_key] = np.ascontiguousarray(value)
  return out


def load_inception_file(torch_path: str) -> dict[str, Any]:
  """Reads and converts a FID Inception .pth; every error names the file.

  A file whose SHA-256 does not start with STANDARD_INCEPTION_SHA256_PREFIX (the one in the
  standard file's name) converts with a warning: its FIDs are not comparable to published ones.
  """
  digest = hashlib.sha256()
  with open(torch_path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  if not digest.hexdigest().startswith(STANDARD_INCEPTION_SHA256_PREFIX):
    logging.warning('%s is not pytorch-fid\'s pt_inception-2015-12-05-%s.pth (SHA-256 %s...): '
                    'FIDs computed with it are not comparable to published ones', torch_path,
                    STANDARD_INCEPTION_SHA256_PREFIX, digest.hexdigest()[:16])
  state_dict = torch_pickle.load_state_dict(torch_path)  # Its errors name the file.
  try:
    return inception_from_torch(state_dict)
  except ValueError as e:
    raise ValueError(f'{torch_path}: {e}') from e


def convert_inception_file(torch_path: str, out_dir: str,
                           overwrite: bool = False) -> dict[str, Any]:
  """Converts pytorch-fid's Inception .pth once into a variables checkpoint at out_dir.

  Returns:
    The variables written (asymfusion_jax.fid loads the directory with load_weights).
  """
  variables = load_inception_file(torch_path)
  variables_io.save_variables(out_dir, variables, overwrite=overwrite)
  return variables


# CEN's image-translation generator and discriminator (docs/method.md section 11).

# A key that only CEN's translation models have (the reference RefineNet has conv1.module.*),
# and one that only its generator has.
CEN_CONV1_KEY = 'conv1.conv.module.weight'
CEN_GENERATOR_KEY = 'deconv1.deconv.module.weight'
# Flax InstanceNorm leaves and their PyTorch names; the running statistics have none.
_IN_LEAVES = (('scale', 'weight'), ('bias', 'bias'))
_IN_RUNNING = ('running_mean', 'running_var')
# The norm of each convolution module of the translation models: per-modality norms hold one
# `insnorm_{m}` per modality, the discriminator's shared norm a `module`.
_CONV_NORMS = {'conv': 'insnorm_conv', 'deconv': 'insnorm_deconv'}
_SHARED_NORM = 'insnorm'


def _instance_norm_entries(prefix: str, path: tuple[str, ...], channels: int,
                           row: int | None, used: bool) -> list[_Entry]:
  """The state_dict entries of one PyTorch InstanceNorm2d(affine, track_running_stats).

  row: the row of the Flax (M, C) arrays it fills, or None for a (C,) shared norm. used=False
  for the norms that CEN creates but never applies: all their entries are 'ignored'.
  """
  entries = []
  for leaf, torch_name in _IN_LEAVES:
    kind = ('copy' if row is None else 'row') if used else 'ignored'
    entries.append(_Entry(f'{prefix}.{torch_name}', kind, 'params', path + (leaf,), row=row,
                          torch_shape=(channels,)))
  entries += [_Entry(f'{prefix}.{name}', 'ignored', torch_shape=(channels,))
              for name in _IN_RUNNING]
  entries.append(_Entry(f'{prefix}.{NUM_BATCHES_TRACKED}', 'counter'))
  return entries


def _translation_entries(params: Mapping[str, Any], num_modalities: int | None) -> list[_Entry]:
  """The CEN state_dict entries of UNetGenerator (num_modalities = M) or PatchDiscriminator
  (num_modalities None: shared norms) params, with the norms CEN never applies as 'ignored'."""
  entries = []
  convs, normed = {}, set()
  for path, leaves in _modules(params):
    name = '.'.join(path)
    if not path:  # alpha, the ensemble weights.
      entries += [_Entry(leaf, 'copy', 'params', (leaf,), torch_shape=tuple(value.shape))
                  for leaf, value in leaves.items()]
    elif path[-1] in _CONV_NORMS:
      kh, kw, cin, cout = leaves['kernel'].shape  # Transposed convs: (kh, kw, out, in).
      entries.append(_Entry(f'{name}.module.weight', 'kernel', 'params', path + ('kernel',),
                            torch_shape=(cout, cin, kh, kw)))
      entries.append(_Entry(f'{name}.module.bias', 'copy', 'params', path + ('bias',),
                            torch_shape=tuple(leaves['bias'].shape)))
      convs[path[:-1]] = (path[-1], leaves['bias'].shape[0])
    elif path[-1] in _CONV_NORMS.values() or path[-1] == _SHARED_NORM:
      normed.add(path[:-1])
      channels = leaves['scale'].shape[-1]
      if leaves['scale'].ndim == 1:
        entries += _instance_norm_entries(f'{name}.module', path, channels, None, True)
      else:
        for m in range(leaves['scale'].shape[0]):
          entries += _instance_norm_entries(f'{name}.insnorm_{m}', path, channels, m, True)
    else:
      raise ValueError(f'no PyTorch name for the Flax module {"/".join(path)} with parameters '
                       f'{sorted(leaves)}')
  for block, (conv, channels) in convs.items():
    if block in normed:
      continue
    prefix = '.'.join(block)
    if num_modalities is None:
      entries += _instance_norm_entries(f'{prefix}.{_SHARED_NORM}.module', (), channels, None,
                                        False)
    else:
      for m in range(num_modalities):
        entries += _instance_norm_entries(f'{prefix}.{_CONV_NORMS[conv]}.insnorm_{m}', (),
                                          channels, m, False)
  return entries


def _count_blocks(state_dict: Mapping[str, Any], pattern: str) -> int:
  count = 0
  while pattern.format(count + 1) in state_dict:
    count += 1
  return count


def _translation_params(state_dict: Mapping[str, Any], model, num_modalities: int | None,
                        probe: tuple[int, ...], what: str) -> dict[str, Any]:
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct(probe, jnp.float32))
  abstract = {'params': abstract['params']}
  return _from_torch(state_dict, abstract, _translation_entries(abstract['params'],
                                                                num_modalities), what)['params']


def unet_from_torch(state_dict: Mapping[str, Any], num_modalities: int | None = None,
                    model: UNetGenerator | None = None) -> dict[str, Any]:
  """CEN's image-translation generator state_dict as UNetGenerator params.

  Args:
    state_dict: CEN's keys (docs/method.md section 11), torch tensors or NumPy arrays, with or
      without DataParallel's `module.` prefix.
    num_modalities: M, checked against the state_dict's `alpha`; inferred when None.
    model: the UNetGenerator to fill (e.g. models.build_generator(config)); by default one with
      the ngf, num_downs and M that the state_dict implies. Fusion has no parameters, so the
      params serve a generator with or without it.

  Returns:
    The generator's params tree, float32 NumPy arrays.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  state_dict = {k: _to_numpy(v) for k, v in _strip_data_parallel(state_dict).items()}
  if CEN_GENERATOR_KEY not in state_dict:
    hint = (" (this looks like CEN's discriminator: convert it with patchgan_from_torch, or "
            'give it with --torch_discriminator beside the generator)'
            if CEN_CONV1_KEY in state_dict else '')
    raise ValueError(f"not a state_dict of CEN's translation generator: it has no key "
                     f'{CEN_GENERATOR_KEY}{hint}')
  if model is None:
    model = UNetGenerator(
        num_modalities=_require(state_dict, 'alpha').shape[0],
        ngf=_require(state_dict, CEN_CONV1_KEY).shape[0],
        num_downs=_count_blocks(state_dict, 'conv{}.conv.module.weight'), fusion='none')
  if num_modalities is not None and num_modalities != model.num_modalities:
    raise ValueError(f'num_modalities={num_modalities} disagrees with {_describe(model)} '
                     '(inferred from the key alpha unless a model is given)')
  size = 2 ** model.num_downs
  return _translation_params(state_dict, model, model.num_modalities,
                             (model.num_modalities, 1, size, size, 3),
                             f"CEN's generator for {_describe(model)}")


def patchgan_from_torch(state_dict: Mapping[str, Any],
                        model: PatchDiscriminator | None = None) -> dict[str, Any]:
  """CEN's PatchGAN discriminator state_dict as PatchDiscriminator params.

  model: the discriminator to fill (e.g. models.build_discriminator(config)); by default one
  with the ndf the state_dict implies. Raises ValueError naming every missing, unexpected or
  mis-shaped key.
  """
  state_dict = {k: _to_numpy(v) for k, v in _strip_data_parallel(state_dict).items()}
  if model is None:
    model = PatchDiscriminator(ndf=_require(state_dict, CEN_CONV1_KEY).shape[0])
  what = f"CEN's discriminator for {_describe(model)}"
  if CEN_GENERATOR_KEY in state_dict:
    what += " (this state_dict is CEN's generator)"
  return _translation_params(state_dict, model, None, (1, 64, 64, 6), what)


def translation_from_torch(generator_state_dict: Mapping[str, Any],
                           discriminator_state_dict: Mapping[str, Any] | None = None,
                           num_modalities: int | None = None,
                           generator: UNetGenerator | None = None,
                           discriminator: PatchDiscriminator | None = None) -> dict[str, Any]:
  """CEN's generator (and discriminator) state_dicts as the translation model's variables.

  Args:
    generator_state_dict, num_modalities, generator: as for unet_from_torch.
    discriminator_state_dict, discriminator: as for patchgan_from_torch; without a
      discriminator state_dict the result holds the generator only (training initialises the
      discriminator itself).

  Returns:
    {'params': {'generator': ..., 'discriminator': ...}, 'batch_stats': {}}: the params tree
    of the translation training state, in the variables format of asymfusion_jax.variables_io
    (the models have no batch_stats).
  """
  params = {'generator': unet_from_torch(generator_state_dict, num_modalities, generator)}
  if discriminator_state_dict is not None:
    params['discriminator'] = patchgan_from_torch(discriminator_state_dict, discriminator)
  return {'params': params, 'batch_stats': {}}


def _convert_translation_files(generator_path: str, state_dict: Mapping[str, Any], config,
                               discriminator_path: str | None) -> dict[str, Any]:
  """The variables of CEN .pth files for the translation models of `config`; errors name the
  file at fault."""
  params = {}
  try:
    params['generator'] = unet_from_torch(state_dict, model=models.build_generator(config))
  except ValueError as e:
    raise ValueError(f'{generator_path}: {e}') from e
  if discriminator_path is not None:
    discriminator_state_dict = torch_pickle.load_state_dict(discriminator_path)
    try:
      params['discriminator'] = patchgan_from_torch(
          discriminator_state_dict, model=models.build_discriminator(config))
    except ValueError as e:
      raise ValueError(f'{discriminator_path}: {e}') from e
  return {'params': params, 'batch_stats': {}}


def convert_file(torch_path: str, config, out_dir: str, overwrite: bool = False,
                 discriminator_path: str | None = None) -> dict[str, Any]:
  """Converts a .pth (reference RefineNet, torchvision ResNet or CEN translation generator)
  and saves it for `config`.

  A reference RefineNet is checked against build_model(config); a torchvision ResNet against
  the config's encoder, and only the encoder variables are written, under 'backbone'. A CEN
  generator (with `discriminator_path`, CEN's discriminator) is checked against
  build_generator(config) (and build_discriminator(config)) and written as
  {'params': {'generator': ..., 'discriminator': ...}, 'batch_stats': {}}.

  Returns:
    The variables written to out_dir.
  """
  state_dict = _strip_data_parallel(torch_pickle.load_state_dict(torch_path))
  num_modalities = len(config.modalities)
  if CEN_CONV1_KEY in state_dict:
    variables = _convert_translation_files(torch_path, state_dict, config, discriminator_path)
  elif discriminator_path is not None:
    raise ValueError(f'{discriminator_path}: a discriminator goes with CEN\'s translation '
                     f'generator, but {torch_path} is not one (it has no {CEN_CONV1_KEY})')
  elif 'conv1.module.weight' in state_dict:
    variables = refinenet_from_torch(state_dict, num_modalities, model=build_model(config))
  elif 'conv1.weight' in state_dict:
    # torchvision's weights fill the encoder without fusion: AsymFusion has no parameters, and
    # the baselines' aggregations, which torchvision lacks, keep their initialisation when
    # the converted file is loaded (initialization.merge).
    encoder = ResNet(depth=config.model.depth, fusion='none', width=config.model.width)
    backbone = resnet_from_torch(state_dict, num_modalities, model=encoder)
    variables = {name: {'backbone': backbone[name]} for name in variables_io.COLLECTIONS}
  else:
    raise ValueError(f'{torch_path} is neither a reference AsymFusion RefineNet '
                     f'(conv1.module.weight), a CEN translation generator ({CEN_CONV1_KEY}) '
                     'nor a torchvision ResNet (conv1.weight)')
  variables_io.save_variables(out_dir, variables, overwrite=overwrite)
  return variables


# TF-DeepLab's name-based TensorFlow checkpoints (Xception-65 / DeepLabv3+).

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


def _deeplab_tf_entries(abstract: Mapping[str, Any]) -> list[_Entry]:
  """The TF-DeepLab variable name of every DeepLab variable except the ensemble's alpha.

  kind 'copy', 'depthwise' (TF (k, k, C, 1) -> Flax (k, k, 1, C)) or 'rows' (one BatchNorm
  vector copied to every modality's row). torch_shape holds the TF shape.
  """
  entries = []
  for path, leaves in _modules(abstract['params']):
    if not path:
      continue  # alpha: the ensemble weights, which TF-DeepLab does not have.
    if path[-1] == 'conv':
      scope = _tf_scope(path[:-1])
      kh, kw, cin, cout = leaves['kernel'].shape
      if path[-2] == 'depthwise':
        entries.append(_Entry(f'{scope}/depthwise_weights', 'depthwise', 'params',
                              path + ('kernel',), torch_shape=(kh, kw, cout, cin)))
      else:
        entries.append(_Entry(f'{scope}/weights', 'copy', 'params', path + ('kernel',),
                              torch_shape=(kh, kw, cin, cout)))
    elif path[-1] == 'BatchNorm':
      scope = _tf_scope(path)
      channels = leaves['scale'].shape[1]
      for (collection, leaf), tf_name in _TF_BN_LEAVES.items():
        entries.append(_Entry(f'{scope}/{tf_name}', 'rows', collection, path + (leaf,),
                              torch_shape=(channels,)))
    elif path == ('logits_semantic',):
      scope = _tf_scope(path)
      entries.append(_Entry(f'{scope}/weights', 'copy', 'params', path + ('kernel',),
                            torch_shape=tuple(leaves['kernel'].shape)))
      entries.append(_Entry(f'{scope}/biases', 'copy', 'params', path + ('bias',),
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
  abstract = _abstract_variables(model, model.num_modalities, train=False)
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
  if missing or unexpected or misshaped:
    parts = [_listing(title, items) for title, items in (
        ('missing variables', missing), ('unexpected variables', unexpected),
        ('mis-shaped variables', misshaped)) if items]
    part = 'the backbone of ' if backbone_only else ''
    raise ValueError(f'{what} does not match {part}{_describe(model)}:\n' + '\n'.join(parts))

  leaves = {}
  for e in entries:
    value = values[e.torch_key]
    target = _get(abstract[e.collection], e.path)
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
                 _listing('skipped', skipped))
  variables_io.save_variables(out_dir, variables, overwrite=overwrite)
  return variables


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logger.setup_cli_logging()
  args = flags.FLAGS
  if args.torch_discriminator and not args.torch:
    raise app.UsageError("--torch_discriminator (CEN's discriminator) needs --torch (CEN's "
                         'generator) and --config')
  if args.tf_checkpoint:
    if args.torch or args.inception or not args.config:
      raise app.UsageError('--tf_checkpoint needs --config (a DeepLab) and no --torch/--inception')
    source = args.tf_checkpoint
    variables = convert_tf_file(source, args.config, args.out, overwrite=args.overwrite)
  elif args.inception:
    if args.torch or args.config:
      raise app.UsageError('--inception converts the FID Inception alone: drop --torch/--config')
    source = args.inception
    variables = convert_inception_file(source, args.out, overwrite=args.overwrite)
  else:
    if not args.torch or not args.config:
      raise app.UsageError('give --torch or --tf_checkpoint with --config (a segmentation or '
                           'translation model), or --inception')
    source = args.torch
    variables = convert_file(args.torch, args.config, args.out, overwrite=args.overwrite,
                             discriminator_path=args.torch_discriminator)
  count = sum(np.size(x) for x in jax.tree.leaves(variables['params']))
  logging.info('wrote %d parameters from %s to %s', count, source, args.out)


def _define_flags():
  """CLI flags, defined only when run as a script so that importing this module defines none."""
  flags.DEFINE_string('torch', None, "PyTorch .pth: a reference RefineNet, a torchvision ResNet "
                      "or CEN's image-translation generator.")
  flags.DEFINE_string('torch_discriminator', None, "CEN's PatchGAN discriminator .pth, converted "
                      'with the generator of --torch.')
  flags.DEFINE_string('inception', None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth: "
                      'converted for asymfusion_jax.fid (no --torch or --config).')
  flags.DEFINE_string('tf_checkpoint', None, "TF-DeepLab checkpoint prefix (model.ckpt for "
                      'model.ckpt.index): an ImageNet xception_65 backbone or a whole DeepLabv3+; '
                      'needs a DeepLab --config.')
  flags.DEFINE_string('out', None, 'Directory of the orbax checkpoint to write.')
  flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
  config_lib.DEFINE_config_file('config', None, 'Config file of the model to convert for.')
  flags.mark_flags_as_required(['out'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main, 'convert')  # An error is one line.
