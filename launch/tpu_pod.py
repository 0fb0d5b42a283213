r"""TPU VM pod launcher: set up the project on every worker and start one run on all.

  python -m promot_t5x_launch.tpu_pod --tpu=my-v4-128 --zone=us-central2-b \
      --project=my-project --accelerator_type=v4-128 \
      --repo_url=https://github.com/me/promot-t5x.git --ref=main --dry_run -- \
      --gin_file=gin/models/mt5_xxl.gin --gin_file=gin/promot/promot.gin \
      --gin.MIXTURE_OR_TASK_NAME=promot_rte \
      --gin.MIXTURE_OR_TASK_MODULE=promot_t5x_tasks.paper \
      --gin.MODEL_DIR=/mnt/gcs/promot/rte --gin.MESH_DATA=8 --gin.MESH_MODEL=8

Every step is a `gcloud compute tpus tpu-vm` command run on all workers at
once (`--worker=all`):
  1. put the source on each worker: `git clone` (`--repo_url`, `--ref`), or a
     tarball of a local checkout copied with `tpu-vm scp` (`--source_dir`);
  2. build `.venv` there with the pinned environment and JAX's TPU wheel:
     `pip install -c requirements.lock -e . 'jax[tpu]==0.10.2'` (the `tpu` extra of
     jax 0.10.2 pins jaxlib 0.10.2 and `libtpu==0.0.42.*`, both from PyPI; no
     `-f libtpu_releases.html` is needed any more). The project needs Python
     3.11; `--install_python` installs it with apt first (TPU VM images ship
     3.10);
  3. start the same `promot-train` command on every worker. No coordinator
     flags are passed: on a TPU VM promot-train calls `jax.distributed.initialize()`
     without arguments and JAX finds the slice's hosts itself (TPU
     auto-discovery); each host loads the data shard of its mesh rows and
     reads its devices' slices of the checkpoint.

`--program=eval` starts `promot-eval` instead (step 3), for example on the
trained checkpoint, sharded over the slice as in training:

  python -m promot_t5x_launch.tpu_pod --tpu=my-v4-128 --zone=us-central2-b \
      --project=my-project --accelerator_type=v4-128 --skip_setup --program=eval -- \
      --gin_file=gin/models/mt5_xxl.gin --gin_file=gin/eval/fewshot_paper.gin \
      --gin.CHECKPOINT_PATH=/mnt/gcs/promot/rte/stage2 --gin.CHECKPOINT_STEP=best \
      --gin.MIXTURE_OR_TASK_NAME=promot_rte --gin.EVAL_OUTPUT_DIR=/mnt/gcs/evals/promot_rte \
      --gin.MESH_DATA=8 --gin.MESH_MODEL=8 --gin.BATCH_SIZE=64

Every host reads its devices' slices of the checkpoint and the suites' data,
and feeds its devices' part of each batch; process 0 writes the results.

With `--dry_run` the commands are printed (copy-pasteable) instead of run.
Everything after `--` (or every `--gin...` flag) goes to `promot-train` (or
`promot-eval`) unchanged. On a multi-host slice MODEL_DIR and INITIAL_CHECKPOINT_PATH must be
storage every worker reaches at the same path: a `gs://` bucket (promot-train
reads and writes it through its file-system layer, promot_t5x.fs, with the
workers' service account), or a file system every worker mounts (NFS,
Filestore). Other URLs (`s3://`, ...) are refused (here and by promot-train).
TFDS data may be a `gs://` URL (`--env TFDS_DATA_DIR=gs://...`): TFDS reads it itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

from promot_t5x import paths

JAX_VERSION = '0.10.2'
REMOTE_TARBALL = '/tmp/promot-t5x-src.tar.gz'

# Devices JAX sees per "accelerator type" unit. v2/v3 count TensorCores and
# JAX sees each core; v4 and v5p count TensorCores too but each chip (2 cores,
# "megacore") is one JAX device; v5e (v5litepod) and v6e count chips.
_DEVICES_PER_UNIT = {'v2': 1.0, 'v3': 1.0, 'v4': 0.5, 'v5p': 0.5, 'v5litepod': 1.0,
                     'v5e': 1.0, 'v6e': 1.0}


def devices_of(accelerator_type: str) -> int:
  """Number of JAX devices of a TPU slice, e.g. 'v4-128' -> 64, 'v5litepod-64' -> 64."""
  m = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator_type)
  if not m or m.group(1) not in _DEVICES_PER_UNIT:
    raise ValueError(f'Unknown TPU accelerator type {accelerator_type!r}; expected e.g. v4-64, '
                     f'v5p-128, v5litepod-64 (generations {sorted(_DEVICES_PER_UNIT)}).')
  return max(1, int(int(m.group(2)) * _DEVICES_PER_UNIT[m.group(1)]))


def hosts_of(accelerator_type: str) -> int:
  """Number of TPU VM workers (hosts) of a slice, e.g. 'v4-128' -> 16, 'v5litepod-8' -> 1."""
  generation = accelerator_type.split('-')[0]
  devices = devices_of(accelerator_type)
  if generation in ('v2', 'v3'):  # 8 TensorCores per host
    return max(1, devices // 8)
  if generation in ('v5litepod', 'v5e', 'v6e') and devices <= 8:  # single-host slices
    return 1
  return max(1, -(-devices // 4))  # 4 chips per host


@dataclasses.dataclass(frozen=True)
class TpuPod:
  """A TPU VM slice: its name, zone and project (as `gcloud` takes them)."""

  name: str
  zone: str
  project: str
  accelerator_type: str | None = None
  internal_ip: bool = False

  def __post_init__(self):
    for field in ('name', 'zone', 'project'):
      if not getattr(self, field):
        raise ValueError(f'TpuPod.{field} is empty: pass --tpu, --zone and --project.')
    if self.accelerator_type is not None:
      devices_of(self.accelerator_type)

  def _common(self) -> list[str]:
    flags = ['--worker=all', f'--zone={self.zone}', f'--project={self.project}']
    return flags + (['--internal-ip'] if self.internal_ip else [])

  def ssh(self, remote_command: str) -> list[str]:
    """argv of `gcloud ... ssh` running `remote_command` (a shell string) on every worker."""
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', self.name, *self._common(),
            f'--command={remote_command}']

  def scp(self, local_path: str, remote_path: str) -> list[str]:
    """argv of `gcloud ... scp` copying a local file to every worker."""
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', local_path,
            f'{self.name}:{remote_path}', *self._common()]


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
  """How each worker gets the source and its environment.

  Exactly one of `repo_url` (git clone, then checkout `ref`) or `source_dir`
  (a local checkout, copied as a tarball) must be set to set workers up; with
  neither, only commands in an existing `workdir` can be made (--skip_setup).
  `workdir` is relative to the worker's home unless absolute.
  """

  repo_url: str | None = None
  ref: str | None = None
  source_dir: str | None = None
  workdir: str = 'promot-t5x'
  python: str = 'python3.11'
  install_python: bool = False
  jax_version: str = JAX_VERSION

  def __post_init__(self):
    if self.repo_url is not None and self.source_dir is not None:
      raise ValueError('Give one source, not both: --repo_url (git clone on each worker) or '
                       '--source_dir (copy a local checkout).')
    if self.ref and not self.repo_url:
      raise ValueError('--ref only applies with --repo_url.')
    if not self.workdir:
      raise ValueError('--workdir must not be empty.')


@dataclasses.dataclass(frozen=True)
class Step:
  """One command of the launch: run here (argv) and described for the dry run."""

  description: str
  argv: tuple[str, ...]

  def shell(self) -> str:
    return shlex.join(self.argv)


def _source_commands(setup: WorkerSetup) -> list[str]:
  wd = shlex.quote(setup.workdir)
  if setup.repo_url:
    url = shlex.quote(setup.repo_url)
    cmds = [f'if [ -d {wd}/.git ]; then git -C {wd} fetch --quiet origin; '
            f'else git clone --quiet {url} {wd}; fi']
    if setup.ref:
      ref = shlex.quote(setup.ref)
      # A branch also moves to the fetched tip; a tag or commit has no origin/REF.
      cmds.append(f'git -C {wd} checkout --quiet {ref}')
      cmds.append(f'{{ git -C {wd} merge --quiet --ff-only origin/{ref} 2>/dev/null || true; }}')
    return cmds
  return [f'mkdir -p {wd}', f'tar -xzf {REMOTE_TARBALL} -C {wd}']


def setup_remote_command(setup: WorkerSetup) -> str:
  """The shell command each worker runs to get the source and build `.venv`."""
  cmds = ['set -e']
  if setup.install_python:
    # TPU VM images ship Python 3.10; the project needs 3.11 (setup.py).
    cmds.append(f'sudo apt-get update -qq && sudo apt-get install -y -qq {setup.python} '
                f'{setup.python}-venv')
  cmds += _source_commands(setup)
  wd = shlex.quote(setup.workdir)
  jax_tpu = shlex.quote(f'jax[tpu]=={setup.jax_version}')
  cmds += [
      f'cd {wd}',
      # Braces: `a && b || c && d` would run c after *any* earlier failure.
      f'{{ test -x .venv/bin/python || {shlex.quote(setup.python)} -m venv .venv; }}',
      '.venv/bin/python -m pip install --quiet --upgrade pip',
      # The lock file pins the environment; the tpu extra adds libtpu on top.
      f'.venv/bin/python -m pip install --quiet -c requirements.lock -e . {jax_tpu}',
      # Fails here, not an hour into the run, if libtpu does not load.
      '.venv/bin/python -c "import jax; print(jax.process_index(), jax.device_count(), '
      'jax.devices()[0].device_kind)"',
  ]
  return ' && '.join(cmds)


PROGRAMS = ('train', 'eval')
# Paths each program reads or writes with local file operations (no URLs).
_PATH_MACROS = {'train': ('MODEL_DIR', 'INITIAL_CHECKPOINT_PATH'),
                'eval': ('CHECKPOINT_PATH', 'EVAL_OUTPUT_DIR')}


def train_remote_command(train_args: Sequence[str], setup: WorkerSetup,
                         env: Sequence[str] = (), log_file: str | None = None,
                         program: str = 'train') -> str:
  """The shell command each worker runs to start training (`promot-{program}`).

  Every worker runs the same command; JAX's TPU auto-discovery assigns the
  process indices. `env` are `NAME=VALUE` exports; with `log_file` the run is
  detached (`nohup setsid`) and its output goes to that file on each worker.
  """
  for item in env:
    if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', item, re.S):
      raise ValueError(f'--env {item!r} is not NAME=VALUE.')
  exports = [f'export {k}={shlex.quote(v)}' for k, v in (i.split('=', 1) for i in env)]
  if program not in PROGRAMS:
    raise ValueError(f'--program={program!r}: expected one of {PROGRAMS}.')
  train = shlex.join([f'.venv/bin/promot-{program}', *train_args])
  if log_file:
    train = f'nohup setsid {train} > {shlex.quote(log_file)} 2>&1 < /dev/null &'
  return ' && '.join([f'cd {shlex.quote(setup.workdir)}', *exports, train])


def launch_steps(pod: TpuPod, setup: WorkerSetup, train_args: Sequence[str],
                 env: Sequence[str] = (), log_file: str | None = None,
                 do_setup: bool = True, do_train: bool = True,
                 local_tarball: str = '/tmp/promot-t5x-src.tar.gz',
                 program: str = 'train') -> list[Step]:
  """All the commands of a launch, in order."""
  steps = []
  if do_setup:
    if setup.repo_url is None and setup.source_dir is None:
      raise ValueError('Setting the workers up needs a source: --repo_url (git clone on each '
                       'worker) or --source_dir (copy a local checkout); or pass --skip_setup '
                       'to start a run in an existing checkout.')
    if setup.source_dir:
      steps.append(Step('pack the local checkout (no .git, .venv or caches)', (
          'tar', '-czf', local_tarball, '--exclude=.git', '--exclude=.venv',
          '--exclude=__pycache__', '--exclude=*.egg-info', '-C', setup.source_dir, '.')))
      steps.append(Step('copy it to every worker', tuple(pod.scp(local_tarball, REMOTE_TARBALL))))
    steps.append(Step('source and .venv (jax[tpu]) on every worker',
                      tuple(pod.ssh(setup_remote_command(setup)))))
  if do_train:
    steps.append(Step(f'start promot-{program} on every worker (TPU auto-discovery)',
                      tuple(pod.ssh(train_remote_command(train_args, setup, env, log_file,
                                                         program)))))
  return steps


def gin_overrides(train_args: Sequence[str]) -> dict[str, str]:
  """{'MESH_DATA': '8', ...} from `--gin.NAME=VALUE` flags (last one wins)."""
  out = {}
  for arg in train_args:
    m = re.match(r'^--gin\.([^=]+)=(.*)$', arg, re.S)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def check_mesh(num_devices: int, train_args: Sequence[str]) -> list[str]:
  """Problems of the overrides' mesh and batch on `num_devices` (empty: fine).

  Checks MESH_DATA x MESH_MODEL against the slice (MESH_DATA=-1 takes the
  rest) and that BATCH_SIZE splits evenly over the data axis.
  """
  gin = gin_overrides(train_args)
  problems = []
  try:
    data = int(gin.get('MESH_DATA', '-1'))
    model = int(gin.get('MESH_MODEL', '1'))
  except ValueError:
    return [f'MESH_DATA/MESH_MODEL must be integers, got {gin.get("MESH_DATA")!r}, '
            f'{gin.get("MESH_MODEL")!r}.']
  if model <= 0 or num_devices % model:
    problems.append(f'MESH_MODEL={model} does not divide the {num_devices} devices.')
    return problems
  if data == -1:
    data = num_devices // model
  if data * model != num_devices:
    problems.append(f'MESH_DATA={data} x MESH_MODEL={model} = {data * model} devices, but '
                    f'there are {num_devices}.')
  if 'BATCH_SIZE' in gin:
    try:
      batch = int(gin['BATCH_SIZE'])
    except ValueError:
      return problems
    if batch % data:
      problems.append(f'BATCH_SIZE={batch} does not split over MESH_DATA={data}.')
  return problems


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(launcher flags, program flags): `--gin...` flags and all after `--` go to the program."""
  ours, train = [], []
  args = list(argv)
  while args:
    a = args.pop(0)
    if a == '--':
      train += args
      break
    (train if a.startswith('--gin') else ours).append(a)
  return ours, train


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m promot_t5x_launch.tpu_pod', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
  p.add_argument('--tpu', required=True, help='TPU VM name')
  p.add_argument('--zone', required=True)
  p.add_argument('--project', required=True)
  p.add_argument('--accelerator_type', default=None,
                 help='e.g. v4-128: checks MESH_DATA x MESH_MODEL and BATCH_SIZE against it')
  p.add_argument('--internal_ip', action='store_true', help='ssh over internal IPs')
  p.add_argument('--repo_url', default=None, help='git URL cloned on each worker')
  p.add_argument('--ref', default=None, help='branch, tag or commit to check out')
  p.add_argument('--source_dir', default=None,
                 help='copy this local checkout instead of cloning')
  p.add_argument('--workdir', default='promot-t5x', help='folder on each worker')
  p.add_argument('--python', default='python3.11', help='Python 3.11 on the workers')
  p.add_argument('--install_python', action='store_true',
                 help='apt-get install the Python first (TPU VM images ship 3.10)')
  p.add_argument('--jax_version', default=JAX_VERSION)
  p.add_argument('--env', action='append', default=[],
                 help='NAME=VALUE exported before training (repeatable), e.g. '
                      'TFDS_DATA_DIR=gs://bucket/tfds')
  p.add_argument('--log_file', default=None,
                 help='detach the run and write its output here on each worker')
  p.add_argument('--skip_setup', action='store_true', help='only start training')
  p.add_argument('--setup_only', action='store_true', help='only set up the workers')
  p.add_argument('--program', choices=PROGRAMS, default='train',
                 help='start promot-train (default) or promot-eval on every worker')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  return p



def _is_gs(value: str) -> bool:
  return value.strip('\'"').startswith('gs://')


def main(argv: Sequence[str] | None = None) -> int:
  ours, train_args = split_argv(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(ours)
  if args.skip_setup and args.setup_only:
    parser.error('--skip_setup and --setup_only exclude each other.')
  if not args.setup_only and not any(a.startswith('--gin_file') for a in train_args):
    example = ('gin/promot/promot.gin' if args.program == 'train'
               else 'gin/eval/fewshot_paper.gin')
    parser.error(f'give the promot-{args.program} command: at least one --gin_file (and '
                 '--gin.NAME=VALUE overrides), e.g. --gin_file=gin/models/mt5_xxl.gin '
                 f'--gin_file={example}')
  try:
    pod = TpuPod(args.tpu, args.zone, args.project, args.accelerator_type, args.internal_ip)
    setup = WorkerSetup(args.repo_url, args.ref, args.source_dir, args.workdir, args.python,
                        args.install_python, args.jax_version)
    steps = launch_steps(pod, setup, train_args, args.env, args.log_file,
                         do_setup=not args.skip_setup, do_train=not args.setup_only,
                         program=args.program)
  except ValueError as e:
    parser.error(str(e))
  overrides = gin_overrides(train_args) if not args.setup_only else {}
  for name in _PATH_MACROS[args.program]:
    problem = paths.url_path_problem(name, overrides.get(name, '').strip('\'"'),
                                     f'promot-{args.program}')
    if problem:
      parser.error(problem)
  if args.accelerator_type and not args.setup_only:
    problems = check_mesh(devices_of(args.accelerator_type), train_args)
    if problems:
      parser.error(f'{args.accelerator_type} has {devices_of(args.accelerator_type)} JAX '
                   'devices: ' + ' '.join(problems))
    hosts = hosts_of(args.accelerator_type)
    model_dir = overrides.get('MODEL_DIR', '')
    checkpoint = overrides.get('CHECKPOINT_PATH', '')
    if hosts > 1 and args.program == 'train' and model_dir and not _is_gs(model_dir):
      print(f'note: {args.accelerator_type} has {hosts} hosts; '
            f'MODEL_DIR={model_dir} must be a file system all of them mount at that path '
            '(NFS, Filestore, gcsfuse) so that they write one checkpoint.', file=sys.stderr)
    if hosts > 1 and args.program == 'eval' and checkpoint and not _is_gs(checkpoint):
      print(f'note: {args.accelerator_type} has {hosts} hosts; every one reads '
            f'CHECKPOINT_PATH={checkpoint} at that path (NFS, Filestore, gcsfuse); '
            'process 0 writes EVAL_OUTPUT_DIR.', file=sys.stderr)
  for i, step in enumerate(steps, 1):
    print(f'# [{i}/{len(steps)}] {step.description}', flush=True)
    print(step.shell(), flush=True)
    if args.dry_run:
      continue
    result = subprocess.run(list(step.argv), check=False)
    if result.returncode:
      print(f'step {i} failed (exit {result.returncode}): {step.description}', file=sys.stderr)
      return result.returncode
  return 0


if __name__ == '__main__':
  sys.exit(main())
