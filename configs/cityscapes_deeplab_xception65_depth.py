"""Depth-only DeepLabv3+ / Xception-65 on Cityscapes, M = 1 (62.3 mIoU in the paper).

The recipe of configs/cityscapes_deeplab_xception65.py on the disparity alone:

  python -m asymfusion_jax.main --config=configs/cityscapes_deeplab_xception65_depth.py \
      --config.data.manual_dir=/path/to/cityscapes \
      --config.init.tf_checkpoint=/path/to/xception_65/model.ckpt --workdir=/tmp/cs_depth
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.cityscapes_deeplab(modalities=('depth',), fusion='asym')
