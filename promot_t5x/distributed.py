"""Multi-process JAX: `jax.distributed.initialize` from flags, SLURM or a TPU VM.

On a Cloud TPU VM (a pod slice's hosts, or a single host) nothing needs to be
set: `jax.distributed.initialize()` is called without arguments and JAX finds
the slice's hosts itself (its TPU auto-detection). The distributed system is
needed there too: orbax's multi-host checkpointing synchronizes the hosts
through it. On GPU/CPU clusters every process needs the coordinator's
address, the number of processes and its own index: from flags, or from
SLURM's environment (`SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID`, the
first host of `SLURM_JOB_NODELIST`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping

DEFAULT_PORT = 12345


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
  coordinator_address: str
  num_processes: int
  process_id: int
  local_device_ids: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.num_processes <= 0 or not 0 <= self.process_id < self.num_processes:
      raise ValueError(f'process index {self.process_id} is not in [0, {self.num_processes}).')
    if ':' not in self.coordinator_address:
      raise ValueError(f'coordinator address {self.coordinator_address!r} must be host:port.')


def expand_nodelist(nodelist: str) -> list[str]:
  """SLURM's compressed host list ('gpu[01-03,07],login1') -> ['gpu01', ..., 'login1']."""
  hosts = []
  for part in re.findall(r'[^,\[]+(?:\[[^\]]*\])?', nodelist):
    m = re.fullmatch(r'(.*)\[(.*)\](.*)', part)
    if not m:
      hosts.append(part)
      continue
    prefix, ranges, suffix = m.groups()
    for r in ranges.split(','):
      if '-' in r:
        lo, hi = r.split('-')
        hosts += [f'{prefix}{i:0{len(lo)}d}{suffix}' for i in range(int(lo), int(hi) + 1)]
      else:
        hosts.append(f'{prefix}{r}{suffix}')
  return hosts


def from_slurm(env: Mapping[str, str], port: int = DEFAULT_PORT,
               gpus_per_task: int | None = None) -> ProcessInfo | None:
  """ProcessInfo from a SLURM job step's environment (None outside SLURM)."""
  if 'SLURM_PROCID' not in env or 'SLURM_NTASKS' not in env:
    return None
  nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST')
  if not nodelist:
    raise ValueError('SLURM_PROCID is set but no SLURM_JOB_NODELIST: cannot find the coordinator.')
  coordinator = env.get('PROMOT_COORDINATOR_ADDRESS') or f'{expand_nodelist(nodelist)[0]}:{port}'
  local = None
  if gpus_per_task == 1 and 'SLURM_LOCALID' in env:
    local = (int(env['SLURM_LOCALID']),)
  return ProcessInfo(coordinator, int(env['SLURM_NTASKS']), int(env['SLURM_PROCID']), local)


def add_flags(parser) -> None:
  """The multi-process flags of promot-train and promot-eval (all three, or none)."""
  parser.add_argument('--coordinator_address', default=None,
                      help='host:port of process 0 (multi-process GPU/CPU; not on TPU pods '
                           'or inside SLURM, which need none)')
  parser.add_argument('--process_count', type=int, default=None)
  parser.add_argument('--process_index', type=int, default=None)


def on_cloud_tpu_vm() -> bool:
  """Whether this process runs on a Cloud TPU VM with TPU chips and libtpu.

  JAX decides this when it is imported (`jax._src.cloud_tpu_init`, before any
  backend starts); its distributed auto-detection reads the same flag.
  """
  import jax  # noqa: F401 (the import runs JAX's Cloud TPU detection)
  from jax._src import cloud_tpu_init

  return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: bool = False,
               env: Mapping[str, str] | None = None) -> ProcessInfo | None:
  """Starts multi-process JAX if asked (flags), inside a SLURM step or on a TPU VM.

  Must run before any JAX computation. `cpu_collectives=True` enables gloo so
  processes of CPU devices can compute together (tests, CPU clusters).
  Returns the ProcessInfo used (None where nothing was started, or where
  JAX's TPU auto-detection found the processes).
  """
  import jax

  env = os.environ if env is None else env
  if coordinator_address is not None or num_processes is not None:
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError('Multi-process needs --coordinator_address, --process_count and '
                       '--process_index together.')
    info = ProcessInfo(coordinator_address, num_processes, process_id)
  else:
    info = from_slurm(env)
  if info is None and on_cloud_tpu_vm():
    try:
      jax.distributed.initialize()  # the slice's hosts from the TPU VM's metadata
    except ValueError as e:
      # No slice found (a lone TPU VM whose metadata names no workers): one process.
      print(f'promot-t5x: running as one process ({e})', file=sys.stderr)
    return None
  if info is None or info.num_processes == 1:
    return info
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=info.coordinator_address,
                             num_processes=info.num_processes, process_id=info.process_id,
                             local_device_ids=info.local_device_ids)
  return info
