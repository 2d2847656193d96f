"""Image translation Normal, Texture -> RGB on Taskonomy, the paper's recipe.

  python -m asymfusion_jax.main --config=configs/taskonomy_normal_texture.py --workdir=DIR \
      --config.data.manual_dir=/path/to/taskonomy \
      [--config.eval.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth]

Inputs normal, edge_texture; target rgb. manual_dir holds one folder per domain and the list files
train.txt and val.txt (README, "Image translation"). 300 epochs at batch 1, evaluated every 5. The
paper reports FID 77.8 for AsymFusion on this set (its baselines: Concat 88.9, Average 93.0,
Attention 83.3, MMF 85.9); FID needs the Inception weights file, without it the run reports L1 and
L2 only.

The paper's baselines (docs/method.md section 12) run from this file with
--config.model.fusion=concat, =average, =attention or =late (MMF); =none drops the fusion.
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.taskonomy_paper(modalities=('normal', 'edge_texture'))
