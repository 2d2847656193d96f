"""RGB-thermal MFNet as CMX prepares it: RGB-T AsymFusion, RefineNet-101, the paper's recipe.

  python -m asymfusion_jax.main --config=configs/mfnet_rgbt_refinenet101.py \
      --workdir=/tmp/mfnet_rgbt_refinenet101 \
      --config.data.manual_dir=/path/to/CMX/datasets/MFNet \
      --config.init.torch_resnet=/path/to/resnet101.pth

The folder as CMX prepares it: RGB/*.png, Modal/*.png (the thermal image), Label/*.png, and
train.txt and test.txt of 784 and 393 bare sample names. Labels are the 9 classes as they are
(label_offset 0), 'unlabeled' being class 0 as the MFNet benchmark counts it; the palette is
MFNet's.
- Recipe: the paper's NYUDv2 RefineNet recipe as it is (784 training images at batch 6 give 130
  steps an epoch, the paper's NYUDv2 132): 3 stages of 100 epochs, encoder/decoder learning
  rates 5e-4/3e-3, 2.5e-4/1.5e-3, 1e-4/7e-4, 500x500 crops of the 480x640 images, frozen
  BatchNorm, validation every 5 epochs.
- RGB: ImageNet normalisation, bicubic resizing. Thermal: the mean and standard deviation of its
  train split, measured when the dataset is built (the log says the values), and bilinear
  resizing: it is an image, not geometry.

Unimodal rows (M = 1): --config=configs/mfnet_rgbt_refinenet101.py:rgb and :x (thermal only).
"""

from asymfusion_jax import config_lib

CLASS_NAMES = ('unlabeled', 'car', 'person', 'bike', 'curve', 'car_stop', 'guardrail',
               'color_cone', 'bump')
PALETTE = ((0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0),
           (64, 64, 128), (192, 128, 128), (192, 64, 0))


def get_config(variant: str = 'rgbx'):
  c = config_lib.rgbx_refinenet({'rgb': 'RGB', 'thermal': 'Modal'},
                                modalities=config_lib.rgbx_variant(variant, 'thermal'),
                                num_classes=len(CLASS_NAMES), label_offset=0, depth=101,
                                fusion='asym', epochs_per_stage=100)
  c.data.num_train, c.data.num_val = 784, 393
  c.data.normalisation = {'thermal': {'interpolation': 'linear'}}
  c.data.class_names = CLASS_NAMES
  c.data.palette = PALETTE
  return c
