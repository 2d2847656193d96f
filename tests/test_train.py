"""The training program end to end on a tiny synthetic dataset: logs, checkpoints, resumption,
SIGTERM, corrupt checkpoints, NaN detection and evaluation."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asymfusion_jax import checkpointing, logger, train
from asymfusion_jax.tasks.segmentation import task as segmentation
from tests import tiny

TRAIN_KEYS = {'step', 'train/loss', 'train/lr_encoder', 'train/lr_decoder', 'steps_per_second'}
EVAL_KEYS = {'step'} | {f'eval/{b}/{m}' for b in ('rgb', 'depth', 'ensemble')
                        for m in ('pixel_acc', 'mean_acc', 'miou')}


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def final_params(workdir):
  ckpts = checkpointing.Checkpoints(workdir)
  step = ckpts.periodic.latest_step()
  restored = ckpts.periodic.restore(step)
  ckpts.close()
  return step, jax.tree.map(np.asarray, restored['variables']['params'])


def test_logs_checkpoints_and_predictions(full_run):
  workdir, results = full_run
  records = read_metrics(workdir)
  train_records = [r for r in records if 'train/loss' in r]
  eval_records = [r for r in records if 'eval/ensemble/miou' in r]
  assert [r['step'] for r in train_records] == list(range(2, 13, 2))
  assert all(set(r) == TRAIN_KEYS for r in train_records)
  assert [r['step'] for r in eval_records] == [4, 8, 12]
  assert all(set(r) == EVAL_KEYS for r in eval_records)
  assert [r['train/lr_encoder'] for r in train_records] == pytest.approx(
      [0.05, 0.05, 0.02, 0.02, 0.01, 0.01])
  assert eval_records[-1]['eval/ensemble/miou'] == pytest.approx(results['ensemble']['miou'])
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['modalities'] == ['rgb', 'depth']
  assert sorted(os.listdir(os.path.join(workdir, 'predictions'))) == ['0000.png', '0001.png',
                                                                    '0002.png']
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  ckpts = checkpointing.Checkpoints(workdir)
  assert ckpts.periodic.all_steps() == [8, 12]
  best_step = ckpts.best.latest_step()
  ckpts.close()
  best_miou = max(r['eval/ensemble/miou'] for r in eval_records)
  assert next(r for r in eval_records if r['step'] == best_step)['eval/ensemble/miou'] == best_miou


def test_eval_mode_reproduces_logged_metrics(full_run, tiny_data, tmp_path):
  """--mode=eval writes under eval/step_N/ and leaves metrics.jsonl and predictions/ alone."""
  import shutil
  workdir = str(tmp_path / 'copy')
  shutil.copytree(full_run[0], workdir)
  training_record = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      if name == 'metrics.jsonl' or os.path.basename(root) == 'predictions':
        with open(os.path.join(root, name), 'rb') as f:
          training_record[os.path.join(root, name)] = f.read()
  eval_records = [r for r in read_metrics(workdir) if 'eval/ensemble/miou' in r]
  results = train.evaluate_checkpoint(tiny.config(tiny_data), workdir, step=12)
  assert results['ensemble']['miou'] == pytest.approx(eval_records[-1]['eval/ensemble/miou'])
  assert results['rgb']['pixel_acc'] == pytest.approx(eval_records[-1]['eval/rgb/pixel_acc'])
  for path, content in training_record.items():
    with open(path, 'rb') as f:
      assert f.read() == content, path
  out = os.path.join(workdir, 'eval', 'step_12')
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f) == results
  assert sorted(os.listdir(os.path.join(out, 'predictions'))) == ['0000.png', '0001.png',
                                                                 '0002.png']
  assert not [name for name in os.listdir(workdir) if name.startswith('eval_step')]


def without_timing(records):
  return [{k: v for k, v in r.items() if k != 'steps_per_second'} for r in records]


def test_resumed_run_matches_uninterrupted(full_run, tiny_data, tmp_path, monkeypatch):
  """SIGTERM after step 5, inside a logging interval (every 2 steps), then the same command:
  the parameters and metrics.jsonl (but for timing) are those of the uninterrupted run, whose
  step 6 logs the mean loss of steps 5 and 6. A SIGTERM while the train step compiles, in
  between, stops before the first step and changes nothing."""
  workdir = str(tmp_path)
  config = tiny.config(tiny_data)
  config.max_steps = 6
  with monkeypatch.context() as patch:
    poison_after_step(patch, 5, lambda state: os.kill(os.getpid(), signal.SIGTERM) or state)
    with pytest.raises(train.StoppedBySignal, match='after step 5 of 6; checkpoint saved'):
      train.train_and_evaluate(config, workdir)
  assert final_params(workdir)[0] == 5
  before = open(os.path.join(workdir, 'metrics.jsonl')).read()
  with monkeypatch.context() as patch:
    compile_ = train._compiled  # pylint: disable=protected-access

    def compiled_then_sigterm(*args):
      step_fn = compile_(*args)
      os.kill(os.getpid(), signal.SIGTERM)
      return step_fn

    patch.setattr(train, '_compiled', compiled_then_sigterm)
    with pytest.raises(train.StoppedBySignal, match='before step 6 of 12, while the train step'):
      train.train_and_evaluate(tiny.config(tiny_data), workdir)
  assert final_params(workdir)[0] == 5
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == before
  train.train_and_evaluate(tiny.config(tiny_data), workdir)  # The same command, resumed.
  step, params = final_params(workdir)
  ref_step, ref_params = final_params(full_run[0])
  assert step == ref_step == 12
  # Resumed without the max_steps cut: config.json stays the first run's, the second is beside it.
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['max_steps'] == 6
  with open(os.path.join(workdir, 'config.step_5.json')) as f:
    assert json.load(f)['max_steps'] == -1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params,
               ref_params)
  records, expected = read_metrics(workdir), read_metrics(full_run[0])
  assert [r['step'] for r in records] == [r['step'] for r in expected]
  for record, reference in zip(without_timing(records), without_timing(expected)):
    assert record == pytest.approx(reference, rel=1e-5), record['step']


def test_corrupt_latest_checkpoint_is_skipped(full_run, tiny_data, tmp_path, caplog):
  import shutil
  workdir = str(tmp_path / 'copy')
  shutil.copytree(full_run[0], workdir)
  latest = os.path.join(workdir, 'checkpoints', '12', 'variables')
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  ckpts = checkpointing.Checkpoints(workdir)
  target = checkpointing.Checkpoints(full_run[0])
  reference = target.periodic.restore(8)
  reference = {**reference['variables'], **reference['train']}
  target.close()
  state, record = ckpts.restore_latest(checkpointing.abstract(reference))
  assert record['step'] == 8
  assert 'step 12' in caplog.text
  jax.tree.map(np.testing.assert_array_equal, state, reference)
  # The unreadable step is moved aside, so that the resumed run can save step 12 again.
  assert ckpts.periodic.all_steps() == [8]
  ckpts.close()
  assert os.listdir(os.path.join(workdir, checkpointing.UNREADABLE_DIR)) == ['12']
  train.train_and_evaluate(tiny.config(tiny_data), workdir)  # The same command, resumed.
  step, params = final_params(workdir)
  _, ref_params = final_params(full_run[0])
  assert step == 12
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params,
               ref_params)


def test_a_changed_model_stops_and_keeps_the_workdir(full_run, tiny_data, tmp_path):
  """Checkpoints that do not fit the config are not 'unreadable': nothing is restarted or lost."""
  import shutil
  workdir = str(tmp_path / 'copy')
  shutil.copytree(full_run[0], workdir)
  before = {name: open(os.path.join(workdir, name)).read()
            for name in ('config.json', 'metrics.jsonl')}
  config = tiny.config(tiny_data)
  config.model.width = 16
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r'step 12 .* another model .*bn1.*config\.json'):
    train.train_and_evaluate(config, workdir)
  for name, text in before.items():
    assert open(os.path.join(workdir, name)).read() == text, name
  ckpts = checkpointing.Checkpoints(workdir)
  assert ckpts.periodic.all_steps() == [8, 12] and ckpts.best.all_steps()
  ckpts.close()
  assert not os.path.exists(os.path.join(workdir, checkpointing.UNREADABLE_DIR))


def poison_after_step(monkeypatch, step, poison):
  """Training whose state after `step` goes through poison(state): outside the jitted step, so
  the run reuses the compiled step of every other tiny run."""
  real = segmentation.Segmentation.jit_train_step

  def jit_train_step(self, *args):
    compiled = real(self, *args)

    def step_fn(state, batch):
      state, metrics = compiled(state, batch)
      return (poison(state) if int(state.step) == step else state), metrics

    return step_fn

  monkeypatch.setattr(segmentation.Segmentation, 'jit_train_step', jit_train_step)


def test_parameters_are_checked_before_every_save(tiny_data, tmp_path, monkeypatch):
  """A step whose loss is finite but whose update is not: nothing is saved."""
  poison_after_step(monkeypatch, 4, lambda state: state.replace(
      params=jax.tree.map(lambda p: p * jnp.inf, state.params)))
  config = tiny.config(tiny_data)
  config.max_steps = 4
  with pytest.raises(FloatingPointError, match=r'parameters after step 4 are not finite'):
    train.train_and_evaluate(config, str(tmp_path))
  ckpts = checkpointing.Checkpoints(str(tmp_path))
  assert ckpts.periodic.all_steps() == [] and ckpts.best.all_steps() == []
  ckpts.close()


@pytest.mark.parametrize('key', ['log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps'])
def test_intervals_must_be_positive(tiny_data, tmp_path, key):
  config = tiny.config(tiny_data)
  config[key] = 0
  with pytest.raises(ValueError, match=rf'config\.{key}=0 must be a positive integer'):
    train.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_resume_after_a_lost_tail_logs_every_step_once(full_run, tiny_data, tmp_path):
  """A run that died after step 12 but whose last checkpoint is step 8 logs 9..12 again."""
  import shutil
  workdir = str(tmp_path / 'copy')
  shutil.copytree(full_run[0], workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '12'))
  lost_tail = [r for r in read_metrics(workdir) if r['step'] > 8]
  assert [r['step'] for r in lost_tail if 'train/loss' in r] == [10, 12]
  train.train_and_evaluate(tiny.config(tiny_data), workdir)
  records = read_metrics(workdir)
  assert [r['step'] for r in records if 'train/loss' in r] == list(range(2, 13, 2))
  assert [r['step'] for r in records if 'eval/ensemble/miou' in r] == [4, 8, 12]
  with open(os.path.join(workdir, logger.SUPERSEDED_FILE)) as f:
    assert [json.loads(line) for line in f] == lost_tail
  # The resumed run computes the same steps again.
  again = {r['step']: r['train/loss'] for r in records if 'train/loss' in r}
  for r in lost_tail:
    if 'train/loss' in r:
      assert again[r['step']] == pytest.approx(r['train/loss'], rel=1e-5)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
  """Parameters that turn NaN after step 5 make the loss of step 6 NaN: the run stops there,
  naming the step, and keeps the checkpoint of step 4 (saved with its evaluation)."""
  poison_after_step(monkeypatch, 5, lambda state: state.replace(
      params=jax.tree.map(lambda p: p * jnp.nan, state.params)))
  with pytest.raises(FloatingPointError, match=r'training loss is nan at step 6'):
    train.train_and_evaluate(tiny.config(tiny_data), str(tmp_path))
  ckpts = checkpointing.Checkpoints(str(tmp_path))
  steps = ckpts.periodic.all_steps()
  assert steps == [4]
  params = ckpts.periodic.restore(4)['variables']['params']
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
  ckpts.close()


def test_sigterm_saves_a_checkpoint(tiny_data, tmp_path):
  workdir = str(tmp_path)
  cmd = [sys.executable, '-m', 'asymfusion_jax.main', '--config=configs/demo.py',
         f'--workdir={workdir}'] + tiny.flags(tiny_data, **tiny.LONG_RUN)
  proc = subprocess.Popen(cmd, cwd=tiny.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
    assert proc.poll() is None, proc.stdout.read().decode()
    assert time.time() < deadline
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 143, out  # Not 0: a scheduler must tell preemption from completion.
  ckpts = checkpointing.Checkpoints(workdir)
  steps = ckpts.periodic.all_steps()
  ckpts.close()
  assert len(steps) == 1 and steps[0] >= 3, out
