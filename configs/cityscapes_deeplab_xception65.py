"""RGB-D AsymFusion, DeepLabv3+ / Xception-65 on Cityscapes (82.1 mIoU in the paper).

The model and the TF-DeepLab checkpoint import are available; the Cityscapes data pipeline and
training recipe are not yet (config_lib.cityscapes_deeplab). Start from TF-DeepLab's ImageNet
xception_65 checkpoint:

  python -m asymfusion_jax.convert --tf_checkpoint=/path/to/xception_65/model.ckpt \
      --config=configs/cityscapes_deeplab_xception65.py --out=/tmp/xception65_rgbd
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.cityscapes_deeplab(modalities=('rgb', 'depth'), fusion=True)
