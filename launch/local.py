r"""Local multi-process launcher: N JAX processes on this machine.

  python -m promot_t5x_launch.local --num_processes=2 --devices_per_process=1 -- \
      promot-train --gin_file=... --gin.MODEL_DIR=...

Each process gets `--coordinator_address=127.0.0.1:PORT --process_count=N
--process_index=i` appended and, on CPU, its own number of fake devices; the
command may be promot-eval as well. This is how the two-process tests run;
on a real cluster use launch/slurm_gpu.sbatch or launch/tpu_pod.py instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Sequence


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def commands(command: Sequence[str], num_processes: int, port: int) -> list[list[str]]:
  """The command of each process (the flags multi-process JAX needs appended)."""
  return [list(command) + [f'--coordinator_address=127.0.0.1:{port}',
                           f'--process_count={num_processes}', f'--process_index={i}']
          for i in range(num_processes)]


def launch(command: Sequence[str], num_processes: int, devices_per_process: int = 1,
           port: int | None = None, env: dict[str, str] | None = None,
           timeout: float | None = None) -> list[subprocess.CompletedProcess]:
  """Runs the processes to completion; returns their results (stdout/stderr captured)."""
  port = port or free_port()
  base_env = dict(os.environ if env is None else env)
  base_env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices_per_process}'
  base_env.setdefault('JAX_PLATFORMS', 'cpu')
  procs = [subprocess.Popen(cmd, env=base_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
           for cmd in commands(command, num_processes, port)]
  results = []
  try:
    for cmd, p in zip(commands(command, num_processes, port), procs):
      out, err = p.communicate(timeout=timeout)
      results.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return results


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--port', type=int, default=None)
  parser.add_argument('command', nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command to run after --')
  results = launch(command, args.num_processes, args.devices_per_process, args.port)
  for i, r in enumerate(results):
    sys.stdout.write(f'--- process {i} (exit {r.returncode}) ---\n{r.stdout}')
    sys.stderr.write(r.stderr if r.returncode else '')
  return max(r.returncode for r in results)


if __name__ == '__main__':
  sys.exit(main())
