"""Semantic segmentation (config.task = 'segmentation'): RefineNet on NYUDv2, DeepLabv3+ on
Cityscapes.

task.py        the Task: state, SGD step, data, best checkpoint by ensemble mIoU
losses.py      the sum of the M + 1 outputs' cross-entropies
metrics.py     confusion matrices, pixel accuracy, mean accuracy, mIoU, tables
optim.py       the optimiser recipes of config.optim.schedule ('stages', 'poly')
evaluation.py  exact evaluation over the whole validation set, prediction PNGs
visualize.py   colour-coded label maps and prediction panels
predict.py     what `python -m asymfusion_jax.predict` runs and writes (labels, colour, logits)
"""
