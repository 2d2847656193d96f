"""Demo: a small AsymFusion model on the built-in synthetic RGB-D dataset (CPU, a few minutes).

  python -m asymfusion_jax.main --config=configs/demo.py --workdir=/tmp/asymfusion_demo

The synthetic dataset is generated into WORKDIR/data on first use. Its classes are built so that
neither modality alone suffices: colour separates warm from cool objects, depth separates near
from far ones. get_config('rgb') and get_config('depth') give the single-modality baselines
(--config=configs/demo.py:rgb), get_config('nofusion') shared convs without shuffle/shift.
"""

from asymfusion_jax import config_lib
from asymfusion_jax.data.nyudv2 import synthetic

VARIANTS = {'fused': ('rgb', 'depth'), 'nofusion': ('rgb', 'depth'), 'rgb': ('rgb',),
            'depth': ('depth',)}


def get_config(variant: str = 'fused'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown demo variant {variant!r}; choose one of {sorted(VARIANTS)}')
  c = config_lib.nyudv2_paper(depth=26, modalities=VARIANTS[variant],
                              fusion='none' if variant == 'nofusion' else 'asym')
  c.model.width = 16
  c.model.decoder_width = 32
  c.model.num_classes = synthetic.NUM_CLASSES
  c.model.dropout_rate = 0.1
  c.compute_dtype = 'float32'

  c.data.synthetic = True
  c.data.num_train = 200
  c.data.num_val = 50
  c.data.synthetic_image_size = (96, 128)
  c.data.scale_range = (0.75, 1.25)
  c.data.min_short_side = 48
  c.data.num_workers = 2
  c.batch_size = 8
  c.crop_size = 64
  c.eval_batch_size = 10

  # Trained from scratch (no ImageNet weights), so BatchNorm statistics are learnt, and the
  # learning rates are higher than the fine-tuning rates of the paper.
  c.frozen_bn = False
  c.optim.epochs_per_stage = (24, 8, 8)
  c.optim.lr_encoder = (0.01, 0.005, 0.002)
  c.optim.lr_decoder = (0.01, 0.005, 0.002)
  c.optim.weight_decay = 1e-4
  # From scratch at these rates one large gradient can blow up the trained BatchNorm statistics
  # (a run on 4 devices reached NaN at step 61 unclipped), so gradients are clipped.
  c.optim.clip_grad_norm = 1.0

  c.log_every_steps = 25
  c.eval_every_epochs = 10
  c.checkpoint_every_steps = 250
  c.num_prediction_images = 4
  return c
