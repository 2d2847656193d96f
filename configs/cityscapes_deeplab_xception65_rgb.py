"""RGB-only DeepLabv3+ / Xception-65 on Cityscapes, M = 1 (79.4 mIoU in the paper).

The model and the TF-DeepLab checkpoint import are available; the Cityscapes data pipeline and
training recipe are not yet (config_lib.cityscapes_deeplab). TF-DeepLab's Cityscapes model
imports whole and exports at full resolution:

  python -m asymfusion_jax.convert \
      --tf_checkpoint=/path/to/deeplabv3_cityscapes_train/model.ckpt \
      --config=configs/cityscapes_deeplab_xception65_rgb.py --out=/tmp/xception65_cityscapes
  python -m asymfusion_jax.export --checkpoint=/tmp/xception65_cityscapes \
      --config=configs/cityscapes_deeplab_xception65_rgb.py --height=1024 --width=2048 \
      --out=/tmp/deeplab_rgb.jax
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.cityscapes_deeplab(modalities=('rgb',), fusion=True)
