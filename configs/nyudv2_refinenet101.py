"""RGB-D AsymFusion, RefineNet-101 (the paper's default; 50.8 mIoU in the paper).

  python -m asymfusion_jax.main --config=configs/nyudv2_refinenet101.py --workdir=/tmp/nyudv2_refinenet101 \
      --config.data.manual_dir=/path/to/nyudv2 --config.init.torch_resnet=/path/to/resnet101.pth

The fusion baselines (docs/method.md section 12) at the encoder's four fusion points run from
this file with --config.model.fusion=concat, =average or =attention; =late fuses only the
outputs (the mean of the branch logits), =none is configs/nyudv2_refinenet101_nofusion.py.
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.nyudv2_paper(depth=101, modalities=('rgb', 'depth'), fusion='asym', epochs_per_stage=100)
