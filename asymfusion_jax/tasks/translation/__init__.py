"""Image translation (config.task = 'translation'): Taskonomy domains to RGB with a U-Net
generator and a PatchGAN discriminator.

task.py        the Task: state, the D-then-G Adam step, data, best checkpoint by FID or L1
evaluation.py  L1 / L2 (and FID / KID) per branch over the whole validation set, prediction grids
predict.py     what `python -m asymfusion_jax.predict` runs and writes (RGB images)
"""
