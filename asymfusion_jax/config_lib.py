"""Shared config defaults. Each file under configs/ starts from `nyudv2_paper()` or `demo()`.

Every hyperparameter lives here or in those files, never in the code that reads them.
"""

import importlib.util
import pathlib

from absl import flags
import ml_collections
from ml_collections import config_flags

from asymfusion_jax import fusion as fusion_lib


def nyudv2_paper(depth: int = 101, modalities=('rgb', 'depth'), fusion: str = 'asym',
                 epochs_per_stage: int = 100) -> ml_collections.ConfigDict:
  """The paper's NYUDv2 RefineNet recipe (docs/method.md section 8).

  fusion: a fusion method of asymfusion_jax.fusion.METHODS; the config holds its name, so
  --config.model.fusion=concat overrides it.
  """
  c = ml_collections.ConfigDict()
  c.task = 'segmentation'
  c.seed = 0
  c.modalities = tuple(modalities)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'refinenet'
  c.model.depth = depth
  c.model.num_classes = 40
  # 'asym', 'none', or a baseline: 'concat', 'average', 'attention', 'late' (MMF).
  c.model.fusion = fusion_lib.method(fusion)
  c.model.width = 64
  c.model.decoder_width = 256
  c.model.dropout_rate = 0.5
  c.model.remat = 'none'  # 'none', 'backbone' or 'all': recompute activations in the backward.
  # Runs of identical backbone blocks as one nn.scan (asymfusion_jax.models.scan_layout): the
  # same model as a smaller program, for accelerators (on CPUs it barely compiles faster and
  # steps slower); checkpoints of either setting load into the other.
  c.model.scan_blocks = False
  # 'auto': the CPU-tuned 1x1 convolutions and max-pooling where lowered for a CPU, the stock
  # XLA ops elsewhere; 'cpu' or 'xla': one of them everywhere (asymfusion_jax.models.kernels).
  c.model.kernels = 'auto'
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
  c.data.worker_kind = 'thread'  # Or 'process' (see data/workers.py).
  c.data.prefetch_to_device = 2  # Train batches transferred to the devices ahead of their step.
  c.batch_size = 6
  c.crop_size = 500
  c.eval_batch_size = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-5
  c.optim.schedule = 'stages'  # Constant rates per stage, fresh momentum at each; or 'poly'.
  c.optim.epochs_per_stage = (epochs_per_stage,) * 3
  c.optim.lr_encoder = (5e-4, 2.5e-4, 1e-4)
  c.optim.lr_decoder = (3e-3, 1.5e-3, 7e-4)
  c.optim.clip_grad_norm = 0.0  # > 0 rescales gradients whose global norm exceeds it (0: off).
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
  return _missing_modality_keys(c)


def rgbx_refinenet(modality_folders: dict, modalities=None, num_classes: int = 40,
                   label_offset: int = 1, depth: int = 101, fusion: str = 'asym',
                   epochs_per_stage: int = 100) -> ml_collections.ConfigDict:
  """The paper's RefineNet recipe (`nyudv2_paper`) on your own data in the RGB-X layout.

  config.data.name is 'rgbx' (asymfusion_jax/data/rgbx): DATASET/ with one folder per modality
  (modality_folders, {name: folder}), Label/ and the list files train.txt and test.txt.
  modalities: the inputs, in order (default: every modality of modality_folders, sorted).
  label_offset: 1 when 0 marks unlabelled pixels and classes are 1..N (DFormer), 0 when the
  label values are the classes.
  """
  c = nyudv2_paper(depth=depth, modalities=tuple(modalities or sorted(modality_folders)),
                   fusion=fusion, epochs_per_stage=epochs_per_stage)
  c.model.num_classes = num_classes
  c.data.name = 'rgbx'
  c.data.manual_dir = ''  # The dataset folder: RGB/, one folder per modality, Label/, lists.
  c.data.modality_folders = dict(modality_folders)  # Modality name -> its folder.
  c.data.label_folder = 'Label'
  c.data.list_files = {'train': 'train.txt', 'val': 'test.txt'}  # 'val': the evaluated split.
  c.data.label_offset = label_offset  # Raw label v is class v - offset; below it: unlabelled.
  # Modality name -> {scale, mean, std, interpolation}, each optional: by default 'rgb' gets
  # ImageNet's normalisation and bicubic resizing, any other modality the statistics of its
  # train split (measured at build time) and nearest-neighbour resizing.
  c.data.normalisation = {}
  c.data.class_names = ()  # Optional: one name per class (prediction legends, export sidecar).
  c.data.palette = ()  # Optional: one RGB colour per class for the prediction images.
  return c


def rgbx_variant(variant: str, x: str) -> tuple[str, ...]:
  """The modalities of an RGB-X config's variant: 'rgbx' (default) ('rgb', x), and the unimodal
  rows 'rgb' ('rgb',) and 'x' (x,)."""
  variants = {'rgbx': ('rgb', x), 'rgb': ('rgb',), 'x': (x,)}
  if variant not in variants:
    raise ValueError(f'unknown variant {variant!r}; choose one of {sorted(variants)}')
  return variants[variant]


def cityscapes_deeplab(modalities=('rgb', 'depth'), fusion: str = 'asym',
                       output_stride: int = 16) -> ml_collections.ConfigDict:
  """DeepLabv3+ / Xception-65 on Cityscapes RGB-D and its recipe (docs/method.md section 13).

  TF-DeepLab's Cityscapes recipe: crops of 769, batch 8, SGD with momentum 0.9 and the poly
  learning rate 0.01 (1 - t / 90000)^0.9, weight decay 4e-5 on the non-depthwise kernels,
  BatchNorm trained over the global batch; evaluation on the full 1024x2048 images.

  fusion: 'asym' or 'none' (the fusion baselines are built for RefineNet and the U-Net only).
  """
  c = ml_collections.ConfigDict()
  c.task = 'segmentation'
  c.seed = 0
  c.modalities = tuple(modalities)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'deeplab'
  c.model.num_classes = 19
  c.model.fusion = fusion_lib.method(fusion)
  c.model.output_stride = output_stride  # 16 (training, evaluation) or 8.
  c.model.width_divisor = 1  # Divides every width; 1 is Xception-65 (tests use small widths).
  c.model.middle_flow_units = 16
  c.model.dropout_rate = 0.1
  c.model.remat = 'none'  # 'none', 'backbone' or 'all': recompute activations in the backward.
  # Runs of identical backbone blocks as one nn.scan (asymfusion_jax.models.scan_layout): the
  # same model as a smaller program, for accelerators (on CPUs it barely compiles faster and
  # steps slower); checkpoints of either setting load into the other.
  c.model.scan_blocks = False
  c.model.upsample_logits = True  # Logits at the input size; False: at stride 4.
  c.model.bn_momentum = 0.9997  # BatchNorm running statistics (TF-DeepLab's decay).
  c.model.kernels = 'auto'  # 'auto', 'xla' or 'cpu': DeepLab has no CPU rewrite, all run alike.
  c.compute_dtype = 'auto'  # bfloat16 on GPU/TPU, float32 on CPU; or 'float32' / 'bfloat16'.
  c.frozen_bn = False  # TF-DeepLab trains BatchNorm over the global batch.

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cityscapes'
  c.data.manual_dir = ''  # leftImg8bit/, disparity/, gtFine/ (folders or *_trainvaltest.zip).
  c.data.tfds_data_dir = ''  # Where TFDS keeps the prepared dataset; '' is TFDS's default.
  c.data.synthetic = False  # Generate synthetic Cityscapes-layout scenes into manual_dir.
  c.data.synthetic_image_size = (64, 128)  # (height, width) of generated synthetic scenes.
  c.data.num_train = 2975
  c.data.num_val = 500
  c.data.ignore_label = 255
  c.data.scale_range = (0.5, 2.0)  # Random scales low, low + step, ..., high.
  c.data.scale_step = 0.25
  c.data.num_workers = 8  # Workers that read, decode and augment examples.
  c.data.worker_kind = 'thread'  # Or 'process' (see data/workers.py).
  c.data.prefetch_to_device = 2  # Train batches transferred to the devices ahead of their step.
  c.batch_size = 8
  c.crop_size = 769
  c.eval_batch_size = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.schedule = 'poly'  # lr * (1 - t / total_steps) ** power.
  c.optim.lr = 0.01
  c.optim.power = 0.9
  c.optim.total_steps = 90000
  c.optim.momentum = 0.9
  c.optim.weight_decay = 4e-5  # TF-style L2 on conv kernels, none on depthwise kernels.
  c.optim.clip_grad_norm = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.output_stride = 16  # 16, or 8 (finer, slower; the same weights).
  c.eval.scales = (1.0,)  # Multi-scale inference: e.g. (0.75, 1.0, 1.25, 1.5, 1.75).
  c.eval.flip = False  # Also average the predictions of the mirrored images.
  # Also write the ensemble's prediction of every val image as a Cityscapes label-id PNG, to
  # WORKDIR/eval/step_N/label_ids/ under --mode=eval: what cityscapesscripts' evaluator reads.
  c.eval.write_label_ids = False

  c.init = ml_collections.ConfigDict()
  c.init.torch_resnet = ''  # Unused by DeepLab; kept so that initialization reads the same keys.
  # TF-DeepLab's ImageNet xception_65 checkpoint prefix (model.ckpt), read at the start of a run.
  c.init.tf_checkpoint = ''
  c.init.checkpoint = ''  # Written by `python -m asymfusion_jax.convert --tf_checkpoint=...`.

  c.max_steps = -1
  c.log_every_steps = 50
  c.eval_every_epochs = 50  # 371 steps per epoch at batch 8.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.num_prediction_images = 8
  return _missing_modality_keys(c)


def taskonomy_paper(modalities=('reshading', 'depth_euclidean'),
                    fusion: str = 'asym') -> ml_collections.ConfigDict:
  """The paper's image translation recipe on Taskonomy (docs/method.md section 11).

  fusion: a fusion method of asymfusion_jax.fusion.METHODS (the baselines of the paper's table:
  docs/method.md section 12); the config holds its name, so --config.model.fusion=concat
  overrides it.
  """
  c = ml_collections.ConfigDict()
  c.task = 'translation'
  c.seed = 0
  c.modalities = tuple(modalities)  # The input domains, in this order.
  c.target = 'rgb'

  c.model = ml_collections.ConfigDict()
  c.model.name = 'unet'
  c.model.ngf = 64  # Generator width (channels of encoder block 1).
  c.model.ndf = 64  # Discriminator width.
  c.model.num_downs = 8  # U-Net depth: inputs must be multiples of 2**num_downs.
  # 'asym' (shuffle + shift after the InstanceNorm of fusion_blocks), 'none', or a baseline:
  # 'concat', 'average', 'attention' (at the same blocks), 'late' (MMF: mean of the outputs).
  c.model.fusion = fusion_lib.method(fusion)
  c.model.fusion_blocks = (2, 3, 4, 5, 6, 7)  # Encoder blocks, counted from 1.
  c.model.dropout_rate = 0.5  # On the innermost decoder blocks, training only.
  # 'auto': the CPU-tuned transposed convolution where lowered for a CPU, the stock XLA op
  # elsewhere; 'cpu' or 'xla': one of them everywhere (asymfusion_jax.models.kernels).
  c.model.kernels = 'auto'
  c.compute_dtype = 'auto'  # bfloat16 on GPU/TPU, float32 on CPU; or 'float32' / 'bfloat16'.

  c.data = ml_collections.ConfigDict()
  c.data.name = 'taskonomy'
  c.data.manual_dir = ''  # Folder with one sub-folder per domain and train.txt, val.txt.
  c.data.tfds_data_dir = ''
  c.data.synthetic = False  # Generate the synthetic Taskonomy-layout set into manual_dir.
  c.data.synthetic_image_size = 96  # Side of generated (square) synthetic images.
  c.data.num_train = 1000
  c.data.num_val = 500
  c.data.load_size = 286  # Train images are resized to this, then cropped to crop_size.
  c.data.num_workers = 4
  c.data.worker_kind = 'thread'  # Or 'process' (see data/workers.py).
  c.data.prefetch_to_device = 2  # Train batches transferred to the devices ahead of their step.
  c.crop_size = 256  # Train crop and validation size.
  c.batch_size = 1
  c.eval_batch_size = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-4  # Adam, for the generator and the discriminator alike.
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.l1_weight = 100.0

  c.eval = ml_collections.ConfigDict()
  # The FID Inception weights (pytorch-fid's .pth, or `convert --inception` output); '' skips
  # FID and KID, and the best checkpoint is then chosen by the ensemble's L1.
  c.eval.inception_weights = ''

  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ''  # Generator (and discriminator) written by asymfusion_jax.convert.

  c.num_epochs = 300
  c.max_steps = -1
  c.log_every_steps = 100
  c.eval_every_epochs = 5
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.num_prediction_images = 8
  return _missing_modality_keys(c)


# The paper config of each dataset (config.data.name), whose values a config.json written before
# a field existed gets for it (config_io.load_workdir_config).
PAPER_CONFIGS = {'nyudv2': nyudv2_paper, 'cityscapes': cityscapes_deeplab,
                 'taskonomy': taskonomy_paper,
                 # No folders: a config.json's own modality_folders must not gain any.
                 'rgbx': lambda: rgbx_refinenet({})}


def paper_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper config of config's dataset (NYUDv2 for configs from before config.data.name);
  an empty config for an unknown dataset."""
  name = config.get('data', {}).get('name', 'nyudv2')
  return PAPER_CONFIGS[name]() if name in PAPER_CONFIGS else ml_collections.ConfigDict()


# Loading config files by path or by name, from any working directory.

# The repository's configs/ folder. The package is meant to be installed editable from a clone
# (`pip install -e .`), so this is the clone's configs/; a regular (non-editable) install does
# not ship configs/, and then only load() with a path to a config file works.
CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'


def _missing_modality_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The keys of missing-modality evaluation and modality dropout (asymfusion_jax/missing.py)."""
  if 'eval' not in c:
    c.eval = ml_collections.ConfigDict()
  # '+'-joined modality subsets that --mode=eval also evaluates without, e.g. ('depth',).
  c.eval.missing = ()
  c.eval.missing_fill = 'pad'  # What replaces a missing modality: 'pad', 'mean' or 'drop'.
  c.train = ml_collections.ConfigDict()
  # Per example and step, the probability that one modality is replaced by the fill.
  c.train.modality_dropout = 0.0
  return c


def available_configs() -> list:
  """Names of the config files in the repository's configs/ folder ('demo', ...), sorted."""
  if not CONFIGS_DIR.is_dir():
    return []
  return sorted(p.stem for p in CONFIGS_DIR.glob('*.py') if p.stem != '__init__')


def _missing_configs_dir_note() -> str:
  return (f'the configs/ folder {CONFIGS_DIR} does not exist: configs ship in the repository, not '
          'in the package, so install the package editable from a clone (pip install -e .) or '
          'pass the path of a config file to load()')


def resolve_path(path: str) -> pathlib.Path:
  """The config file that `path` names, looked up from the working directory first.

  A relative path that does not exist from the working directory is looked up from the
  repository root ('configs/demo.py'), then inside configs/ ('demo.py'), so the commands and
  snippets of the README work from any directory.

  Raises:
    FileNotFoundError: none of those exists; the message lists the places tried.
  """
  given = pathlib.Path(path).expanduser()
  candidates = [given] if given.is_absolute() else [
      pathlib.Path.cwd() / given, CONFIGS_DIR.parent / given, CONFIGS_DIR / given]
  for candidate in candidates:
    if candidate.is_file():
      return candidate.resolve()
  names = available_configs()
  hint = (f'available configs: {", ".join(names)}' if names else _missing_configs_dir_note())
  raise FileNotFoundError(f'config file {path!r} not found (tried '
                          f'{", ".join(str(c) for c in candidates)}); {hint}')


def _import_file(path: pathlib.Path):
  """Imports the Python file `path` as a fresh module (no sys.path or working-directory tricks)."""
  spec = importlib.util.spec_from_file_location(f'asymfusion_jax_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise AttributeError(f'config file {path} defines no get_config() function')
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of a config file: 'PATH' or 'PATH:ARG', as for --config= on the command line.

  PATH is resolved by resolve_path(), so load('configs/demo.py') works from any working
  directory. ARG, if given, is passed to the file's get_config() (load('configs/demo.py:rgb')).
  """
  path, sep, arg = spec.partition(':')
  module = _import_file(resolve_path(path))
  return module.get_config(arg) if sep else module.get_config()


def get_config(name: str) -> ml_collections.ConfigDict:
  """The config of the repository's configs/NAME.py by name: 'demo' or 'demo:rgb'.

  Raises:
    ValueError: NAME is not a file in configs/; the message lists the available names.
  """
  stem, sep, arg = name.partition(':')
  names = available_configs()
  if stem not in names:
    hint = (f'available configs: {", ".join(names)}' if names else _missing_configs_dir_note())
    raise ValueError(f'unknown config {name!r}; {hint}')
  return load(str(CONFIGS_DIR / f'{stem}.py') + (sep + arg))


class _ConfigFileParser(flags.ArgumentParser):
  """Parses --config=PATH[:ARG] with load(), so PATH is resolved as resolve_path() does."""

  def __init__(self, lock_config: bool):
    self._lock_config = lock_config

  def parse(self, argument):
    try:
      config = load(argument)
    except FileNotFoundError as e:  # absl reports a ValueError as an illegal flag value.
      raise ValueError(str(e)) from e
    if self._lock_config and callable(getattr(config, 'lock', None)):
      config.lock()
    return config

  def flag_type(self):
    return 'config object'


def DEFINE_config_file(name: str, default: str | None = None,  # pylint: disable=invalid-name
                       help_string: str = 'Path to a config file (configs/*.py).',
                       lock_config: bool = True) -> flags.FlagHolder:
  """ml_collections.config_flags.DEFINE_config_file, with the path resolved as load() does.

  --NAME=configs/demo.py[:ARG] then works from any working directory, and overrides
  --NAME.<key>=<value> work as with ml_collections.
  """
  holder = config_flags.DEFINE_config_file(name, default, help_string, lock_config=lock_config)
  flags.FLAGS[name].parser = _ConfigFileParser(lock_config)
  return holder
