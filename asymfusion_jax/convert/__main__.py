"""The command line of asymfusion_jax.convert (see the package docstring for the commands).

  python -m asymfusion_jax.convert --torch=FILE.pth [--torch_discriminator=D.pth] \\
      --config=CONFIG --out=DIR
  python -m asymfusion_jax.convert --tf_checkpoint=PREFIX --config=CONFIG --out=DIR
  python -m asymfusion_jax.convert --inception=pt_inception-2015-12-05-6726825d.pth --out=DIR
"""

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from asymfusion_jax import cli
from asymfusion_jax import config_lib
from asymfusion_jax import logger
from asymfusion_jax.convert.deeplab import convert_tf_file
from asymfusion_jax.convert.inception import convert_inception_file
from asymfusion_jax.convert.pth import convert_file


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
