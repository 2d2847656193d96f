"""How each modality of an RGB-X dataset becomes network input.

A modality's normalisation is `(raw * scale - mean) / std` per channel (data.modalities.Modality),
taken, in this order, from:
1. config.data.normalisation.<name>: `mean` and `std` (one value or one per channel) and
   optionally `scale` (default 1); an entry may give only `interpolation`, which then keeps the
   normalisation of 2. or 3.;
2. for the modality named 'rgb', the ImageNet normalisation of 8-bit colour that the pretrained
   encoder expects (data.modalities.MODALITIES['rgb']);
3. otherwise the per-channel mean and standard deviation of its raw values over the train split,
   measured when the dataset was built and stored with the build (a standard deviation of 0, a
   constant modality, counts as 1). The rgbx dataset assumes no unit for depth or any other
   modality: DFormer's depth PNGs are 8-bit, others store millimetres, thermal cameras their own
   counts, so measuring is the safe default.
The augmentation resizes 'rgb' bicubically and every other modality with its nearest neighbour
(no value is invented across an object's edge, as for depth in the paper), unless
config.data.normalisation.<name>.interpolation says 'nearest', 'linear' or 'cubic'.

A one-channel modality enters the model as the paper feeds depth: repeated to 3 channels, so that
every modality fits the encoder's one shared 3-channel stem (the model takes (M, B, H, W, 3)).
Padding (of the train crop and of evaluation batches) uses, per modality, the raw value that
normalises to 0: `mean / scale`, which for 'rgb' is the ImageNet mean pixel the NYUDv2 pipeline
pads with.
"""

import dataclasses

import ml_collections
import numpy as np

from asymfusion_jax.data import modalities as modality_lib

INTERPOLATIONS = ('nearest', 'linear', 'cubic')
KEYS = ('scale', 'mean', 'std', 'interpolation')
FORMULA = ('(raw * scale - mean) / std per channel; one-channel inputs repeated to 3 channels; '
           'padding with raw_pad_value (= mean / scale, which normalises to 0)')


def _three(value) -> tuple[float, float, float]:
  values = (value,) if np.isscalar(value) else tuple(value)
  return tuple(float(v) for v in (values * 3 if len(values) == 1 else values))


def configured(config: ml_collections.ConfigDict) -> dict:
  """config.data.normalisation as plain dicts (absent: {})."""
  own = config.data.get('normalisation') or {}
  return {name: dict(entry) for name, entry in own.items()}


def needs_statistics(config: ml_collections.ConfigDict, name: str) -> bool:
  """Whether modality `name` is normalised with the statistics measured at build time."""
  entry = configured(config).get(name, {})
  return 'mean' not in entry and name != 'rgb'


def resolve(config: ml_collections.ConfigDict, name: str,
            measured: dict | None) -> tuple[modality_lib.Modality, str]:
  """(the Modality of `name`, where it comes from: 'config', 'imagenet' or 'measured').

  measured: the build's record of the modality ({'mean': [...], 'std': [...]}), needed only
  when needs_statistics(config, name).
  """
  entry = configured(config).get(name, {})
  interpolation = entry.get('interpolation', 'cubic' if name == 'rgb' else 'nearest')
  if 'mean' in entry:
    return modality_lib.Modality(float(entry.get('scale', 1.0)), _three(entry['mean']),
                                 _three(entry['std']), interpolation), 'config'
  if name == 'rgb':
    return dataclasses.replace(modality_lib.MODALITIES['rgb'],
                               interpolation=interpolation), 'imagenet'
  std = [s if s > 0 else 1.0 for s in measured['std']]
  return modality_lib.Modality(1.0, _three(measured['mean']), _three(std),
                               interpolation), 'measured'


def raw_pad_value(modality: modality_lib.Modality) -> np.ndarray:
  """The float32 (3,) raw value that normalises to 0."""
  return np.asarray(modality.mean, np.float32) / np.float32(modality.scale)


def describe(name: str, modality: modality_lib.Modality, source: str,
             channels: int | None) -> dict:
  """The export sidecar's entry of one modality."""
  return {**dataclasses.asdict(modality), 'source': source, 'channels': channels,
          'raw_pad_value': raw_pad_value(modality).tolist()}
