"""Tiny configurations of the two demos, shared by the training, export and device tests."""

import os
import subprocess
import time

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
  _set(c, {**OVERRIDES, **data_dirs, **(extra or {})})
  return c


def _flags(values: dict) -> list[str]:
  def fmt(v):
    return '(' + ','.join(map(str, v)) + ')' if isinstance(v, tuple) else str(v)
  return [f'--config.{k}={fmt(v)}' for k, v in values.items()]


def flags(data_dirs: dict, **extra) -> list[str]:
  """The same overrides (updated by `extra`) as flags for `python -m asymfusion_jax.main`."""
  return _flags({**OVERRIDES, **data_dirs, **extra})


# Overrides of configs/demo_translation.py: 16 training scenes of 72x72 resized to 72 and cropped
# to 64 (evaluation at 64), a 6-level U-Net of width 8, 4 steps per epoch, 12 steps in all.
TRANSLATION_OVERRIDES = {
    'model.ngf': 8,
    'model.ndf': 8,
    'data.synthetic_image_size': 72,
    'data.num_train': 16,
    'data.num_val': 6,
    'data.load_size': 72,
    'data.num_workers': 2,
    'crop_size': 64,
    'batch_size': 4,
    'eval_batch_size': 4,
    'num_epochs': 3,
    'eval_every_epochs': 1,
    'log_every_steps': 2,
    'checkpoint_every_steps': 1000,
    'num_prediction_images': 3,
}


def translation_config(tmp_dir, **overrides):
  """configs/demo_translation.py with TRANSLATION_OVERRIDES on synthetic data in `tmp_dir`.

  data.taskonomy.prepare writes and builds the data into tmp_dir/synthetic and
  tmp_dir/tfds. `overrides` are dotted keys with '__' for '.', e.g.
  translation_config(d, data__num_workers=0).
  """
  from configs import demo_translation  # pylint: disable=g-import-not-at-top
  c = demo_translation.get_config()
  dirs = {'data.manual_dir': os.path.join(str(tmp_dir), 'synthetic'),
          'data.tfds_data_dir': os.path.join(str(tmp_dir), 'tfds')}
  _set(c, {**TRANSLATION_OVERRIDES, **dirs,
           **{k.replace('__', '.'): v for k, v in overrides.items()}})
  return c


def translation_flags(tmp_dir, **overrides) -> list[str]:
  """translation_config's overrides as flags for `python -m asymfusion_jax.main` (with
  --config=configs/demo_translation.py)."""
  c = translation_config(tmp_dir)
  dirs = {'data.manual_dir': c.data.manual_dir, 'data.tfds_data_dir': c.data.tfds_data_dir}
  return _flags({**TRANSLATION_OVERRIDES, **dirs,
                 **{k.replace('__', '.'): v for k, v in overrides.items()}})


def kill_at_marker(command: list[str], marker, log, timeout: float = 300) -> None:
  """Runs `command` in the repository with HANG_MARKER=marker, output to the file `log`, and
  SIGKILLs it once it has made that file (where it hangs on purpose)."""
  with open(log, 'w') as out:
    proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, 'HANG_MARKER': str(marker)})
  try:
    deadline = time.time() + timeout
    while not os.path.exists(marker):
      assert proc.poll() is None, open(log).read()[-3000:]
      assert time.time() < deadline, open(log).read()[-3000:]
      time.sleep(0.2)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == -9


def _set(c, values: dict) -> None:
  """Sets dotted keys of a ConfigDict."""
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value


def run_script(script: str, *args: str, timeout: float = 600):
  """Runs a script of the repository (experiments/X.py) as a user does, from the repository
  root; returns the subprocess.CompletedProcess, output captured as text."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def write_finished_run(workdir, variant: str, seed: int, scores: dict, max_steps: int = -1,
                       metrics: list | None = None) -> str:
  """A run of an experiment grid (asymfusion_jax.runs) as a finished run leaves it, so that the
  experiment skips it: its final scores, and `metrics` as its metrics.jsonl records."""
  import json  # pylint: disable=g-import-not-at-top
  from asymfusion_jax import runs  # pylint: disable=g-import-not-at-top
  directory = runs.run_dir(str(workdir), variant, seed)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, runs.FINAL_SCORES), 'w') as f:
    json.dump({'variant': variant, 'seed': seed, 'max_steps': max_steps, 'scores': scores}, f)
  if metrics:
    with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in metrics)
  return directory


def record_evaluator_runs(monkeypatch, module) -> list:
  """Replaces module.Evaluator (a task's evaluation module) by a subclass that appends
  (evaluator, variables) to the returned list at each run, so a test can reuse what a run
  compiled."""
  made = []

  class Recording(module.Evaluator):

    def run(self, variables, *args, **kwargs):
      made.append((self, variables))
      return super().run(variables, *args, **kwargs)

  monkeypatch.setattr(module, 'Evaluator', Recording)
  return made
