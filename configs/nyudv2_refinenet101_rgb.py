"""RGB-only RefineNet-101 baseline, M = 1 (46.5 mIoU in the paper).

  python -m asymfusion_jax.main --config=configs/nyudv2_refinenet101_rgb.py --workdir=/tmp/nyudv2_refinenet101_rgb \
      --config.data.manual_dir=/path/to/nyudv2 --config.init.torch_resnet=/path/to/resnet101.pth
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.nyudv2_paper(depth=101, modalities=('rgb',), fusion='asym', epochs_per_stage=100)
