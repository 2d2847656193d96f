"""A stand-in for the FID Inception network in tests, under the real fid.FeatureExtractor: the
features of an image are FEATURE_DIM = 64 of its pixel values / 255, evenly spaced over the
image (exact, and per image whatever the batch), so tests of what is done with the features
(statistics, FID, KID, per-process extraction) need neither the weights nor the network's
compile time, and an FID costs eigensolvers of 64 x 64 (2048 x 2048 take seconds, minutes on a
loaded 2-core machine).

  python -m tests.fid_stand_in MAIN_FLAGS  # asymfusion_jax.main with the stand-in installed
"""

import jax.numpy as jnp

from asymfusion_jax import fid
from asymfusion_jax.models import inception

FEATURE_DIM = 64


def load_weights(path):
  del path
  return {'params': {}, 'batch_stats': {}}


def preprocess(images):
  return images.astype(jnp.float32)


class PixelNetwork:
  """In place of inception.InceptionV3: apply(variables, images) -> (B, FEATURE_DIM) pixel
  values."""

  def __init__(self, dtype=None, preprocessed=True):
    del dtype, preprocessed

  def apply(self, variables, images):
    del variables
    return pixel_features(images)


def pixel_features(images):
  """(B, H, W, 3) -> (B, FEATURE_DIM) float32 (NumPy or JAX arrays)."""
  flat = images.reshape(images.shape[0], -1)
  return flat[:, ::max(1, flat.shape[1] // FEATURE_DIM)][:, :FEATURE_DIM].astype('float32') / 255.0


def install(setattr_fn=setattr):
  """Puts the stand-in in place (setattr_fn: pytest's monkeypatch.setattr to undo it)."""
  setattr_fn(fid, 'load_weights', load_weights)
  setattr_fn(inception, 'preprocess', preprocess)
  setattr_fn(inception, 'InceptionV3', PixelNetwork)
  setattr_fn(inception, 'FEATURE_DIM', FEATURE_DIM)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from asymfusion_jax import main  # pylint: disable=g-import-not-at-top
  install()
  app.run(main.main, flags_parser=main.parse_flags)
