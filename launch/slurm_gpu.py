r"""Helpers of launch/slurm_gpu.sbatch: submit a multi-node GPU run, find the coordinator.

Submit (prints the `sbatch` command; drop `--dry_run` to submit it):

  python -m promot_t5x_launch.slurm_gpu submit --nodes=8 --gpus_per_node=8 --dry_run -- \
      --gin_file=gin/models/mt5_xxl.gin --gin_file=gin/promot/promot.gin \
      --gin.MIXTURE_OR_TASK_NAME=promot_rte --gin.MESH_DATA=8 --gin.MESH_MODEL=8 ...

`submit --program=eval` runs promot-eval in every task instead (the script
reads PROMOT_PROGRAM=eval), e.g. with --gin_file=gin/eval/fewshot_paper.gin
and --gin.CHECKPOINT_PATH / --gin.EVAL_OUTPUT_DIR.

Inside the job (used by the batch script):

  python -m promot_t5x_launch.slurm_gpu coordinator --port=PORT   # -> gpu01:PORT
  python -m promot_t5x_launch.slurm_gpu describe                  # this task's ProcessInfo

The batch script starts one process per GPU (`srun --ntasks-per-node=GPUS
--gpus-per-task=1`); each process calls `promot_t5x.distributed.initialize`,
which reads `SLURM_NTASKS`, `SLURM_PROCID` and the coordinator (the first host
of the node list, or `PROMOT_COORDINATOR_ADDRESS` as exported by the script)
and starts `jax.distributed`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from promot_t5x_launch import tpu_pod

from promot_t5x import distributed

SBATCH_SCRIPT = pathlib.Path(__file__).resolve().with_name('slurm_gpu.sbatch')


def default_port(env: Mapping[str, str]) -> int:
  """A coordinator port derived from the job id, so two jobs on one node do not collide."""
  return 20000 + int(env.get('SLURM_JOB_ID', '0') or 0) % 20000


def coordinator_address(env: Mapping[str, str], port: int | None = None) -> str:
  """host:port of process 0: the first host of the job's (or step's) node list."""
  nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST')
  if not nodelist:
    raise ValueError('SLURM_JOB_NODELIST is not set: run this inside a SLURM job.')
  port = default_port(env) if port is None else port
  return f'{distributed.expand_nodelist(nodelist)[0]}:{port}'


def sbatch_command(nodes: int, gpus_per_node: int, train_args: Sequence[str],
                   sbatch_flags: Sequence[str] = (), script: str | os.PathLike = SBATCH_SCRIPT,
                   program: str = 'train') -> list[str]:
  """argv of `sbatch` for `nodes` x `gpus_per_node` processes (one per GPU) of
  promot-train, or of promot-eval (`program='eval'`, passed as PROMOT_PROGRAM)."""
  if nodes <= 0 or gpus_per_node <= 0:
    raise ValueError(f'nodes and gpus_per_node must be positive, got {nodes}, {gpus_per_node}.')
  if program not in tpu_pod.PROGRAMS:
    raise ValueError(f'program {program!r}: expected one of {tpu_pod.PROGRAMS}.')
  export = [] if program == 'train' else [f'--export=ALL,PROMOT_PROGRAM={program}']
  return ['sbatch', f'--nodes={nodes}', f'--ntasks-per-node={gpus_per_node}',
          '--gpus-per-task=1', *export, *sbatch_flags, str(script), *train_args]


def _submit(argv: Sequence[str]) -> int:
  ours, train_args = tpu_pod.split_argv(argv)
  p = argparse.ArgumentParser(prog='python -m promot_t5x_launch.slurm_gpu submit',
                              allow_abbrev=False)
  p.add_argument('--nodes', type=int, required=True)
  p.add_argument('--gpus_per_node', type=int, default=8)
  p.add_argument('--sbatch_flag', action='append', default=[],
                 help='extra sbatch flag, e.g. --sbatch_flag=--partition=a100 (repeatable)')
  p.add_argument('--program', choices=tpu_pod.PROGRAMS, default='train',
                 help='run promot-train (default) or promot-eval in every task')
  p.add_argument('--dry_run', action='store_true')
  args = p.parse_args(ours)
  if not any(a.startswith('--gin_file') for a in train_args):
    p.error(f'give the promot-{args.program} command: at least one --gin_file and '
            '--gin.NAME=VALUE flags.')
  problems = tpu_pod.check_mesh(args.nodes * args.gpus_per_node, train_args)
  if problems:
    p.error(f'{args.nodes} nodes x {args.gpus_per_node} GPUs: ' + ' '.join(problems))
  try:
    cmd = sbatch_command(args.nodes, args.gpus_per_node, train_args, args.sbatch_flag,
                         program=args.program)
  except ValueError as e:
    p.error(str(e))
  print(shlex.join(cmd), flush=True)
  if args.dry_run:
    return 0
  return subprocess.run(cmd, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in ('submit', 'coordinator', 'describe'):
    print(__doc__, file=sys.stderr)
    return 2
  command, rest = argv[0], argv[1:]
  if command == 'submit':
    return _submit(rest)
  p = argparse.ArgumentParser(prog=f'python -m promot_t5x_launch.slurm_gpu {command}')
  p.add_argument('--port', type=int, default=None)
  args = p.parse_args(rest)
  try:
    if command == 'coordinator':
      print(coordinator_address(os.environ, args.port))
    else:
      info = distributed.from_slurm(os.environ, port=args.port or distributed.DEFAULT_PORT,
                                    gpus_per_task=1)
      print(info if info is not None else 'not inside a SLURM job step')
  except ValueError as e:
    print(f'slurm_gpu {command}: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
