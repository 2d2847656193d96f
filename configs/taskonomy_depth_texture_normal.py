"""Image translation Depth, Texture, Normal -> RGB on Taskonomy, the paper's recipe.

  python -m asymfusion_jax.main --config=configs/taskonomy_depth_texture_normal.py --workdir=DIR \
      --config.data.manual_dir=/path/to/taskonomy \
      [--config.eval.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth]

Inputs depth_euclidean, edge_texture, normal; target rgb. manual_dir holds one folder per domain
and the list files train.txt and val.txt (README, "Image translation"). 300 epochs at batch 1,
evaluated every 5. The paper reports FID 75.1 for AsymFusion on this set (its baselines: Concat
86.4, Average 90.2, Attention 81.5, MMF 82.1); FID needs the Inception weights file, without it the
run reports L1 and L2 only.

The paper's baselines (docs/method.md section 12) run from this file with
--config.model.fusion=concat, =average, =attention or =late (MMF); =none drops the fusion.
"""

from asymfusion_jax import config_lib


def get_config():
  return config_lib.taskonomy_paper(modalities=('depth_euclidean', 'edge_texture', 'normal'))
