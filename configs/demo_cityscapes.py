"""Demo: AsymFusion DeepLabv3+ on synthetic Cityscapes-layout street scenes (CPU, minutes).

  python -m asymfusion_jax.main --config=configs/demo_cityscapes.py --workdir=/tmp/demo_cityscapes

The synthetic scenes (asymfusion_jax.data.cityscapes.synthetic) are written into WORKDIR/data on
first use and go through the real Cityscapes builder, pipeline, recipe (poly SGD, BatchNorm
trained over the batch) and evaluation, with an Xception-65 of an eighth of the width and two
middle-flow units, trained from scratch. get_config('rgb') and get_config('depth') give the
single-modality rows (--config=configs/demo_cityscapes.py:rgb).
"""

from asymfusion_jax import config_lib

VARIANTS = {'fused': ('rgb', 'depth'), 'rgb': ('rgb',), 'depth': ('depth',)}


def get_config(variant: str = 'fused'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown demo variant {variant!r}; choose one of {sorted(VARIANTS)}')
  c = config_lib.cityscapes_deeplab(modalities=VARIANTS[variant])
  c.model.width_divisor = 8
  c.model.middle_flow_units = 2
  # TF-DeepLab's BatchNorm decay 0.9997 averages over thousands of steps; in a run of 240 the
  # running statistics would stay near their initial values and evaluation would fail.
  c.model.bn_momentum = 0.9
  c.compute_dtype = 'float32'

  c.data.synthetic = True
  c.data.synthetic_image_size = (64, 128)
  c.data.num_train = 96
  c.data.num_val = 16
  c.data.num_workers = 2
  c.batch_size = 8
  c.crop_size = 65
  c.eval_batch_size = 4

  # From scratch: a higher learning rate than the fine-tuning recipe's 0.01 (at 0.05 the 240
  # steps of a first version left every small object unlearnt), and clipped gradients, as the
  # NYUDv2 demo.
  c.optim.lr = 0.1
  c.optim.total_steps = 480
  c.optim.clip_grad_norm = 1.0

  c.log_every_steps = 20
  c.eval_every_epochs = 20  # 12 steps per epoch: evaluations at steps 240 and 480.
  c.checkpoint_every_steps = 240
  c.num_prediction_images = 4
  return c
