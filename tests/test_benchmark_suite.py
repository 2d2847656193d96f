"""experiments/benchmark_suite.py on a tiny model: the cases it runs, what it writes, failures.

No timing is asserted; the suite must run each case as the benchmark does, with the case's own
settings winning over the common ones, and keep every result on disk as it goes.
"""

import json
import os
import subprocess
import sys

from absl import app
import pytest

from experiments import benchmark_suite
from tests import tiny

TINY = ['--config.model.width=8', '--config.model.decoder_width=16', '--config.crop_size=32',
        '--config.batch_size=2']


def run_suite(out, *args):
  # No timing is asserted; conftest's XLA_FLAGS skip LLVM's optimisations (half the compile time).
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, 'experiments/benchmark_suite.py', f'--out={out}',
       '--config=configs/demo.py', *args, '--', *TINY],
      cwd=tiny.REPO, env=env, capture_output=True, text=True, timeout=900)


def test_runs_the_cases_in_order_and_writes_every_result(tmp_path):
  proc = run_suite(tmp_path, '--cases=paper_fp32,batch_sweep', '--batch_sizes=4')
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(tmp_path / 'results.jsonl') as f:
    records = [json.loads(line) for line in f]
  # The sweep's batch size and the case's dtype win over the common --config.batch_size=2.
  assert [(r['case'], r['batch_size'], r['compute_dtype']) for r in records] == [
      ('paper_fp32', 2, 'float32'), ('batch_4', 4, 'bfloat16')]
  for r in records:
    assert r['crop_size'] == 32 and r['mode'] == 'train' and r['steps'] == 10
    assert r['step_ms'] > 0 and r['compile_s'] > 0 and r['tflop_per_step'] > 0
  # Twice the batch, about twice the work: the sweep really changed the program.
  assert records[1]['tflop_per_step'] == pytest.approx(2 * records[0]['tflop_per_step'], rel=0.1)

  table = (tmp_path / 'results.md').read_text()
  assert '| paper_fp32 | train | float32 | 2 | 32 |' in table
  assert '| batch_4 | train | bfloat16 | 4 | 32 |' in table
  # No paper_bf16 case ran, so no goal is judged.
  assert 'no successful paper_bf16 case' in table
  assert (tmp_path / 'paper_fp32.log').read_text().strip().splitlines()[-1].startswith('{')
  assert table in proc.stdout


def test_a_failed_case_is_recorded_with_its_log(tmp_path):
  record = benchmark_suite.run_case(
      'broken', ['--config=configs/demo.py', '--config.no_such_field=1'], '', tmp_path, 300)
  assert record['case'] == 'broken' and record['error'] == 'returncode 1'
  assert 'no_such_field' in record['log_tail']

  records = [record, {'case': 'paper_bf16', 'error': 'returncode timeout', 'log_tail': ''}]
  table = benchmark_suite.markdown(records, ['Goals: none'])
  assert 'Case broken failed (returncode 1)' in table and 'no_such_field' in table


def test_goals_are_judged_on_the_bf16_paper_case():
  paper = {'case': 'paper_bf16', 'device_kind': 'H100', 'depth': 101, 'modalities': 2,
           'batch_size': 6, 'crop_size': 500, 'step_ms': 60.0, 'compile_s': 75.0,
           'peak_memory_gb': None}
  lines = benchmark_suite.goal_lines([{'case': 'paper_fp32', 'step_ms': 1.0}, paper],
                                     67, 60, 12.9)
  assert 'batch 6, crop 500' in lines[0]
  assert lines[1].endswith('against <= 67 (step_ms): met')
  assert lines[2].endswith('against <= 60 (compile_s): NOT met')
  assert lines[3].endswith('(peak_memory_gb): unmeasured')


def test_cases_expand_in_order_and_unknown_ones_are_refused():
  cases = benchmark_suite.expand_cases(['eval_bf16', 'batch_sweep', 'command_buffers_off'],
                                       ['2', '8'])
  assert [c[0] for c in cases] == ['eval_bf16', 'batch_2', 'batch_8', 'command_buffers_off']
  assert '--config.batch_size=8' in cases[2][1] and '--mode=eval' in cases[0][1]
  assert cases[3][2] == '--xla_gpu_enable_command_buffer='
  with pytest.raises(app.UsageError, match="unknown case 'paper'"):
    benchmark_suite.expand_cases(['paper'], [])
  with pytest.raises(app.UsageError, match="'x'"):
    benchmark_suite.expand_cases(['batch_sweep'], ['x'])


def test_a_spent_budget_skips_cases_and_still_writes_the_table(tmp_path):
  (tmp_path / 'results.jsonl').write_text('{"case": "from an earlier run"}\n')
  proc = run_suite(tmp_path, '--cases=paper_bf16', '--budget_s=1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'paper_bf16: skipped' in proc.stdout
  assert (tmp_path / 'results.jsonl').read_text() == ''  # This run's results only.
  assert 'no successful paper_bf16 case' in (tmp_path / 'results.md').read_text()
