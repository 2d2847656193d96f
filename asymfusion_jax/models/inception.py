"""Inception-v3 as the FID reference implementations use it, returning the 2048-d pool3 features.

This is the network that pytorch-fid ports from TensorFlow's 2015-12-05 Inception graph
(`pt_inception-2015-12-05-6726825d.pth`), which is what published FIDs are computed with
(docs/method.md section 12). It is torchvision's Inception3 layout (1008 classes, no auxiliary
head) with the pooling of the TensorFlow graph, which differs from torchvision's:

- the pool branches of Mixed_5b..5d (`FIDInceptionA`), Mixed_6b..6e (`FIDInceptionC`) and
  Mixed_7b (`FIDInceptionE_1`) average 3x3 windows over the pixels inside the image only
  (count_include_pad=False: TensorFlow's SAME average pooling);
- the pool branch of Mixed_7c (`FIDInceptionE_2`) max-pools instead of average-pooling.

Every convolution is torchvision's BasicConv2d: a bias-free convolution with PyTorch's explicit
zero padding, an inference BatchNorm (eps = 1e-3) and a ReLU. Module names are the PyTorch
attribute names (`Mixed_6b/branch7x7dbl_3/conv`), so converting the state_dict is a renaming
(asymfusion_jax.convert.inception_from_torch).

Input: uint8 or [0, 255] float RGB images (B, H, W, 3) of any size, resized to 299x299 with
half-pixel bilinear interpolation without antialiasing (PyTorch's F.interpolate with
align_corners=False, as pytorch-fid does) and scaled to [-1, 1]. `preprocess` is that step on
its own, so that callers can compile it per image size and the network once (fid.py does).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asymfusion_jax import resize

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPSILON = 1e-3


def preprocess(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) RGB in [0, 255] (uint8 or float) -> (B, 299, 299, 3) float32 in [-1, 1].

  pytorch-fid's order of operations: x / 255 (its ToTensor), bilinear resize, then 2x - 1, all in
  float32, so that the network sees the same values to rounding.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'Inception expects (B, H, W, 3) RGB images, got shape {images.shape}')
  x = images.astype(jnp.float32) / 255.0
  x = resize.resize(x, (INPUT_SIZE, INPUT_SIZE), 'bilinear')
  return 2.0 * x - 1.0


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv (no bias, PyTorch padding) -> inference BatchNorm -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.stride,
                padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                     name='bn')(x)
    return jax.nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the pixels inside the image (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  """PyTorch's MaxPool2d(3, stride=2): no padding, floor of the output size."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class FIDInceptionA(nn.Module):
  """Mixed_5b..5d: 1x1, 5x5, double 3x3 and (count_include_pad=False) average-pool branches."""
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b1 = conv(64, (1, 1), name='branch1x1')(x)
    b5 = conv(48, (1, 1), name='branch5x5_1')(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: the 35 -> 17 reduction (stride-2 3x3 branches and a max pool)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b3 = conv(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches and a (count_include_pad=False) average pool."""
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name='branch1x1')(x)
    b7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, (1, 1), name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: the 17 -> 8 reduction."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b3 = conv(192, (1, 1), name='branch3x3_1')(x)
    b3 = conv(320, (3, 3), stride=2, name='branch3x3_2')(b3)
    b7 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool)."""
  max_pool: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b1 = conv(320, (1, 1), name='branch1x1')(x)
    b3 = conv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.max_pool:  # The 2015-12-05 graph's Mixed_7c pool branch (pytorch-fid keeps it).
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_same(x)
    bp = conv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3: images -> 2048-d pool3 features (and optionally the 1008 logits).

  Attributes:
    dtype: compute dtype of the convolutions and BatchNorms (float32 or bfloat16); parameters
      stay float32, preprocessing is float32 and the features come back float32.
    preprocessed: the input is already `preprocess`'s output (B, 299, 299, 3) in [-1, 1]; by
      default it is RGB in [0, 255] of any size and preprocessed here.
  """
  dtype: Any = jnp.float32
  preprocessed: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, logits: bool = False):
    """Returns (B, 2048) float32 pool3 features, or (features, (B, 1008) logits) if `logits`.

    The logits layer (`fc`) only exists in the variables of a model initialised or applied with
    logits=True; the converted weights hold it, so both calls work with them.
    """
    x = images if self.preprocessed else preprocess(images)
    x = x.astype(self.dtype)
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    x = conv(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_valid(x)
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_valid(x)
    x = FIDInceptionA(32, dtype=self.dtype, name='Mixed_5b')(x)
    x = FIDInceptionA(64, dtype=self.dtype, name='Mixed_5c')(x)
    x = FIDInceptionA(64, dtype=self.dtype, name='Mixed_5d')(x)
    x = InceptionB(dtype=self.dtype, name='Mixed_6a')(x)
    for name, channels in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                           ('Mixed_6e', 192)):
      x = FIDInceptionC(channels, dtype=self.dtype, name=name)(x)
    x = InceptionD(dtype=self.dtype, name='Mixed_7a')(x)
    x = FIDInceptionE(max_pool=False, dtype=self.dtype, name='Mixed_7b')(x)
    x = FIDInceptionE(max_pool=True, dtype=self.dtype, name='Mixed_7c')(x)
    # pool3: the global average (AdaptiveAvgPool2d(1)), accumulated in float32.
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if not logits:
      return features
    return features, nn.Dense(NUM_CLASSES, dtype=jnp.float32, name='fc')(features)


def abstract_variables(logits: bool = True) -> dict[str, Any]:
  """The shapes and dtypes of InceptionV3's variables (jax.eval_shape: nothing is allocated)."""
  probe = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  model = InceptionV3(preprocessed=True)
  return dict(jax.eval_shape(lambda x: model.init(jax.random.key(0), x, logits=logits), probe))
