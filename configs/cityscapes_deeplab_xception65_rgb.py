"""RGB-only DeepLabv3+ / Xception-65 on Cityscapes, M = 1 (79.4 mIoU in the paper).

The recipe of configs/cityscapes_deeplab_xception65.py on RGB alone:

  python -m asymfusion_jax.main --config=configs/cityscapes_deeplab_xception65_rgb.py \
      --config.data.manual_dir=/path/to/cityscapes \
      --config.init.tf_checkpoint=/path/to/xception_65/model.ckpt --workdir=/tmp/cs_rgb

TF-DeepLab's Cityscapes model imports whole and exports at full resolution:

  python -m asymfusion_jax.convert \
      --tf_checkpoint=/path/to/deeplabv3_cityscapes_train/model.ckpt \
      --config=configs/cityscapes_deeplab_xception65_rgb.py --out=/tmp/xception65_cityscapes
  python -m asymfusion_jax.export --checkpoint=/tmp/xception65_cityscapes \
      --config=configs/cityscapes_deeplab_xception65_rgb.py --height=1024 --width=2048 \
      --out=/tmp/deeplab_rgb.jax
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.cityscapes_deeplab(modalities=('rgb',), fusion='asym')
