"""experiments/benchmark_suite.py on tiny models, as a user runs it: the cases it runs for each
model (RefineNet, DeepLab, the translation U-Net and the PyTorch reference), what it writes, the
goals it judges and the ratios it reports, failures and skipped cases; and, in-process, the
default cases' settings and order, the ratios and the choice of the PyTorch device.

No timing is asserted; the suite must run each case as the benchmark does, with the case's own
settings winning over the common ones, and keep every result on disk as it goes.
"""

import json
import sys

import pytest

from configs import cityscapes_deeplab_xception65, nyudv2_refinenet101, taskonomy_shade_normal_edge
from experiments import benchmark_suite, benchmark_suite_report, benchmark_torch_device
from tests import tiny

# Tiny models of the three configs, one flag each (every case of that model gets them).
TINY = ['--config=configs/demo.py',
        *[f'--refinenet_arg=--config.{a}' for a in ('model.width=8', 'model.decoder_width=16',
                                                    'crop_size=32')],
        *[f'--deeplab_arg=--config.{a}' for a in ('model.width_divisor=8',
                                                  'model.middle_flow_units=1', 'crop_size=33')],
        *[f'--translation_arg=--config.{a}' for a in ('model.ngf=8', 'model.ndf=8',
                                                      'model.num_downs=5',
                                                      'model.fusion_blocks=(2,3)',
                                                      'crop_size=32')],
        '--torch_arg=--threads=1']


def run_suite(out, *args, extra=()):
  # No timing is asserted; conftest's XLA_FLAGS skip LLVM's optimisations (half the compile time).
  return tiny.run_script('experiments/benchmark_suite.py', f'--out={out}', *TINY, *args, '--',
                         '--config.batch_size=2', *extra, timeout=900)


def records_of(out):
  return [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]


def test_runs_every_model_in_order_writes_every_result_judges_the_goals_and_the_ratio(tmp_path):
  proc = run_suite(tmp_path / 'out', '--cases=paper_bf16,torch_bf16,deeplab_bf16,translation_bf16',
                   f'--logs={tmp_path / "logs"}', '--goal_step_ms=1e9', '--goal_compile_s=0.001',
                   '--goal_peak_gb=1e9')
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = records_of(tmp_path / 'out')
  # Each model's config with its tiny arguments; the common batch size (after `--`) reached
  # every case, and the case's dtype and steps win over the demo config's float32.
  assert [(r['case'], r['model'], r['batch_size'], r['crop_size'], r['compute_dtype'], r['steps'])
          for r in records] == [
              ('paper_bf16', 'refinenet', 2, 32, 'bfloat16', 20),
              ('torch_bf16', 'torch_reference.RefineNet', 2, 32, 'bfloat16', 20),
              ('deeplab_bf16', 'deeplab', 2, 33, 'bfloat16', 10),
              ('translation_bf16', 'unet', 2, 32, 'bfloat16', 30)]
  for r in records:
    assert r['mode'] == 'train' and r['step_ms'] > 0 and r['platform'] == 'cpu'
  for r in records[::2] + records[3:]:  # The JAX cases.
    assert r['compile_s'] > 0 and r['tflop_per_step'] > 0
    assert r['kernels'] == 'cpu'  # 'auto', lowered for a CPU.
  # PyTorch ran on the platform JAX ran on, in autocast bf16 with channels_last, 1 thread.
  torch_run = records[1]
  assert (torch_run['autocast'], torch_run['channels_last'], torch_run['torch_threads'],
          torch_run['compile_s']) == ('bfloat16', True, 1, None)
  assert (tmp_path / 'logs' / 'hlo' / 'train_summary.json').exists()  # paper_bf16's HLO.
  assert (tmp_path / 'logs' / 'deeplab_bf16.log').read_text().strip().splitlines()[-1][0] == '{'

  table = (tmp_path / 'out' / 'results.md').read_text()
  assert '| paper_bf16 | refinenet | train | bfloat16 | cpu | 2 | 32 |' in table
  assert '| deeplab_bf16 | deeplab | train | bfloat16 | cpu | 2 | 33 |' in table
  assert '| translation_bf16 | unet | train | bfloat16 | cpu | 2 | 32 |' in table
  assert 'Goals (paper_bf16 on cpu: RefineNet-26, 2 modalities, batch 2, crop 32):' in table
  goals = [line for line in table.splitlines() if line.startswith('- ')]
  assert goals[0].startswith('- train step: ') and goals[0].endswith('(step_ms): met')
  assert goals[1].endswith('against <= 0.001 (compile_s): NOT met')
  assert goals[2].endswith('(peak_memory_gb): met')
  ratio = next(line for line in table.splitlines() if line.startswith('| JAX / PyTorch'))
  cells = [c.strip() for c in ratio.strip('|').split('|')]
  assert cells[1:3] == ['paper_bf16 [cpu]', 'torch_bf16']
  assert float(cells[5]) == pytest.approx(records[0]['step_ms'] / records[1]['step_ms'], rel=1e-3)
  assert '| translation_bf16 [cpu] | translation_kernels_cpu | - | - | not measured: ' \
         'translation_kernels_cpu not run | - |' in table
  assert 'JAX / PyTorch: RefineNet train fp32' not in table  # Neither side ran.
  assert table in proc.stdout


def test_a_failed_case_and_a_torch_case_without_its_device_are_recorded(tmp_path):
  proc = run_suite(tmp_path, '--cases=deeplab_bf16,torch_fp32', '--torch_device=cuda',
                   '--deeplab_arg=--config.no_such_field=1')
  assert proc.returncode == 1, proc.stderr[-4000:]
  failed, skipped = records_of(tmp_path)
  assert failed['case'] == 'deeplab_bf16' and failed['error'] == 'returncode 1'
  assert 'no_such_field' in failed['log_tail']
  assert skipped['case'] == 'torch_fp32' and skipped['skipped'].endswith('has no CUDA device')
  table = (tmp_path / 'results.md').read_text()
  assert 'Case deeplab_bf16 failed (returncode 1)' in table and 'no_such_field' in table
  assert f'- torch_fp32: {skipped["skipped"]}' in table
  assert ('not measured: deeplab_bf16 failed (returncode 1); deeplab_kernels_cpu not run'
          in table)
  assert f'not measured: paper_fp32 not run; torch_fp32 skipped: {skipped["skipped"]}' in table
  assert f'torch_fp32: skipped, {skipped["skipped"]}' in proc.stdout


def test_a_spent_budget_skips_the_cases_in_order_and_still_writes_the_table(tmp_path):
  (tmp_path / 'results.jsonl').write_text('{"case": "from an earlier run"}\n')
  proc = run_suite(tmp_path, '--cases=eval_bf16,batch_sweep,command_buffers_off',
                   '--batch_sizes=2,8', '--budget_s=1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  skipped = [line.split(':')[0] for line in proc.stdout.splitlines() if ': skipped' in line]
  assert skipped == ['eval_bf16', 'batch_2', 'batch_8', 'command_buffers_off']
  records = records_of(tmp_path)  # This run's results only.
  assert [r['case'] for r in records] == skipped
  assert all('of the budget left, needs ~55 s' in r['skipped'] for r in records)
  table = (tmp_path / 'results.md').read_text()
  assert 'no successful paper_bf16 case' in table and '- batch_8: ' in table


@pytest.mark.parametrize('args,message', [
    (['--cases=paper'], "unknown case 'paper'"),
    (['--cases=batch_sweep', '--batch_sizes=x'], "'x' is not a positive integer"),
])
def test_unknown_cases_are_refused(tmp_path, args, message):
  proc = run_suite(tmp_path, *args)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


def test_the_default_suite_runs_the_paper_settings_goal_first_within_its_budget():
  cases = benchmark_suite.expand_cases(benchmark_suite.DEFAULT_CASES, [])
  assert [name for name, _ in cases[:2]] == ['paper_bf16', 'torch_bf16']
  assert sum(case.estimate_s for _, case in cases) <= 500 - 15  # --budget_s's default.
  # Every pair of the ratios table is in the default suite, but the noise control (--cases).
  for _, a, b in benchmark_suite_report.RATIOS:
    assert {a, b} <= set(benchmark_suite.DEFAULT_CASES) or b == 'deeplab_kernels_cpu'
    assert {a, b} <= set(benchmark_suite.CASES)
  # The configs as they are: no case of the default suite changes the batch or the crop.
  assert not [a for _, case in cases for a in case.args if 'batch_size' in a or 'crop_size' in a]
  for module, (batch, crop) in ((nyudv2_refinenet101, (6, 500)),
                                (cityscapes_deeplab_xception65, (8, 769)),
                                (taskonomy_shade_normal_edge, (1, 256))):
    config = module.get_config()
    assert (config.batch_size, config.crop_size) == (batch, crop)
    assert f'configs/{module.__name__.split(".")[-1]}.py' in benchmark_suite.CONFIGS.values()
  values = dict(benchmark_suite.CONFIGS, refinenet_arg=['--r'], deeplab_arg=['--d'],
                translation_arg=['--t'], torch_arg=['--p'], peak_tflops=989)
  command = benchmark_suite.case_command(benchmark_suite.CASES['torch_bf16'], values, ['--all'],
                                         '/o', '/l')
  assert command[1].endswith('experiments/benchmark_torch_device.py')
  assert command[2:] == ['--config=configs/nyudv2_refinenet101.py', '--all', '--r', '--p',
                         '--precision=bf16', '--steps=20', '--warmup=3']
  command = benchmark_suite.case_command(benchmark_suite.CASES['deeplab_kernels_cpu'], values,
                                         [], '/o', '/l')
  assert command[2:5] == ['--config=configs/cityscapes_deeplab_xception65.py', '--d',
                          '--peak_tflops=989']
  assert command[-1] == '--config.model.kernels=cpu'


def test_ratios_of_each_pair_and_why_a_pair_is_missing():
  def run(case, step_ms, peak_gb, **extra):
    return {'case': case, 'step_ms': step_ms, 'peak_memory_gb': peak_gb, **extra}
  records = [run('paper_bf16', 60.0, 10.0, kernels='xla'), run('torch_bf16', 120.0, 12.5),
             run('kernels_cpu', 80.0, 10.0, kernels='cpu'),
             run('translation_bf16', 9.0, 1.0, kernels='xla'),
             {'case': 'translation_kernels_cpu', 'error': 'returncode 1', 'log_tail': ''},
             run('paper_fp32', 150.0, None, kernels='xla'),
             {'case': 'torch_fp32', 'skipped': 'torch not installed'}]
  lines = benchmark_suite_report.ratio_lines(records)
  rows = {line.split(' | ')[0].lstrip('| '): line for line in lines[4:]}
  assert rows['kernels xla / cpu: RefineNet train bf16'].endswith(
      '| paper_bf16 [xla] | kernels_cpu [cpu] | 60 | 80 | 0.75 | 1 |')
  assert rows['JAX / PyTorch: RefineNet train bf16 (PyTorch: autocast + channels_last)'].endswith(
      '| paper_bf16 [xla] | torch_bf16 | 60 | 120 | 0.5 | 0.8 |')
  assert rows['kernels xla / cpu: U-Net (translation) train bf16'].endswith(
      'not measured: translation_kernels_cpu failed (returncode 1) | - |')
  assert rows['JAX / PyTorch: RefineNet train fp32'].endswith(
      'not measured: torch_fp32 skipped: torch not installed | - |')
  assert rows['scanned / unscanned blocks: RefineNet train bf16 (config.model.scan_blocks)'
              ].endswith('not measured: scan_blocks not run | - |')
  assert len(rows) == 5  # DeepLab's pair: neither side ran.


def test_the_torch_cases_run_where_jax_ran_or_say_why_not(monkeypatch):
  def no_probe():
    raise AssertionError('probed although a JAX result says the platform')
  jax_run = {'case': 'paper_bf16', 'jax_version': '0.11.2', 'platform': 'gpu'}
  assert benchmark_suite.torch_device([jax_run], '', no_probe) == ('cuda', '')
  assert benchmark_suite.torch_device([], '', lambda: 'cpu') == ('cpu', '')
  assert benchmark_suite.torch_device([], 'cuda', no_probe) == ('cuda', '')
  assert benchmark_suite.torch_device([dict(jax_run, platform='tpu')], '', no_probe) == (
      None, "no PyTorch device for the JAX platform 'tpu'")
  monkeypatch.setitem(sys.modules, 'torch', None)  # As if torch were not installed.
  assert benchmark_torch_device.run(nyudv2_refinenet101.get_config(), 'cuda') == {
      'skipped': 'torch not installed'}


@pytest.mark.parametrize('precision,dtype,layout', [('bf16', 'bfloat16', 'channels_last'),
                                                    ('fp32', 'float32', 'contiguous_format')])
def test_the_torch_cases_run_the_reference_in_their_precision_and_layout(monkeypatch, precision,
                                                                         dtype, layout):
  torch = pytest.importorskip('torch')
  from configs import demo  # pylint: disable=import-outside-toplevel
  from tests import torch_reference  # pylint: disable=import-outside-toplevel
  seen = {}
  randomize = torch_reference.randomize_

  def spy(model, generator):  # The step's model, with a hook on its M + 1 outputs.
    randomize(model, generator)
    seen['model'] = model
    model.register_forward_hook(lambda m, i, outs: seen.update(dtypes={o.dtype for o in outs}))
  monkeypatch.setattr(torch_reference, 'randomize_', spy)
  config = demo.get_config()
  config.model.width, config.model.decoder_width, config.crop_size = 8, 16, 32
  config.batch_size = 2
  threads = torch.get_num_threads()
  try:  # One thread: a shared 2-core machine keeps no OpenMP barrier waiting.
    result = benchmark_torch_device.run(config, 'cpu', precision, steps=1, warmup=0, threads=1)
  finally:
    torch.set_num_threads(threads)
  assert seen['dtypes'] == {getattr(torch, dtype)}
  kernel = next(p for p in seen['model'].parameters() if p.dim() == 4 and p.shape[-1] > 1)
  assert kernel.is_contiguous(memory_format=getattr(torch, layout))
  assert (result['compute_dtype'], result['channels_last'], result['platform']) == (
      dtype, layout == 'channels_last', 'cpu')
  assert result['step_ms'] > 0 and result['peak_memory_gb'] is None
