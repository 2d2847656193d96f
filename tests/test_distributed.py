"""The same short run on 1 device and on 2 processes of 2 simulated CPU devices each (4 devices
in all, as hosts of a cluster hold several accelerators) gives the same losses: data parallelism
changes where the batch is computed, not what is computed.

Where 1 and 4 devices differ, measured (jax 0.10.2, CPU, the tiny config: frozen_bn=False, batch
4, 32 px crops, learning rate 0.05): only in the order of floating-point sums. On 4 devices the
BatchNorm batch statistics, the loss and the gradients are partial sums per device followed by
an all-reduce; on 1 device they are one sum. The first loss (no update yet, so only the
forward's reductions differ, the cross-device BatchNorm statistics included) agrees to 1.9e-7
relative. The parameters do not stay that close: the largest relative difference of any leaf
grows from 7e-7 after one update to 9e-5 after two and 9e-2 after three, always in a BatchNorm
bias of stages 3 and 4. At 32 px those stages are 2x2 and 1x1 pixels, so their statistics come
from 4 to 16 values per channel; the gradient through such a normalisation multiplies rounding
differences by orders of magnitude per update (on 1 device, a 2**-24 relative perturbation of
the initial parameters also leaves a leaf 0.87 apart after three updates). The later losses
then differ by 1e-4 to 2e-3 relative, depending on how XLA happens to compile the sums
(optimised or not): chaos of float rounding, not a difference in what is computed.
So these runs train at a learning rate of 0.001 (tiny.CONSTANT_LR), which shrinks every update
and with it the amplified difference, and compare the first loss at rtol 1e-6 (a per-device
BatchNorm would change it by percents) and the next two at rtol 1e-4, then an evaluation.
"""

import json
import os
import shutil
import signal
import time

import cv2
import numpy as np
import pytest

from asymfusion_jax import checkpointing, local_cluster, train
from tests import tiny

# The single-device reference: three logged losses (its evaluation at the end is not compared).
SHORT = {'max_steps': 3, 'log_every_steps': 1, 'num_prediction_images': 0, **tiny.CONSTANT_LR}


def assert_losses_match(losses_seen, reference):
  """The first loss to rtol 1e-6, the next ones to 1e-4 (see the module docstring)."""
  assert len(losses_seen) == len(reference) == 3
  np.testing.assert_allclose(losses_seen[0], reference[0], rtol=1e-6)
  np.testing.assert_allclose(losses_seen[1:], reference[1:], rtol=1e-4)


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r['train/loss'] for r in records if 'train/loss' in r], records[-1]


@pytest.fixture(scope='module')
def single_device_run(tiny_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('one_device'))
  config = tiny.config(tiny_data, extra=SHORT)
  train.train_and_evaluate(config, workdir)
  return losses(workdir)[0]


def test_two_processes_of_two_devices_match_one_and_stop_together(tiny_data, single_device_run,
                                                                  tmp_path):
  """Two processes of two devices each (one run, for CPU time): their first losses are the
  single device's; SIGTERM to one host stops both after the same step, which is saved; a
  two-process --mode=eval of that checkpoint, whose eval batch of 3 is filled up to the 4
  devices with masked rows, gives the single process's scores, and process 0 draws the
  predictions of the first validation images from its rows (the confusion matrices summed on
  the devices of both processes, the predictions read from process 0's shards)."""
  ref_losses = single_device_run
  workdir = str(tmp_path / 'run')
  long_run = {**tiny.LONG_RUN, 'num_prediction_images': 2, 'eval_batch_size': 3}
  logs = [open(tmp_path / f'process_{i}.log', 'w') for i in range(2)]
  cwd = os.getcwd()
  os.chdir(tiny.REPO)
  try:
    procs = local_cluster.start(2, ['--config=configs/demo.py', f'--workdir={workdir}']
                            + tiny.flags(tiny_data, **long_run), outputs=logs,
                            devices_per_process=2)
  finally:
    os.chdir(cwd)
  try:
    metrics = os.path.join(workdir, 'metrics.jsonl')
    deadline = time.time() + 600
    while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
      assert all(p.poll() is None for p in procs), (tmp_path / 'process_0.log').read_text()
      assert time.time() < deadline
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for log in logs:
      log.close()
  assert codes == [143, 143], [(tmp_path / f'process_{i}.log').read_text()[-3000:]
                               for i in range(2)]
  log_1 = (tmp_path / 'process_1.log').read_text()
  assert 'JAX process 1/2' in log_1 and 'global device count 4' in log_1
  assert_losses_match(losses(workdir)[0][:3], ref_losses)
  ckpts = checkpointing.Checkpoints(workdir)
  steps = ckpts.periodic.all_steps()
  ckpts.close()
  assert len(steps) == 1 and steps[0] % 10 == 0, steps
  assert f'Stopped by SIGTERM after step {steps[0]}' in (tmp_path / 'process_0.log').read_text()

  one = str(tmp_path / 'one_process')
  shutil.copytree(workdir, one)
  # At the eval batch size of the shared tiny run (whose compiled step the cache holds): padded
  # rows change no score.
  expected = train.evaluate_checkpoint(
      tiny.config(tiny_data, extra={**long_run, 'eval_batch_size': 4}), one, steps[0])
  os.chdir(tiny.REPO)
  try:
    outputs = local_cluster.launch(2, ['--config=configs/demo.py', f'--workdir={workdir}',
                                   '--mode=eval', f'--step={steps[0]}']
                               + tiny.flags(tiny_data, **long_run), timeout=600,
                               devices_per_process=2)
  finally:
    os.chdir(cwd)
  out = os.path.join(workdir, 'eval', f'step_{steps[0]}')
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert 'Evaluating 4 images per batch: config.eval_batch_size=3 rounded up' in outputs[0]
  for branch, scores in expected.items():
    assert results[branch] == pytest.approx(scores, rel=1e-4), branch
  assert sorted(os.listdir(os.path.join(out, 'predictions'))) == ['0000.png', '0001.png']
  # Process 0 drew validation images 0 and 1 from its own shards of the batch-sharded
  # predictions: the panels the single process drew (inputs, label and predictions; a wrong row
  # would differ everywhere, an argmax that rounding flips in a few pixels).
  for name in ('0000.png', '0001.png'):
    drawn, single = (cv2.imread(os.path.join(d, 'eval', f'step_{steps[0]}', 'predictions', name))
                     for d in (workdir, one))
    assert drawn.shape == single.shape and np.mean(drawn != single) < 0.01, name
