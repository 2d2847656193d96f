"""SUN RGB-D in DFormer's layout: RGB-D AsymFusion, RefineNet-101, the paper's recipe scaled.

  python -m asymfusion_jax.main --config=configs/sunrgbd_refinenet101.py \
      --workdir=/tmp/sunrgbd_refinenet101 \
      --config.data.manual_dir=/path/to/DFormer/datasets/SUNRGBD \
      --config.init.torch_resnet=/path/to/resnet101.pth

The folder as DFormer prepares it: RGB/*.jpg, Depth/*.png, Label/*.png, train.txt and test.txt
of 5,285 and 5,050 lines "RGB/<name>.jpg". Labels: DFormer's convention, 0 unlabelled and the 37
classes as 1..37 (label_offset 1); the 37 classes are NYUDv2's first 37, in that order.
- Recipe: the paper's NYUDv2 RefineNet recipe (rgbx_nyudv2_refinenet101.py) scaled to the
  dataset's size by keeping its number of SGD steps: the paper trains 3 stages of 100 epochs of
  795 images at batch 6, 13,200 steps a stage; SUN RGB-D's 5,285 images give 880 steps an epoch,
  so each stage is 15 epochs (13,200 steps), with the same learning rates, batch, crops,
  augmentation and frozen BatchNorm. Validation on the 5,050 test images every 3 epochs
  (2,640 steps, 15 evaluations) instead of every 5 epochs of 132 steps.
- RGB: ImageNet normalisation, bicubic resizing; depth: the statistics of its train split
  measured at build time (DFormer's depth PNGs are 8-bit), nearest-neighbour resizing. Images
  vary in size (up to 730 wide); evaluation pads each batch to the largest test image.

Unimodal rows (M = 1): --config=configs/sunrgbd_refinenet101.py:rgb and :x (depth only).
"""

from asymfusion_jax import config_lib
from asymfusion_jax.data.nyudv2 import layout as nyudv2_layout

NUM_CLASSES = 37


def get_config(variant: str = 'rgbx'):
  c = config_lib.rgbx_refinenet({'rgb': 'RGB', 'depth': 'Depth'},
                                modalities=config_lib.rgbx_variant(variant, 'depth'),
                                num_classes=NUM_CLASSES, label_offset=1, depth=101,
                                fusion='asym', epochs_per_stage=15)
  c.data.num_train, c.data.num_val = 5285, 5050
  c.data.class_names = nyudv2_layout.CLASS_NAMES[:NUM_CLASSES]
  c.eval_every_epochs = 3
  return c
