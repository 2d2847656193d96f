"""pytorch-fid's FID Inception-v3 <-> models.inception.InceptionV3 (for asymfusion_jax.fid).

The weights file is `pt_inception-2015-12-05-6726825d.pth`, with torchvision's Inception3 names;
the Flax module paths are those names, so a conversion is a renaming plus the kernel
transpositions.
"""

import hashlib
from typing import Any, Mapping

from absl import logging
import numpy as np

from asymfusion_jax import torch_pickle
from asymfusion_jax import variables_io
from asymfusion_jax.convert import keys
from asymfusion_jax.models import inception

# pytorch-fid's weights file is named after the first hex digits of its SHA-256 (torch.hub's rule).
STANDARD_INCEPTION_SHA256_PREFIX = '6726825d'


def _inception_entries(abstract: Mapping[str, Any]) -> list[keys.Entry]:
  """The PyTorch key of every FID Inception variable: its Flax module paths are the torch names."""
  entries = []
  for path, leaves in keys.modules(abstract['params']):
    name = '.'.join(path)
    if path[-1] == 'conv':
      kh, kw, cin, cout = leaves['kernel'].shape
      entries.append(keys.Entry(f'{name}.weight', 'kernel', 'params', path + ('kernel',),
                                torch_shape=(cout, cin, kh, kw)))
    elif path[-1] == 'bn':
      for collection, leaf, torch_name in keys.BN_LEAVES:
        entries.append(keys.Entry(f'{name}.{torch_name}', 'copy', collection, path + (leaf,),
                                  torch_shape=tuple(leaves['scale'].shape)))
      entries.append(keys.Entry(f'{name}.{keys.NUM_BATCHES_TRACKED}', 'counter'))
    elif path == ('fc',):
      cin, cout = leaves['kernel'].shape
      entries.append(keys.Entry('fc.weight', 'matrix', 'params', path + ('kernel',),
                                torch_shape=(cout, cin)))
      entries.append(keys.Entry('fc.bias', 'copy', 'params', path + ('bias',),
                                torch_shape=(cout,)))
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
  state_dict = keys.numpy_state_dict(state_dict)
  what = 'the FID Inception-v3 (pytorch-fid pt_inception-2015-12-05)'
  if any(k.startswith('blocks.') for k in state_dict):
    what += (": keys 'blocks.*' are pytorch-fid's InceptionV3 wrapper, not the weights file "
             'that its fid_inception_v3() loads')
  abstract = inception.abstract_variables(logits=True)
  return keys.from_torch(state_dict, abstract, _inception_entries(abstract), what)


def inception_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """InceptionV3 variables (with `fc`) as pytorch-fid's state_dict, float32 NumPy arrays.

  The inverse of inception_from_torch; num_batches_tracked is written as 0 (inert at inference).
  """
  return {e.torch_key: (np.zeros((), np.int64) if e.kind == 'counter'
                        else keys.to_torch(variables, e))
          for e in _inception_entries(variables)}


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
