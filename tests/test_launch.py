"""Launchers: the commands a TPU pod launch and a SLURM GPU job run (dry runs).

Nothing here talks to a cloud or a cluster: the TPU launcher prints its
`gcloud` commands, and the SLURM batch script runs under bash with a stub
`srun` that records what it was asked to start.
"""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest
from promot_t5x_launch import slurm_gpu, tpu_pod

from promot_t5x import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
SBATCH = REPO / 'launch' / 'slurm_gpu.sbatch'

TRAIN_ARGS = ['--gin_file=gin/models/mt5_xxl.gin', '--gin_file=gin/promot/promot.gin',
              '--gin.MIXTURE_OR_TASK_NAME=promot_rte',
              '--gin.MIXTURE_OR_TASK_MODULE=promot_t5x_tasks.paper',
              '--gin.MODEL_DIR=/mnt/gcs/promot/rte', '--gin.BATCH_SIZE=64',
              '--gin.MESH_DATA=4', '--gin.MESH_MODEL=8']


def printed_commands(out: str) -> list[list[str]]:
  """The dry run's commands (lines not starting with '#'), split as a shell would."""
  return [shlex.split(line) for line in out.splitlines() if line and not line.startswith('#')]


def remote_command(argv: list[str]) -> str:
  [flag] = [a for a in argv if a.startswith('--command=')]
  return flag[len('--command='):]


def test_tpu_pod_dry_run_sets_up_every_worker_and_starts_the_same_run_on_all(capsys):
  rc = tpu_pod.main(['--tpu=pod1', '--zone=us-central2-b', '--project=proj',
                     '--accelerator_type=v4-64', '--repo_url=https://example.com/promot.git',
                     '--ref=v0.1', '--env', 'TFDS_DATA_DIR=gs://bucket/tfds', '--dry_run',
                     '--', *TRAIN_ARGS])
  assert rc == 0
  setup, train = printed_commands(capsys.readouterr().out)
  for cmd in (setup, train):
    assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod1']
    assert {'--worker=all', '--zone=us-central2-b', '--project=proj'} <= set(cmd)

  setup_sh = remote_command(setup)
  assert 'git clone --quiet https://example.com/promot.git promot-t5x' in setup_sh
  assert 'git -C promot-t5x checkout --quiet v0.1' in setup_sh
  # The pinned environment plus JAX's TPU wheel (the tpu extra brings libtpu).
  assert "-c requirements.lock -e . 'jax[tpu]==0.10.2'" in setup_sh

  train_sh = remote_command(train)
  assert train_sh.startswith('cd promot-t5x && export TFDS_DATA_DIR=gs://bucket/tfds && ')
  run = shlex.split(train_sh.split(' && ')[-1])
  assert run == ['.venv/bin/promot-train', *TRAIN_ARGS]
  # TPU auto-discovery: no coordinator or process flags.
  assert not any(a.startswith(('--coordinator_address', '--process_')) for a in run)
  # What the workers run is valid shell.
  for script in (setup_sh, train_sh):
    subprocess.run(['bash', '-n', '-c', script], check=True)


def test_tpu_pod_copies_a_local_checkout_when_there_is_no_git_url(capsys, tmp_path):
  rc = tpu_pod.main(['--tpu=pod1', '--zone=z', '--project=p', f'--source_dir={tmp_path}',
                     '--log_file=/tmp/train.log', '--dry_run', *TRAIN_ARGS])
  assert rc == 0
  tar, scp, setup, train = printed_commands(capsys.readouterr().out)
  assert tar[:3] == ['tar', '-czf', '/tmp/promot-t5x-src.tar.gz'] and str(tmp_path) in tar
  assert '--exclude=.venv' in tar
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert f'pod1:{tpu_pod.REMOTE_TARBALL}' in scp and '--worker=all' in scp
  assert f'tar -xzf {tpu_pod.REMOTE_TARBALL} -C promot-t5x' in remote_command(setup)
  # Detached run: survives the ssh session, output on each worker.
  assert remote_command(train).endswith('> /tmp/train.log 2>&1 < /dev/null &')
  assert 'nohup setsid .venv/bin/promot-train' in remote_command(train)


@pytest.mark.parametrize('accelerator, devices, hosts', [
    ('v4-8', 4, 1), ('v4-64', 32, 8), ('v4-128', 64, 16), ('v5p-128', 64, 16),
    ('v5litepod-8', 8, 1), ('v5litepod-64', 64, 16), ('v3-32', 32, 4)])
def test_slice_sizes(accelerator, devices, hosts):
  assert tpu_pod.devices_of(accelerator) == devices
  assert tpu_pod.hosts_of(accelerator) == hosts


@pytest.mark.parametrize('flag', ['--gin.MODEL_DIR=s3://bucket/promot/rte',
                                  "--gin.INITIAL_CHECKPOINT_PATH='s3://bucket/ckpt'"])
def test_tpu_pod_refuses_a_url_promot_train_cannot_write(capsys, flag):
  args = ['--tpu=pod1', '--zone=z', '--project=p', '--accelerator_type=v4-64',
          '--repo_url=https://example.com/promot.git', '--dry_run', *TRAIN_ARGS, flag]
  with pytest.raises(SystemExit) as e:
    tpu_pod.main(args)
  assert e.value.code == 2
  out, err = capsys.readouterr()
  assert 'is a URL' in err and 'gcsfuse' in err and '/mnt/gcs/' in err
  assert 'gcloud' not in out   # nothing printed (or run) before the refusal


def test_tpu_pod_passes_a_gs_model_dir_to_every_worker(capsys):
  args = ['--tpu=pod1', '--zone=z', '--project=p', '--accelerator_type=v4-64',
          '--repo_url=https://example.com/promot.git', '--dry_run', *TRAIN_ARGS,
          '--gin.MODEL_DIR=gs://bucket/promot/rte',
          "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/ckpt'"]
  assert tpu_pod.main(args) == 0
  out, err = capsys.readouterr()
  assert 'gs://bucket/promot/rte' in remote_command(printed_commands(out)[-1])
  assert 'is a URL' not in err and 'must be a file system' not in err  # no mount needed


def test_tpu_pod_rejects_a_mesh_that_does_not_match_the_slice(capsys):
  args = ['--tpu=pod1', '--zone=z', '--project=p', '--accelerator_type=v4-64',
          '--repo_url=https://example.com/promot.git', '--dry_run', *TRAIN_ARGS,
          '--gin.MESH_DATA=8']  # 8 x 8 = 64 devices, but v4-64 has 32 chips
  with pytest.raises(SystemExit) as e:
    tpu_pod.main(args)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert 'v4-64 has 32 JAX devices' in err and 'MESH_DATA=8 x MESH_MODEL=8 = 64' in err


def test_mesh_check_catches_a_batch_that_does_not_split():
  assert tpu_pod.check_mesh(64, ['--gin.MESH_DATA=8', '--gin.MESH_MODEL=8',
                                 '--gin.BATCH_SIZE=64']) == []
  [problem] = tpu_pod.check_mesh(64, ['--gin.MESH_MODEL=8', '--gin.BATCH_SIZE=12'])
  assert 'BATCH_SIZE=12 does not split over MESH_DATA=8' in problem


def test_the_sbatch_script_is_valid_bash():
  subprocess.run(['bash', '-n', str(SBATCH)], check=True)


def fake_job_env(tmp_path: pathlib.Path) -> dict[str, str]:
  """A SLURM batch step's environment on 2 nodes x 4 GPUs, with `srun` stubbed."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  record = tmp_path / 'srun.txt'
  srun = bin_dir / 'srun'
  srun.write_text('#!/bin/bash\n'
                  f'printf "%s\\n" "$@" > {record}\n'
                  f'echo "COORD=$PROMOT_COORDINATOR_ADDRESS" >> {record}.env\n')
  srun.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  env.update({
      'PATH': f'{bin_dir}:{env["PATH"]}',
      'PROMOT_PYTHON': sys.executable,
      'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'gpu[07-08]', 'SLURM_JOB_NUM_NODES': '2',
      'SLURM_NTASKS': '8', 'SLURM_NTASKS_PER_NODE': '4', 'SLURM_PROCID': '0',
      'SLURM_SUBMIT_DIR': str(REPO),
  })
  return env


def test_sbatch_starts_one_process_per_gpu_with_jax_distributed_wired_from_slurm(tmp_path):
  env = fake_job_env(tmp_path)
  train_args = ['--gin_file=gin/models/mt5_small.gin', '--gin.MESH_DATA=4',
                "--gin.MODEL_DIR='/shared/run 1'"]
  out = subprocess.run(['bash', str(SBATCH), *train_args], env=env, capture_output=True,
                       text=True, check=True).stdout
  port = 20000 + 4242 % 20000
  assert f'coordinator gpu07:{port}' in out
  srun_args = (tmp_path / 'srun.txt').read_text().splitlines()
  assert srun_args == ['--ntasks-per-node=4', '--gpus-per-task=1', '--kill-on-bad-exit=1',
                       sys.executable, '-m', 'promot_t5x.train', *train_args]
  assert (tmp_path / 'srun.txt.env').read_text().strip() == f'COORD=gpu07:{port}'

  # What each task's distributed.initialize sees: srun adds per-task variables.
  for procid, localid, node in [(0, 0, 'gpu07'), (5, 1, 'gpu08'), (7, 3, 'gpu08')]:
    task_env = dict(env, PROMOT_COORDINATOR_ADDRESS=f'gpu07:{port}', SLURM_PROCID=str(procid),
                    SLURM_LOCALID=str(localid), SLURMD_NODENAME=node,
                    SLURM_STEP_NODELIST='gpu[07-08]')
    info = distributed.from_slurm(task_env, gpus_per_task=1)
    assert (info.coordinator_address, info.num_processes, info.process_id) == (
        f'gpu07:{port}', 8, procid)
    assert info.local_device_ids == (localid,)


def test_coordinator_defaults_to_the_first_node_and_a_job_specific_port():
  env = {'SLURM_JOB_NODELIST': 'a100-[003-004,010]', 'SLURM_JOB_ID': '123456'}
  assert slurm_gpu.coordinator_address(env) == f'a100-003:{20000 + 123456 % 20000}'
  assert slurm_gpu.coordinator_address(env, port=999) == 'a100-003:999'
  with pytest.raises(ValueError, match='inside a SLURM job'):
    slurm_gpu.coordinator_address({})


def test_slurm_submit_dry_run_builds_the_sbatch_command(capsys):
  rc = slurm_gpu.main(['submit', '--nodes=8', '--gpus_per_node=8', '--dry_run',
                       '--sbatch_flag=--partition=a100', *TRAIN_ARGS, '--gin.MESH_DATA=8'])
  assert rc == 0
  [cmd] = printed_commands(capsys.readouterr().out)
  assert cmd[:5] == ['sbatch', '--nodes=8', '--ntasks-per-node=8', '--gpus-per-task=1',
                     '--partition=a100']
  assert cmd[5] == str(SBATCH)
  assert cmd[6:] == [*TRAIN_ARGS, '--gin.MESH_DATA=8']

  with pytest.raises(SystemExit):  # 2 x 8 = 16 GPUs cannot hold an 8 x 8 mesh
    slurm_gpu.main(['submit', '--nodes=2', '--dry_run', *TRAIN_ARGS, '--gin.MESH_DATA=8'])
  assert 'MESH_DATA=8 x MESH_MODEL=8 = 64 devices, but there are 16' in (
      capsys.readouterr().err)


EVAL_ARGS = ['--gin_file=gin/models/mt5_xxl.gin', '--gin_file=gin/eval/fewshot_paper.gin',
             '--gin.CHECKPOINT_PATH=/mnt/gcs/promot/rte/stage2', '--gin.CHECKPOINT_STEP=best',
             '--gin.MIXTURE_OR_TASK_NAME=promot_rte',
             '--gin.EVAL_OUTPUT_DIR=/mnt/gcs/evals/promot_rte', '--gin.BATCH_SIZE=64',
             '--gin.MESH_DATA=4', '--gin.MESH_MODEL=8']


def test_tpu_pod_starts_promot_eval_on_every_worker(capsys):
  rc = tpu_pod.main(['--tpu=pod1', '--zone=z', '--project=p', '--accelerator_type=v4-64',
                     '--repo_url=https://example.com/promot.git', '--skip_setup',
                     '--program=eval', '--dry_run', '--', *EVAL_ARGS])
  assert rc == 0
  out, err = capsys.readouterr()
  [evaluate] = printed_commands(out)
  assert '# [1/1] start promot-eval on every worker (TPU auto-discovery)' in out
  run = shlex.split(remote_command(evaluate).split(' && ')[-1])
  assert run == ['.venv/bin/promot-eval', *EVAL_ARGS]
  assert 'every one reads CHECKPOINT_PATH=/mnt/gcs/promot/rte/stage2' in err  # 8 hosts

  # The eval paths are checked as promot-eval uses them; the mesh as in training.
  for bad, expected in [('--gin.CHECKPOINT_PATH=s3://bucket/stage2', 'promot-eval reads'),
                        ('--gin.MESH_DATA=8', 'MESH_DATA=8 x MESH_MODEL=8 = 64')]:
    with pytest.raises(SystemExit) as e:
      tpu_pod.main(['--tpu=pod1', '--zone=z', '--project=p', '--accelerator_type=v4-64',
                    '--repo_url=https://example.com/promot.git', '--program=eval',
                    '--dry_run', *EVAL_ARGS, bad])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert expected in err and 'gcloud' not in out


def test_sbatch_runs_promot_eval_when_asked(tmp_path, capsys):
  env = dict(fake_job_env(tmp_path), PROMOT_PROGRAM='eval')
  out = subprocess.run(['bash', str(SBATCH), *EVAL_ARGS], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert 'promot-t5x: promot-eval, 8 processes on 2 nodes' in out
  srun_args = (tmp_path / 'srun.txt').read_text().splitlines()
  assert srun_args[3:] == [sys.executable, '-m', 'promot_t5x.eval', *EVAL_ARGS]

  bad = subprocess.run(['bash', str(SBATCH), *EVAL_ARGS], env=dict(env, PROMOT_PROGRAM='evl'),
                       capture_output=True, text=True)
  assert bad.returncode == 2 and 'PROMOT_PROGRAM=evl: expected train or eval' in bad.stderr

  rc = slurm_gpu.main(['submit', '--nodes=4', '--gpus_per_node=8', '--program=eval',
                       '--dry_run', *EVAL_ARGS])
  assert rc == 0
  [cmd] = printed_commands(capsys.readouterr().out)
  assert cmd[:5] == ['sbatch', '--nodes=4', '--ntasks-per-node=8', '--gpus-per-task=1',
                     '--export=ALL,PROMOT_PROGRAM=eval']
  assert cmd[5:] == [str(SBATCH), *EVAL_ARGS]


def test_tpu_pod_needs_a_source_only_to_set_workers_up(capsys):
  base = ['--tpu=pod1', '--zone=z', '--project=p', '--dry_run', *TRAIN_ARGS]
  assert tpu_pod.main([*base, '--skip_setup']) == 0
  [train] = printed_commands(capsys.readouterr().out)
  assert remote_command(train).startswith('cd promot-t5x && .venv/bin/promot-train ')
  for extra, expected in [([], 'needs a source: --repo_url'),
                          (['--repo_url=https://example.com/p.git', f'--source_dir={REPO}'],
                           'one source, not both')]:
    with pytest.raises(SystemExit) as e:
      tpu_pod.main([*base, *extra])
    assert e.value.code == 2 and expected in capsys.readouterr().err


def test_initialize_chooses_flags_then_slurm_then_the_tpu_vm(monkeypatch, capsys):
  """Which `jax.distributed.initialize` call each environment gets (the call is recorded)."""
  import jax

  assert distributed.on_cloud_tpu_vm() is False   # this machine: no TPU chips
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(distributed, 'on_cloud_tpu_vm', lambda: True)
  slurm = {'SLURM_PROCID': '1', 'SLURM_NTASKS': '2', 'SLURM_JOB_NODELIST': 'gpu[1-2]'}

  assert distributed.initialize(env={}) is None   # TPU VM: JAX's own auto-detection
  info = distributed.initialize('h0:99', 2, 1, env=slurm)   # flags win over SLURM
  assert (info.coordinator_address, info.process_id) == ('h0:99', 1)
  info = distributed.initialize(env=slurm)
  assert (info.coordinator_address, info.num_processes) == (f'gpu1:{distributed.DEFAULT_PORT}', 2)
  assert calls == [{},
                   {'coordinator_address': 'h0:99', 'num_processes': 2, 'process_id': 1,
                    'local_device_ids': None},
                   {'coordinator_address': f'gpu1:{distributed.DEFAULT_PORT}',
                    'num_processes': 2, 'process_id': 1, 'local_device_ids': None}]

  def no_cluster(**kw):
    raise ValueError('coordinator_address should be defined.')

  monkeypatch.setattr(jax.distributed, 'initialize', no_cluster)  # a lone TPU VM
  assert distributed.initialize(env={}) is None
  assert 'running as one process' in capsys.readouterr().err

  calls.clear()
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(distributed, 'on_cloud_tpu_vm', lambda: False)
  assert distributed.initialize(env={}) is None and calls == []   # one process: nothing
