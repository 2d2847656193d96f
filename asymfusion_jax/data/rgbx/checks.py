"""Checks of an rgbx config's data keys and modalities, run before anything is written.

validation.check_dataset calls `check_config` for a config whose data.name is 'rgbx'. The
modalities are the dataset's own, any names that config.data.modality_folders maps to folders
(the segmentation checks ask `pipeline.modality_names` for them).
"""

import math
import numbers

from asymfusion_jax.data.rgbx import normalisation as norm_lib


def _fail(key: str, value, requirement: str):
  from asymfusion_jax import validation  # pylint: disable=g-import-not-at-top
  if hasattr(value, 'to_dict'):  # A ConfigDict's repr spans lines.
    value = value.to_dict()
  raise validation.ConfigError(f'config.{key}={value!r} must be {requirement}')


def _mapping(value) -> dict | None:
  try:
    return dict(value.items())
  except AttributeError:
    return None


def _folder(key: str, value) -> str:
  if not isinstance(value, str) or not value or value.startswith('/') or '..' in value.split('/'):
    _fail(key, value, 'a folder name inside the dataset folder (e.g. \'Depth\')')
  return value.rstrip('/')


def _real(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _channels(key: str, value, positive: bool) -> None:
  values = (value,) if _real(value) else tuple(value) if hasattr(value, '__len__') and not (
      isinstance(value, str)) else None
  if values is None or len(values) not in (1, 3) or not all(
      _real(v) and (v > 0 or not positive) for v in values):
    _fail(key, value, f'one finite number{" > 0" if positive else ""}, or three (per channel)')


def folders(config) -> dict[str, str]:
  """config.data.modality_folders, checked: {modality name: folder}, distinct folders inside
  the dataset folder, none of them the label folder."""
  data = config.data
  found = _mapping(data.get('modality_folders'))
  if not found:
    _fail('data.modality_folders', data.get('modality_folders'),
          "a non-empty mapping of modality name -> folder, e.g. {'rgb': 'RGB', 'depth': 'Depth'}")
  named = {name: _folder(f'data.modality_folders.{name}', folder)
           for name, folder in found.items()}
  label_folder = _folder('data.label_folder', data.get('label_folder'))
  if len(set(named.values()) | {label_folder}) != len(named) + 1:
    _fail('data.modality_folders', found, f'distinct folders, none of them the label folder '
                                          f'{label_folder!r}')
  return named


def check_config(config) -> None:
  """Raises validation.ConfigError naming the first invalid rgbx key."""
  data = config.data
  named = folders(config)  # config.modalities are checked against them (modality_names).
  lists = _mapping(data.get('list_files')) or {}
  for split in ('train', 'val'):
    if not isinstance(lists.get(split), str) or not lists[split]:
      _fail(f'data.list_files.{split}', lists.get(split),
            'the name of a list file in the dataset folder (e.g. \'train.txt\', \'test.txt\')')
  offset = data.get('label_offset')
  if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
    _fail('data.label_offset', offset, 'an integer >= 0: 1 when 0 marks unlabelled pixels and '
                                       'classes are 1..N (DFormer), 0 when labels are classes')
  from asymfusion_jax import validation  # pylint: disable=g-import-not-at-top
  validation.integer(config, 'data.min_short_side', 0)
  _check_normalisation(config, named)
  _check_classes(config)


def _check_normalisation(config, named: dict) -> None:
  entries = _mapping(config.data.get('normalisation'))
  if entries is None:
    _fail('data.normalisation', config.data.get('normalisation'),
          'a mapping of modality name -> {scale, mean, std, interpolation}')
  for name, entry in entries.items():
    key = f'data.normalisation.{name}'
    fields = _mapping(entry)
    if name not in named:
      _fail(key, entry, f'the normalisation of a modality of config.data.modality_folders '
                        f'({sorted(named)})')
    if fields is None or not set(fields) <= set(norm_lib.KEYS):
      _fail(key, entry, f'a mapping with some of the keys {norm_lib.KEYS}')
    if ('mean' in fields) != ('std' in fields) or ('scale' in fields and 'mean' not in fields):
      _fail(key, entry, 'given mean and std together (and scale only with them), or neither '
                        '(then the statistics measured at build time are used)')
    if 'scale' in fields and not (_real(fields['scale']) and fields['scale'] > 0):
      _fail(f'{key}.scale', fields['scale'], 'a finite number > 0')
    if 'mean' in fields:
      _channels(f'{key}.mean', fields['mean'], positive=False)
      _channels(f'{key}.std', fields['std'], positive=True)
    if fields.get('interpolation', 'nearest') not in norm_lib.INTERPOLATIONS:
      _fail(f'{key}.interpolation', fields['interpolation'],
            f'one of {norm_lib.INTERPOLATIONS}')


def _check_classes(config) -> None:
  k = config.model.num_classes
  names = config.data.get('class_names', ())
  if names and (len(names) != k or not all(isinstance(n, str) for n in names)):
    _fail('data.class_names', names, f'empty, or {k} names (config.model.num_classes)')
  palette = config.data.get('palette', ())
  if palette and (len(palette) != k or not all(
      hasattr(c, '__len__') and len(c) == 3 and all(
          isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)):
    _fail('data.palette', palette, f'empty, or {k} RGB colours of integers 0..255 '
                                   '(config.model.num_classes)')
