"""NYUDv2 in DFormer's layout: RGB-D AsymFusion, RefineNet-101, the paper's recipe.

  python -m asymfusion_jax.main --config=configs/rgbx_nyudv2_refinenet101.py \
      --workdir=/tmp/rgbx_nyudv2_refinenet101 \
      --config.data.manual_dir=/path/to/DFormer/datasets/NYUDepthv2 \
      --config.init.torch_resnet=/path/to/resnet101.pth

A user with DFormer's prepared NYUDv2 (RGB/*.jpg, Depth/*.png, Label/*.png, train.txt and
test.txt of 795 and 654 lines "RGB/<name>.jpg") trains the paper's model on it without converting
anything: the folder is read as it is (data.name 'rgbx', asymfusion_jax/data/rgbx).
- Labels: DFormer's convention, 0 unlabelled and the 40 classes as 1..40 (label_offset 1); class
  names are NYUDv2's 40.
- Recipe: the paper's (config_lib.nyudv2_paper, docs/method.md section 8): batch 6, 500x500
  crops, scale 0.5..2 with a short side of at least 350, SGD momentum 0.9, weight decay 1e-5,
  encoder/decoder learning rates 5e-4/3e-3, 2.5e-4/1.5e-3, 1e-4/7e-4 over three stages of 100
  epochs, frozen BatchNorm, validation every 5 epochs on all 654 test images at full size.
- RGB: ImageNet normalisation, bicubic resizing. Depth: DFormer's depth PNGs are 8-bit (near
  dark, far light), not the millimetres that the paper's x / 5000 assumes, so depth is
  normalised with its mean and standard deviation over the train split, measured when the
  dataset is built (the log says the values), and resized with nearest neighbours, as the paper
  does. CMX's HHA images instead of depth: --config.data.modality_folders.depth=HHA.

Unimodal rows (M = 1): --config=configs/rgbx_nyudv2_refinenet101.py:rgb (RGB only) and :x
(depth only). Fusion baselines: --config.model.fusion=concat, average, attention, late or none.
"""

from asymfusion_jax import config_lib
from asymfusion_jax.data.nyudv2 import layout as nyudv2_layout


def get_config(variant: str = 'rgbx'):
  c = config_lib.rgbx_refinenet({'rgb': 'RGB', 'depth': 'Depth'},
                                modalities=config_lib.rgbx_variant(variant, 'depth'),
                                num_classes=40, label_offset=1, depth=101, fusion='asym',
                                epochs_per_stage=100)
  c.data.num_train, c.data.num_val = 795, 654
  c.data.class_names = nyudv2_layout.CLASS_NAMES
  return c
