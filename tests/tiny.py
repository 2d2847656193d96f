"""A tiny configuration of the demo, shared by the training, export and device tests."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Overrides of configs/demo.py: 16 training images of 48x64, 4 steps per epoch, 12 steps in all.
OVERRIDES = {
    'model.width': 8,
    'model.decoder_width': 16,
    'data.num_train': 16,
    'data.num_val': 6,
    'data.synthetic_image_size': (48, 64),
    'data.min_short_side': 32,
    'data.num_workers': 2,
    'batch_size': 4,
    'crop_size': 32,
    'eval_batch_size': 4,
    'optim.epochs_per_stage': (1, 1, 1),
    'optim.lr_encoder': (0.05, 0.02, 0.01),
    'optim.lr_decoder': (0.05, 0.02, 0.01),
    'log_every_steps': 2,
    'eval_every_epochs': 1,
    'checkpoint_every_steps': 1000,
    'num_prediction_images': 3,
}


# A constant, small learning rate: the tiny model trains for thousands of steps at it (at the
# 0.05 above its loss is NaN by about step 26), and runs of different lengths that share it
# compile the same train step, so the persistent compilation cache serves all of them.
CONSTANT_LR = {'optim.epochs_per_stage': (100000,) * 3, 'optim.lr_encoder': (0.001,) * 3,
               'optim.lr_decoder': (0.001,) * 3}

# Overrides for a CLI run that goes on until a test stops it with SIGTERM: no evaluation or
# checkpoint before the signal.
LONG_RUN = {'max_steps': 100000, 'log_every_steps': 1, 'checkpoint_every_steps': 100000,
            'eval_every_epochs': 100000, **CONSTANT_LR}


def config(data_dirs: dict, variant: str = 'fused', extra: dict | None = None):
  """configs/demo.py with OVERRIDES, the data dirs and `extra` (dotted keys) applied."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config(variant)
  for key, value in {**OVERRIDES, **data_dirs, **(extra or {})}.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def flags(data_dirs: dict, **extra) -> list[str]:
  """The same overrides (updated by `extra`) as flags for `python -m asymfusion_jax.main`."""
  def fmt(v):
    return '(' + ','.join(map(str, v)) + ')' if isinstance(v, tuple) else str(v)
  return [f'--config.{k}={fmt(v)}' for k, v in {**OVERRIDES, **data_dirs, **extra}.items()]


def translation_config(tmp_dir, **overrides):
  """A tiny translation config (the keys of a Taskonomy config) on synthetic data in `tmp_dir`.

  16 train and 6 val scenes of 72x72 (written and built by translation_pipeline.prepare into
  tmp_dir/synthetic and tmp_dir/tfds), resized to 72 and cropped to 64 for training, 64 for
  evaluation; a 6-level U-Net of width 8. `overrides` are dotted keys with '__' for '.', e.g.
  translation_config(d, data__num_workers=0).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.task = 'translation'
  c.seed = 0
  c.modalities = ('reshading', 'depth_euclidean')
  c.target = 'rgb'
  c.model = ml_collections.ConfigDict({
      'name': 'unet', 'ngf': 8, 'ndf': 8, 'num_downs': 6, 'fusion': True,
      'fusion_blocks': (2, 3, 4, 5), 'dropout_rate': 0.5})
  c.compute_dtype = 'auto'
  c.data = ml_collections.ConfigDict({
      'name': 'taskonomy', 'manual_dir': os.path.join(str(tmp_dir), 'synthetic'),
      'tfds_data_dir': os.path.join(str(tmp_dir), 'tfds'), 'synthetic': True,
      'synthetic_image_size': 72, 'num_train': 16, 'num_val': 6, 'load_size': 72,
      'num_workers': 2})
  c.crop_size = 64
  c.batch_size = 4
  c.eval_batch_size = 4
  c.optim = ml_collections.ConfigDict({'lr': 2e-4, 'b1': 0.5, 'b2': 0.999, 'l1_weight': 100.0})
  c.num_epochs = 3
  c.eval_every_epochs = 1
  c.eval = ml_collections.ConfigDict({'inception_weights': ''})
  c.init = ml_collections.ConfigDict({'checkpoint': ''})
  c.max_steps = -1
  c.log_every_steps = 2
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.num_prediction_images = 3
  for key, value in overrides.items():
    *parents, leaf = key.split('__')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
