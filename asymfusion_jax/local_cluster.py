"""Multi-process (multi-host style) runs of asymfusion_jax.main on this machine's CPUs.

Each process is one JAX "host" with its own CPU devices (one, or devices_per_process, like the
GPUs of a host); they meet through jax.distributed on localhost and exchange collectives through
gloo, exactly as hosts of a GPU cluster or TPU pod do over the network. Process 0 writes
metrics.jsonl and config.json; all write checkpoints. `start` starts the processes, `launch`
runs them to the end; experiments/multihost.py is the command line:

  python experiments/multihost.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/demo.py --workdir=/tmp/demo_2proc --config.max_steps=20
"""

import os
import re
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def xla_flags(devices_per_process: int) -> str:
  """This environment's XLA_FLAGS with the CPU device count set to devices_per_process."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\S*', '',
                 os.environ.get('XLA_FLAGS', ''))
  if devices_per_process > 1:
    flags += f' --xla_force_host_platform_device_count={devices_per_process}'
  return ' '.join(flags.split())


def start(num_processes: int, main_args: list[str], outputs: list | None = None,
          devices_per_process: int = 1, module: str = 'asymfusion_jax.main',
          cwd: str | None = None) -> list[subprocess.Popen]:
  """Starts the processes; process i writes stdout and stderr to outputs[i] (default: a pipe).

  module: what each process runs with `python -m`: asymfusion_jax.main or a module that takes
  its flags (tests run one that replaces the FID network first). cwd: their working directory
  (default: this one's).
  """
  address = f'localhost:{free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(devices_per_process))
  outputs = outputs or [subprocess.PIPE] * num_processes
  return [subprocess.Popen(
      [sys.executable, '-m', module, '--distributed',
       f'--coordinator_address={address}', f'--num_processes={num_processes}',
       f'--process_id={i}'] + main_args,
      stdout=outputs[i], stderr=subprocess.STDOUT, env=env, cwd=cwd)
      for i in range(num_processes)]


def launch(num_processes: int, main_args: list[str], timeout: float | None = None,
           devices_per_process: int = 1, module: str = 'asymfusion_jax.main',
           cwd: str | None = None) -> list[str]:
  """Runs the processes to completion; returns their outputs, raising if any failed."""
  procs = start(num_processes, main_args, devices_per_process=devices_per_process,
                module=module, cwd=cwd)
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout)[0].decode(errors='replace'))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  failed = [i for i, p in enumerate(procs) if p.returncode != 0]
  if failed:
    raise RuntimeError(f'processes {failed} failed:\n' + '\n'.join(
        f'--- process {i} ---\n{outputs[i][-4000:]}' for i in failed))
  return outputs
