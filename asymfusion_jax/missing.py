"""Missing modalities: evaluation without some modalities, and modality dropout in training.

Fill policies (config.eval.missing_fill), what replaces a missing modality's input:
  'pad'  its normalised pad value: the pixel that pads crops and images, normalised as the
         modality's input is (data/predict_io.py `pad_value`; NYUDv2 RGB: 0 in every channel,
         depth: the ImageNet mean in 0..255 units / 5000; Cityscapes: the mean pixel and the
         invalid disparity; Taskonomy: mid-grey, 0).
  'mean' its training-set mean, per channel: the mean of the normalised network inputs over one
         epoch of training batches (steps 0 .. steps_per_epoch - 1, augmented as in training).
  'drop' the branch is removed: its input is filled with the pad value (with AsymFusion and the
         other fusions the stream still exists inside the network, exchanging channels with the
         others, so it must be given something), its output is not reported, and the ensemble is
         recomputed over the remaining branches with their alpha weights renormalised
         (softmax(alpha) restricted to them, divided by its sum; with fusion 'late', which has
         no alpha, the plain mean of the remaining branches).

config.eval.missing: a tuple of '+'-joined modality subsets, e.g. ('depth', 'rgb'); --mode=eval
evaluates the checkpoint once per subset and writes eval/step_N/missing.json and a table.

config.train.modality_dropout = p: at each training step, each example, with probability p,
gets one modality (drawn uniformly; never all) replaced by the fill value (pad value for
'drop': in training the branch keeps its loss). The draw is a function of (config.seed, step)
over the global batch, so a resumed run sees the same batches.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from asymfusion_jax.validation import ConfigError

FILLS = ('pad', 'mean', 'drop')


def subsets(config) -> list[tuple[str, ...]]:
  """The modality subsets of config.eval.missing, each a tuple of names in config order."""
  names = tuple(config.modalities)
  value = config.get('eval', {}).get('missing', ())
  if isinstance(value, str):
    value = (value,)
  if not isinstance(value, (tuple, list)):
    raise ConfigError(f"config.eval.missing={value!r} must be a tuple of '+'-joined modality "
                      f'subsets of {names}, e.g. (\'{names[-1]}\',)')
  result = []
  for item in value:
    parts = item.split('+') if isinstance(item, str) else [item]
    if not all(p in names for p in parts) or len(set(parts)) != len(parts):
      raise ConfigError(f'config.eval.missing: {item!r} is not a \'+\'-joined subset of the '
                        f'modalities {names}')
    if len(parts) == len(names):
      raise ConfigError(f'config.eval.missing: {item!r} drops every modality; at least one '
                        'must remain')
    result.append(tuple(n for n in names if n in parts))
  return result


def fill_policy(config) -> str:
  fill = config.get('eval', {}).get('missing_fill', 'pad')
  if fill not in FILLS:
    raise ConfigError(f'config.eval.missing_fill={fill!r} must be one of {FILLS}')
  return fill


def dropout_rate(config) -> float:
  p = config.get('train', {}).get('modality_dropout', 0.0)
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
    raise ConfigError(f'config.train.modality_dropout={p!r} must be a probability in [0, 1]')
  if p > 0 and len(config.modalities) < 2:
    raise ConfigError(f'config.train.modality_dropout={p!r} needs 2 or more modalities (one is '
                      f'never dropped with all the others); config.modalities is '
                      f'{tuple(config.modalities)}')
  return float(p)


def check_config(config) -> None:
  """The three keys' one-line errors (ConfigError)."""
  subsets(config)
  fill_policy(config)
  dropout_rate(config)


def fill_values(config, fill: str, task=None) -> np.ndarray:
  """(M, C) float32: what replaces each modality's input under `fill`."""
  from asymfusion_jax.data import predict_io  # pylint: disable=g-import-not-at-top
  if fill == 'mean':
    return training_mean(config, task)
  io = predict_io.get(config)
  return np.stack([np.asarray(io.pad_value(n), np.float32) for n in config.modalities])


def training_mean(config, task=None) -> np.ndarray:
  """(M, C) mean of the network inputs over one epoch of training batches (valid rows)."""
  from asymfusion_jax import tasks  # pylint: disable=g-import-not-at-top
  task = task or tasks.get(config)
  steps = task.steps_per_epoch(config)
  total, count = 0.0, 0
  for i, batch in enumerate(task.train_batches(config, 0)):
    if i >= steps:
      break
    x = np.asarray(batch[task.input_key], np.float64)
    if 'mask' in batch:
      x = x[:, np.asarray(batch['mask'], bool)]
    total = total + x.sum(axis=(1, 2, 3))
    count += int(np.prod(x.shape[1:4]))
  return (total / max(count, 1)).astype(np.float32)


def fill(x, dropped, values):
  """x (M, B, H, W, C) with modality m of row b replaced by values[m] where dropped[m, b]
  (dropped (M,) or (M, B) bool)."""
  xp = jnp if isinstance(x, jax.Array) else np
  dropped = xp.asarray(dropped, bool)
  if dropped.ndim == 1:
    dropped = xp.broadcast_to(dropped[:, None], x.shape[:2])
  values = xp.asarray(values, x.dtype)[:, None, None, None, :]
  return xp.where(dropped[:, :, None, None, None], values, x)


def renormalised_ensemble(outputs, params, keep):
  """The ensemble of the kept branches: softmax(alpha) over them, renormalised (the plain mean
  where the model has no alpha: fusion 'late'). outputs (M + 1, ...), keep (M,) bool."""
  keep = jnp.asarray(keep, jnp.float32)
  alpha = params.get('alpha') if hasattr(params, 'get') else None
  weights = keep if alpha is None else jax.nn.softmax(alpha) * keep
  weights = weights / jnp.sum(weights)
  return jnp.einsum('m,m...->...', weights, outputs[:-1])


class MissingModel:
  """A model whose inputs lack some modalities: apply fills them (and, dropping branches,
  recomputes the ensemble over the others). Anything else is the wrapped model's."""

  def __init__(self, model, dropped: tuple[bool, ...], values: np.ndarray, drop: bool):
    self.model, self.dropped, self.values, self.drop = model, tuple(dropped), values, drop

  def apply(self, variables, x, *args, **kwargs):
    x = fill(x, np.asarray(self.dropped), self.values)
    outputs = self.model.apply(variables, x, *args, **kwargs)
    if not self.drop:
      return outputs
    keep = ~np.asarray(self.dropped)
    ensemble = renormalised_ensemble(outputs, variables.get('params', {}), keep)
    return outputs.at[-1].set(ensemble.astype(outputs.dtype))

  def clone(self, **kwargs):
    return MissingModel(self.model.clone(**kwargs), self.dropped, self.values, self.drop)

  def __getattr__(self, name):
    return getattr(self.model, name)


def wrapper(config, subset: tuple[str, ...], fill_name: str, values: np.ndarray):
  """model -> the MissingModel without `subset`."""
  dropped = tuple(n in subset for n in config.modalities)
  return lambda model: MissingModel(model, dropped, values, fill_name == 'drop')


def reported(results: dict, subset, fill_name: str) -> dict:
  """The branches that a run without `subset` reports: all, or (drop) the remaining ones."""
  if fill_name != 'drop':
    return results
  return {k: v for k, v in results.items() if k not in subset}


def name(subset) -> str:
  return '+'.join(subset) if subset else 'none'


def format_table(record: dict) -> str:
  """One row per (missing subset, branch), one column per metric."""
  rows = [(s, b, r) for s, branches in record['missing'].items() for b, r in branches.items()]
  keys = list(dict.fromkeys(k for _, _, r in rows for k in r))
  ws = max([len('missing')] + [len(s) for s, _, _ in rows])
  wb = max([len('branch')] + [len(b) for _, b, _ in rows])
  head = f'{"missing":<{ws}}  {"branch":<{wb}}' + ''.join(f'  {k:>9}' for k in keys)
  lines = [f'missing modalities (fill {record["fill"]!r}) at step {record["step"]}', head,
           '-' * len(head)]
  for s, b, r in rows:
    lines.append(f'{s:<{ws}}  {b:<{wb}}' + ''.join(
        f'  {float(r[k]):>9.4f}' if k in r else f'  {"":>9}' for k in keys))
  return '\n'.join(lines)


def evaluate(task, config, mesh, variables, full: dict, out_dir: str, step: int) -> dict:
  """Evaluates `variables` once per subset of config.eval.missing; writes out_dir/missing.json
  ({'step', 'fill', 'fill_values', 'missing': {subset: {branch: {metric: value}}}}, subset
  'none' the full evaluation `full`) and prints the table. Returns the record."""
  fill_name = fill_policy(config)
  values = fill_values(config, fill_name, task)
  record = {'step': step, 'fill': fill_name,
            'fill_values': {n: values[m].tolist() for m, n in enumerate(config.modalities)},
            'missing': {'none': full}}
  for subset in subsets(config):
    evaluator = task.evaluator(config, mesh, wrap=wrapper(config, subset, fill_name, values))
    results = evaluator.run(variables, None, step=step)
    record['missing'][name(subset)] = reported(results, subset, fill_name)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'missing.json'), 'w') as f:
      json.dump(record, f, indent=1)
  print(format_table(record), flush=True)
  return record


def train_batches(task, config, start_step: int):
  """task.train_batches(config, start_step), with modality dropout when
  config.train.modality_dropout > 0."""
  batches = task.train_batches(config, start_step)
  p = dropout_rate(config)
  if p == 0:
    return batches
  fill_name = fill_policy(config)
  values = fill_values(config, 'pad' if fill_name == 'drop' else fill_name, task)
  return _dropped(config, batches, start_step, p, task.input_key, values)


def _dropped(config, batches, start_step, p, input_key, values):
  m = len(config.modalities)
  try:
    for step, batch in enumerate(batches, start_step):
      yield apply_dropout(config, batch, step, p, m, input_key, values)
  finally:
    batches.close()  # Its worker threads, when this generator is closed.


def dropout_draw(seed: int, step: int, rows: int, p: float, m: int) -> np.ndarray:
  """(M, rows) bool: which modality each of the global batch's rows loses at `step`."""
  rng = np.random.default_rng([seed, step, 0x6d697373])
  hit = rng.random(rows) < p
  which = rng.integers(0, m, rows)
  return (np.arange(m)[:, None] == which[None]) & hit[None]


def apply_dropout(config, batch: dict, step: int, p: float, m: int, input_key: str,
                  values: np.ndarray) -> dict:
  x = batch[input_key]
  local = x.shape[1]
  first = jax.process_index() * local
  dropped = dropout_draw(int(config.seed), step, local * jax.process_count(), p, m)
  return {**batch, input_key: fill(x, dropped[:, first:first + local], values)}
