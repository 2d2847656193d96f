"""experiments/benchmark_suite.py on a tiny model, as a user runs it: the cases it runs, what it
writes, the goals it judges, failures.

No timing is asserted; the suite must run each case as the benchmark does, with the case's own
settings winning over the common ones, and keep every result on disk as it goes.
"""

import json

import pytest

from tests import tiny

TINY = ['--config.model.width=8', '--config.model.decoder_width=16', '--config.crop_size=32',
        '--config.batch_size=2']


def run_suite(out, *args, extra=()):
  # No timing is asserted; conftest's XLA_FLAGS skip LLVM's optimisations (half the compile time).
  return tiny.run_script('experiments/benchmark_suite.py', f'--out={out}',
                         '--config=configs/demo.py', *args, '--', *TINY, *extra, timeout=900)


def test_runs_the_cases_in_order_writes_every_result_and_judges_the_goals(tmp_path):
  proc = run_suite(tmp_path, '--cases=paper_bf16,batch_sweep', '--batch_sizes=4',
                   '--goal_step_ms=1e9', '--goal_compile_s=0.001', '--goal_peak_gb=1e9')
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(tmp_path / 'results.jsonl') as f:
    records = [json.loads(line) for line in f]
  # The sweep's batch size and the case's dtype win over the common --config.batch_size=2 and
  # the demo config's float32.
  assert [(r['case'], r['batch_size'], r['compute_dtype'], r['steps']) for r in records] == [
      ('paper_bf16', 2, 'bfloat16', 20), ('batch_4', 4, 'bfloat16', 10)]
  for r in records:
    assert r['crop_size'] == 32 and r['mode'] == 'train'
    assert r['step_ms'] > 0 and r['compile_s'] > 0 and r['tflop_per_step'] > 0
  # Twice the batch, about twice the work: the sweep really changed the program.
  assert records[1]['tflop_per_step'] == pytest.approx(2 * records[0]['tflop_per_step'], rel=0.1)
  assert (tmp_path / 'hlo' / 'train_summary.json').exists()  # paper_bf16 dumps its HLO.

  table = (tmp_path / 'results.md').read_text()
  assert '| paper_bf16 | train | bfloat16 | 2 | 32 |' in table
  assert '| batch_4 | train | bfloat16 | 4 | 32 |' in table
  assert 'Goals (paper_bf16 on cpu: RefineNet-26, 2 modalities, batch 2, crop 32):' in table
  goals = [line for line in table.splitlines() if line.startswith('- ')]
  assert goals[0].startswith('- train step: ') and goals[0].endswith('(step_ms): met')
  assert goals[1].endswith('against <= 0.001 (compile_s): NOT met')
  assert goals[2].endswith('(peak_memory_gb): met')
  assert (tmp_path / 'paper_bf16.log').read_text().strip().splitlines()[-1].startswith('{')
  assert table in proc.stdout


def test_a_failed_case_is_recorded_with_its_log(tmp_path):
  proc = run_suite(tmp_path, '--cases=paper_fp32', extra=['--config.no_such_field=1'])
  assert proc.returncode == 1, proc.stderr[-4000:]
  (record,) = [json.loads(line) for line in (tmp_path / 'results.jsonl').read_text().splitlines()]
  assert record['case'] == 'paper_fp32' and record['error'] == 'returncode 1'
  assert 'no_such_field' in record['log_tail']
  table = (tmp_path / 'results.md').read_text()
  assert 'Case paper_fp32 failed (returncode 1)' in table and 'no_such_field' in table


def test_a_spent_budget_skips_the_cases_in_order_and_still_writes_the_table(tmp_path):
  (tmp_path / 'results.jsonl').write_text('{"case": "from an earlier run"}\n')
  proc = run_suite(tmp_path, '--cases=eval_bf16,batch_sweep,command_buffers_off',
                   '--batch_sizes=2,8', '--budget_s=1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  skipped = [line.split(':')[0] for line in proc.stdout.splitlines() if ': skipped' in line]
  assert skipped == ['eval_bf16', 'batch_2', 'batch_8', 'command_buffers_off']
  assert (tmp_path / 'results.jsonl').read_text() == ''  # This run's results only.
  assert 'no successful paper_bf16 case' in (tmp_path / 'results.md').read_text()


@pytest.mark.parametrize('args,message', [
    (['--cases=paper'], "unknown case 'paper'"),
    (['--cases=batch_sweep', '--batch_sizes=x'], "'x' is not a positive integer"),
])
def test_unknown_cases_are_refused(tmp_path, args, message):
  proc = run_suite(tmp_path, *args)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
