"""Shared config defaults. Each file under configs/ starts from `nyudv2_paper()` or `demo()`.

Every hyperparameter lives here or in those files, never in the code that reads them.
"""

import ml_collections


def nyudv2_paper(depth: int = 101, modalities=('rgb', 'depth'), fusion: bool = True,
                 epochs_per_stage: int = 100) -> ml_collections.ConfigDict:
  """The paper's NYUDv2 RefineNet recipe (SPEC section 8)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.modalities = tuple(modalities)

  c.model = ml_collections.ConfigDict()
  c.model.depth = depth
  c.model.num_classes = 40
  c.model.fusion = fusion
  c.model.width = 64
  c.model.decoder_width = 256
  c.model.dropout_rate = 0.5
  c.model.remat = 'none'  # 'none', 'backbone' or 'all': recompute activations in the backward.
  c.compute_dtype = 'auto'  # bfloat16 on GPU/TPU, float32 on CPU; or 'float32' / 'bfloat16'.

  c.data = ml_collections.ConfigDict()
  c.data.name = 'nyudv2'
  c.data.manual_dir = ''  # Folder with rgb/, depth/, masks/, train.txt, val.txt.
  c.data.tfds_data_dir = ''  # Where TFDS keeps the prepared dataset; '' is TFDS's default.
  c.data.synthetic = False  # Generate the synthetic dataset into manual_dir if it is missing.
  c.data.synthetic_image_size = (96, 128)  # (height, width) of generated synthetic images.
  c.data.num_train = 795
  c.data.num_val = 654
  c.data.ignore_label = 255
  c.data.scale_range = (0.5, 2.0)
  c.data.min_short_side = 350
  c.data.num_workers = 4
  c.batch_size = 6
  c.crop_size = 500
  c.eval_batch_size = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-5
  c.optim.epochs_per_stage = (epochs_per_stage,) * 3
  c.optim.lr_encoder = (5e-4, 2.5e-4, 1e-4)
  c.optim.lr_decoder = (3e-3, 1.5e-3, 7e-4)
  c.frozen_bn = True

  c.init = ml_collections.ConfigDict()
  c.init.torch_resnet = ''  # torchvision ImageNet ResNet .pth for the encoder.
  c.init.checkpoint = ''  # A checkpoint written by `python -m asymfusion_jax.convert`.

  c.max_steps = -1  # > 0 cuts training short (smoke runs).
  c.log_every_steps = 50
  c.eval_every_epochs = 5
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.num_prediction_images = 8
  return c


def cityscapes_deeplab(modalities=('rgb', 'depth'), fusion: bool = True,
                       output_stride: int = 16) -> ml_collections.ConfigDict:
  """DeepLabv3+ / Xception-65 on Cityscapes RGB-D (docs/method.md section 13): model and import.

  Holds what the model, the TF-DeepLab checkpoint import (`python -m asymfusion_jax.convert
  --tf_checkpoint`) and export need. The Cityscapes data pipeline and the training recipe (poly
  learning rate, 90,000 steps) are not available yet: there is no `optim` section and
  data.name 'cityscapes' has no loader, so training with this config stops at the data.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.modalities = tuple(modalities)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'deeplab'
  c.model.num_classes = 19
  c.model.fusion = fusion
  c.model.output_stride = output_stride  # 16 (training, evaluation) or 8.
  c.model.width_divisor = 1  # Divides every width; 1 is Xception-65 (tests use small widths).
  c.model.middle_flow_units = 16
  c.model.dropout_rate = 0.1
  c.model.remat = 'none'  # 'none', 'backbone' or 'all': recompute activations in the backward.
  c.model.upsample_logits = True  # Logits at the input size; False: at stride 4.
  c.compute_dtype = 'auto'  # bfloat16 on GPU/TPU, float32 on CPU; or 'float32' / 'bfloat16'.
  c.frozen_bn = False  # TF-DeepLab trains BatchNorm over the global batch.

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cityscapes'
  c.data.manual_dir = ''
  c.data.tfds_data_dir = ''
  c.data.synthetic = False
  c.data.ignore_label = 255
  c.batch_size = 8
  c.crop_size = 769
  c.eval_batch_size = 1

  c.init = ml_collections.ConfigDict()
  c.init.torch_resnet = ''  # Unused by DeepLab; kept so that initialization reads the same keys.
  c.init.checkpoint = ''  # Written by `python -m asymfusion_jax.convert --tf_checkpoint=...`.

  c.max_steps = -1
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  return c
