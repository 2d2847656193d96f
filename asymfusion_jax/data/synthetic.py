"""Small synthetic datasets: RGB-D segmentation (NYUDv2 or Cityscapes layout), Taskonomy scenes.

The command line of every dataset's synthetic generator (data/<dataset>/synthetic.py), chosen by
--kind:

  python -m asymfusion_jax.data.synthetic --out /tmp/synthetic_rgbd --num_train 200 --num_val 50

writes the RGB-D set in the NYUDv2 layout (`nyudv2.synthetic`: five classes that neither colour
nor depth alone separates). With --kind=taskonomy it writes instead a synthetic Taskonomy set for
image translation, every domain rendered from one 3D scene (`taskonomy.synthetic`):

  python -m asymfusion_jax.data.synthetic --kind=taskonomy --out /tmp/synthetic_taskonomy \
      --num_train 200 --num_val 50 --size 96

With --kind=cityscapes it writes street scenes in the Cityscapes layout (leftImg8bit/,
disparity/, gtFine/; `cityscapes.synthetic`), 64x128 by default:

  python -m asymfusion_jax.data.synthetic --kind=cityscapes --out /tmp/synthetic_cityscapes

With --kind=rgbx it writes any modalities in the RGB-X layout (RGB/, Depth/, Thermal/, ...,
Label/, train.txt, test.txt; `rgbx.synthetic`: classes that need every modality):

  python -m asymfusion_jax.data.synthetic --kind=rgbx --modalities=rgb,depth,thermal --out DIR

A kind is one line of KINDS: the module of its generator, which provides
  DESCRIPTION: what it writes, for --help;
  write_from_flags(args) -> str: writes the set the parsed flags describe (args.out,
    args.num_train, args.num_val, args.height (its DEFAULT_HEIGHT unless given), args.width,
    args.seed and its own flags) and returns the line to print;
and optionally DEFAULT_HEIGHT, and add_flags(parser), which adds the flags only it reads.
"""

import importlib

KINDS = {
    'nyudv2': 'asymfusion_jax.data.nyudv2.synthetic',
    'taskonomy': 'asymfusion_jax.data.taskonomy.synthetic',
    'cityscapes': 'asymfusion_jax.data.cityscapes.synthetic',
    'rgbx': 'asymfusion_jax.data.rgbx.synthetic',
}
DEFAULT_KIND = 'nyudv2'
from asymfusion_jax import cli


def generators() -> dict:
  """{kind: its generator module}, in KINDS order."""
  return {kind: importlib.import_module(module) for kind, module in KINDS.items()}


def parser() -> cli.ArgumentParser:
  modules = generators()
  kinds = '; '.join(f'{kind}{" (default)" if kind == DEFAULT_KIND else ""}: {m.DESCRIPTION}'
                    for kind, m in modules.items())
  p = cli.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--kind', choices=tuple(KINDS), default=DEFAULT_KIND, help=kinds + '.')
  p.add_argument('--out', required=True, help='Folder to write the dataset to.')
  # Underscores, as every other CLI here spells its flags; the dashed spellings still work.
  p.add_argument('--num_train', '--num-train', type=int, default=200,
                 help='Training images (default 200).')
  p.add_argument('--num_val', '--num-val', type=int, default=50,
                 help='Validation images (default 50).')
  heights = ', '.join(f'{m.DEFAULT_HEIGHT} for --kind={kind}' for kind, m in modules.items()
                      if hasattr(m, 'DEFAULT_HEIGHT'))
  p.add_argument('--height', type=int, default=None, help=f'Image height (default {heights}).')
  p.add_argument('--width', type=int, default=128, help='Image width (default 128).')
  for module in modules.values():
    if hasattr(module, 'add_flags'):
      module.add_flags(p)
  p.add_argument('--seed', type=int, default=0, help='Random seed (default 0).')
  return p


def main(argv=None) -> None:
  args = parser().parse_args(argv)
  generator = importlib.import_module(KINDS[args.kind])
  if args.height is None:
    args.height = getattr(generator, 'DEFAULT_HEIGHT', None)
  print(generator.write_from_flags(args))


if __name__ == '__main__':
  cli.guard(main, 'synthetic')()  # An error is one line.
