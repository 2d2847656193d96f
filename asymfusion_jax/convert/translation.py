"""CEN's image-translation generator and discriminator -> the Flax U-Net and PatchGAN.

The layout of CEN's PyTorch models (docs/method.md section 11): `conv{k}.conv.module.weight`,
`conv{k}.insnorm_conv.insnorm_{m}.*`, `deconv{k}.deconv.module.weight`,
`deconv{k}.insnorm_deconv.insnorm_{m}.*` and `alpha` in the generator; `conv{k}.conv.module.*`
and `conv{k}.insnorm.module.*` in the discriminator. Their InstanceNorm running statistics and
counters, and the norms that CEN creates but never applies, are checked for shape when present
and otherwise ignored: the models normalise with every image's own statistics.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from asymfusion_jax import models
from asymfusion_jax import torch_pickle
from asymfusion_jax.convert import keys
from asymfusion_jax.models.patchgan import PatchDiscriminator
from asymfusion_jax.models.unet import UNetGenerator

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
                           row: int | None, used: bool) -> list[keys.Entry]:
  """The state_dict entries of one PyTorch InstanceNorm2d(affine, track_running_stats).

  row: the row of the Flax (M, C) arrays it fills, or None for a (C,) shared norm. used=False
  for the norms that CEN creates but never applies: all their entries are 'ignored'.
  """
  entries = []
  for leaf, torch_name in _IN_LEAVES:
    kind = ('copy' if row is None else 'row') if used else 'ignored'
    entries.append(keys.Entry(f'{prefix}.{torch_name}', kind, 'params', path + (leaf,),
                              row=row, torch_shape=(channels,)))
  entries += [keys.Entry(f'{prefix}.{name}', 'ignored', torch_shape=(channels,))
              for name in _IN_RUNNING]
  entries.append(keys.Entry(f'{prefix}.{keys.NUM_BATCHES_TRACKED}', 'counter'))
  return entries


def _translation_entries(params: Mapping[str, Any],
                         num_modalities: int | None) -> list[keys.Entry]:
  """The CEN state_dict entries of UNetGenerator (num_modalities = M) or PatchDiscriminator
  (num_modalities None: shared norms) params, with the norms CEN never applies as 'ignored'."""
  entries = []
  convs, normed = {}, set()
  for path, leaves in keys.modules(params):
    name = '.'.join(path)
    if not path:  # alpha, the ensemble weights.
      entries += [keys.Entry(leaf, 'copy', 'params', (leaf,), torch_shape=tuple(value.shape))
                  for leaf, value in leaves.items()]
    elif path[-1] in _CONV_NORMS:
      kh, kw, cin, cout = leaves['kernel'].shape  # Transposed convs: (kh, kw, out, in).
      entries.append(keys.Entry(f'{name}.module.weight', 'kernel', 'params',
                                path + ('kernel',), torch_shape=(cout, cin, kh, kw)))
      entries.append(keys.Entry(f'{name}.module.bias', 'copy', 'params', path + ('bias',),
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
  entries = _translation_entries(abstract['params'], num_modalities)
  return keys.from_torch(state_dict, abstract, entries, what)['params']


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
  state_dict = keys.numpy_state_dict(state_dict)
  if CEN_GENERATOR_KEY not in state_dict:
    hint = (" (this looks like CEN's discriminator: convert it with patchgan_from_torch, or "
            'give it with --torch_discriminator beside the generator)'
            if CEN_CONV1_KEY in state_dict else '')
    raise ValueError(f"not a state_dict of CEN's translation generator: it has no key "
                     f'{CEN_GENERATOR_KEY}{hint}')
  if model is None:
    model = UNetGenerator(
        num_modalities=keys.require(state_dict, 'alpha').shape[0],
        ngf=keys.require(state_dict, CEN_CONV1_KEY).shape[0],
        num_downs=_count_blocks(state_dict, 'conv{}.conv.module.weight'), fusion='none')
  if num_modalities is not None and num_modalities != model.num_modalities:
    raise ValueError(f'num_modalities={num_modalities} disagrees with {keys.describe(model)} '
                     '(inferred from the key alpha unless a model is given)')
  size = 2 ** model.num_downs
  return _translation_params(state_dict, model, model.num_modalities,
                             (model.num_modalities, 1, size, size, 3),
                             f"CEN's generator for {keys.describe(model)}")


def patchgan_from_torch(state_dict: Mapping[str, Any],
                        model: PatchDiscriminator | None = None) -> dict[str, Any]:
  """CEN's PatchGAN discriminator state_dict as PatchDiscriminator params.

  model: the discriminator to fill (e.g. models.build_discriminator(config)); by default one
  with the ndf the state_dict implies. Raises ValueError naming every missing, unexpected or
  mis-shaped key.
  """
  state_dict = keys.numpy_state_dict(state_dict)
  if model is None:
    model = PatchDiscriminator(ndf=keys.require(state_dict, CEN_CONV1_KEY).shape[0])
  what = f"CEN's discriminator for {keys.describe(model)}"
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


def convert_translation_files(generator_path: str, state_dict: Mapping[str, Any], config,
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


