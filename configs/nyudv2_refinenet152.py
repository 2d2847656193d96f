"""RGB-D AsymFusion, RefineNet-152 (51.2 mIoU in the paper).

  python -m asymfusion_jax.main --config=configs/nyudv2_refinenet152.py --workdir=/tmp/nyudv2_refinenet152 \
      --config.data.manual_dir=/path/to/nyudv2 --config.init.torch_resnet=/path/to/resnet152.pth
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.nyudv2_paper(depth=152, modalities=('rgb', 'depth'), fusion='asym', epochs_per_stage=150)
