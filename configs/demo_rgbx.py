"""Demo: AsymFusion with three modalities (RGB, depth, thermal) on synthetic RGB-X data (CPU).

  python -m asymfusion_jax.main --config=configs/demo_rgbx.py --workdir=/tmp/demo_rgbx

The synthetic dataset is generated into WORKDIR/data on first use, in the RGB-X layout
(RGB/*.jpg, Depth/*.png 16-bit, Thermal/*.png, Label/*.png, train.txt, test.txt; the same as
`python -m asymfusion_jax.data.synthetic --kind=rgbx --modalities=rgb,depth,thermal --out DIR`).
Every object is warm or cool in colour, nearer or farther than the background in depth, and
hotter or colder in thermal, and its class is the combination: 8 object classes and the
background, so no single modality, nor any two, separates them. Labels use DFormer's convention
(0 unlabelled, classes 1..9). Depth and thermal are normalised with the statistics measured at
build time; thermal is resized bilinearly.

The recipe is configs/demo.py's (a width-16 ResNet-26 RefineNet from scratch, batch 8 of 64x64
crops, gradient clipping), for 30 epochs of 25 steps. The argument picks the inputs among the
three, in order: --config=configs/demo_rgbx.py:rgb (M = 1), :rgb,depth, :depth,thermal, ...
"""

from asymfusion_jax import config_lib
from asymfusion_jax.data.rgbx import synthetic

FOLDERS = {'rgb': 'RGB', 'depth': 'Depth', 'thermal': 'Thermal'}


def get_config(inputs: str = 'rgb,depth,thermal'):
  names = tuple(n.strip() for n in inputs.split(',') if n.strip())
  if not names or not set(names) <= set(FOLDERS):
    raise ValueError(f'demo_rgbx inputs {inputs!r}: choose among {sorted(FOLDERS)}, '
                     'comma-separated')
  demo = config_lib.get_config('demo')
  c = config_lib.rgbx_refinenet(FOLDERS, modalities=names,
                                num_classes=synthetic.num_classes(FOLDERS),
                                label_offset=synthetic.LABEL_OFFSET, depth=demo.model.depth)
  # configs/demo.py's recipe: its model, optimiser and schedule, its batches and intervals.
  num_classes = c.model.num_classes
  c.model, c.optim = demo.model, demo.optim
  c.model.num_classes = num_classes
  for key in ('compute_dtype', 'frozen_bn', 'batch_size', 'crop_size', 'eval_batch_size',
              'log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps',
              'num_prediction_images'):
    c[key] = demo[key]
  for key in ('synthetic', 'synthetic_image_size', 'num_train', 'num_val', 'scale_range',
              'min_short_side', 'num_workers'):
    c.data[key] = demo.data[key]
  c.optim.epochs_per_stage = (18, 6, 6)
  c.data.normalisation = {'thermal': {'interpolation': 'linear'}}
  c.data.class_names = synthetic.class_names(FOLDERS)
  return c
