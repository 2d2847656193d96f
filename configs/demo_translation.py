"""Demo: image translation on the built-in synthetic Taskonomy-layout set (CPU, a few minutes).

  python -m asymfusion_jax.main --config=configs/demo_translation.py --workdir=/tmp/translation

The synthetic scenes are generated into WORKDIR/data on first use: every domain renders the
same scene, and the RGB target is an albedo (which the texture edges outline) times a shading
(which depth and surface normals determine), so no single input predicts it well
(asymfusion_jax/data/taskonomy/synthetic.py says what each domain encodes). A small U-Net (6
levels, width 16) translates reshading and depth_euclidean to rgb at 64x64. get_config('nofusion')
keeps the shared convs and per-domain InstanceNorm without shuffle/shift, and
get_config('<domain>') trains on that single domain. --config.model.fusion=concat (average,
attention, late) trains a fusion baseline instead; experiments/fusion_table.py trains them all.
"""

from asymfusion_jax import config_lib

INPUTS = ('reshading', 'depth_euclidean')
VARIANTS = ('fused', 'nofusion') + INPUTS


def get_config(variant: str = 'fused'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown demo variant {variant!r}; choose one of {VARIANTS}')
  modalities = (variant,) if variant in INPUTS else INPUTS
  c = config_lib.taskonomy_paper(modalities=modalities,
                                 fusion='none' if variant == 'nofusion' else 'asym')
  c.model.ngf = 16
  c.model.ndf = 16
  c.model.num_downs = 6
  c.model.fusion_blocks = (2, 3, 4, 5)
  c.compute_dtype = 'float32'

  c.data.synthetic = True
  c.data.synthetic_image_size = 80
  c.data.num_train = 160
  c.data.num_val = 40
  c.data.load_size = 72
  c.data.num_workers = 2
  c.crop_size = 64
  c.batch_size = 4
  c.eval_batch_size = 8

  c.num_epochs = 25  # 1,000 steps.
  c.eval_every_epochs = 5
  c.log_every_steps = 25
  c.checkpoint_every_steps = 250
  c.num_prediction_images = 4
  return c
