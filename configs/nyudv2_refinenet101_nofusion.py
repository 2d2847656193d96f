"""RGB-D RefineNet-101 with shared convs and per-modality BN but no shuffle/shift fusion.

  python -m asymfusion_jax.main --config=configs/nyudv2_refinenet101_nofusion.py --workdir=/tmp/nyudv2_refinenet101_nofusion \
      --config.data.manual_dir=/path/to/nyudv2 --config.init.torch_resnet=/path/to/resnet101.pth
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.nyudv2_paper(depth=101, modalities=('rgb', 'depth'), fusion='none', epochs_per_stage=100)
