"""A PyTorch .pth, recognised by its keys, converted for a config and saved (--torch).

A reference AsymFusion RefineNet (`conv1.module.weight`), a torchvision ResNet (`conv1.weight`)
or CEN's translation generator (`conv1.conv.module.weight`, with its discriminator beside it);
the file is read with asymfusion_jax.torch_pickle, without torch.
"""

from typing import Any

from asymfusion_jax import torch_pickle
from asymfusion_jax import variables_io
from asymfusion_jax.convert import keys
from asymfusion_jax.convert import refinenet
from asymfusion_jax.convert import translation
from asymfusion_jax.models.refinenet import build_model
from asymfusion_jax.models.resnet import ResNet


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
  state_dict = keys.strip_data_parallel(torch_pickle.load_state_dict(torch_path))
  num_modalities = len(config.modalities)
  cen_key = translation.CEN_CONV1_KEY
  if cen_key in state_dict:
    variables = translation.convert_translation_files(torch_path, state_dict, config,
                                                      discriminator_path)
  elif discriminator_path is not None:
    raise ValueError(f'{discriminator_path}: a discriminator goes with CEN\'s translation '
                     f'generator, but {torch_path} is not one (it has no {cen_key})')
  elif 'conv1.module.weight' in state_dict:
    variables = refinenet.refinenet_from_torch(state_dict, num_modalities,
                                               model=build_model(config))
  elif 'conv1.weight' in state_dict:
    # torchvision's weights fill the encoder without fusion: AsymFusion has no parameters, and
    # the baselines' aggregations, which torchvision lacks, keep their initialisation when
    # the converted file is loaded (initialization.merge).
    encoder = ResNet(depth=config.model.depth, fusion='none', width=config.model.width)
    backbone = refinenet.resnet_from_torch(state_dict, num_modalities, model=encoder)
    variables = {name: {'backbone': backbone[name]} for name in variables_io.COLLECTIONS}
  else:
    raise ValueError(f'{torch_path} is neither a reference AsymFusion RefineNet '
                     f'(conv1.module.weight), a CEN translation generator ({cen_key}) '
                     'nor a torchvision ResNet (conv1.weight)')
  variables_io.save_variables(out_dir, variables, overwrite=overwrite)
  return variables
