"""RGB-D AsymFusion, DeepLabv3+ / Xception-65 on Cityscapes (82.1 mIoU in the paper).

TF-DeepLab's recipe (config_lib.cityscapes_deeplab): crops of 769, batch 8, poly SGD for 90,000
steps, from TF-DeepLab's ImageNet xception_65 checkpoint (its BatchNorm copied to both
modalities):

  python -m asymfusion_jax.main --config=configs/cityscapes_deeplab_xception65.py \
      --config.data.manual_dir=/path/to/cityscapes \
      --config.init.tf_checkpoint=/path/to/xception_65/model.ckpt --workdir=/tmp/cs_rgbd
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.cityscapes_deeplab(modalities=('rgb', 'depth'), fusion='asym')
