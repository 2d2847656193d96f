"""Depth-only DeepLabv3+ / Xception-65 on Cityscapes, M = 1 (62.3 mIoU in the paper).

The model and the TF-DeepLab checkpoint import are available; the Cityscapes data pipeline and
training recipe are not yet (config_lib.cityscapes_deeplab).

  python -m asymfusion_jax.convert --tf_checkpoint=/path/to/xception_65/model.ckpt \
      --config=configs/cityscapes_deeplab_xception65_depth.py --out=/tmp/xception65_depth
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.cityscapes_deeplab(modalities=('depth',), fusion=True)
