"""Faults a user meets, performed for real: signals, truncated files, read-only folders, two runs.

Each test checks the message (the problem and the fix, one paragraph, no
traceback) and that nothing was lost (checkpoints, run records). The runs are
the tiny test model on tests/testdata's toy tasks, a few steps each; the
helpers are test_train_runs.py's.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from test_train_runs import REPO, _cmd, _env, _final_params, _run, _toy_args

from promot_t5x.checkpoints import orbax_io

FINETUNE = ['--gin_file=runs/finetune.gin', '--gin.LEARNING_RATE=0.01']


def _steps(model_dir):
  return orbax_io.finished_steps(str(model_dir / 'checkpoints'))


def _no_traceback(stderr):
  # Without --verbose no traceback at all: neither ours nor the echoes of a failed orbax
  # read or write (asyncio's "Event loop is closed", orbax's thread logs; cli.py).
  assert 'Traceback' not in stderr and 'File "' not in stderr, stderr[-3000:]
  assert 'Event loop is closed' not in stderr and 'never retrieved' not in stderr, stderr[-3000:]


def _wait_for(proc, predicate, what, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return
    time.sleep(0.05)
  out = proc.stdout.read() if proc.stdout else ''
  raise AssertionError(f'{what} did not happen (exit {proc.poll()}):\n{out[-3000:]}')


def _read_only_folder(tmp_path):
  """A folder this user cannot create files in (chmod for a user; /sys's root for root)."""
  if os.geteuid() != 0:
    ro = tmp_path / 'read_only'
    ro.mkdir()
    ro.chmod(0o555)
    return ro
  import pathlib

  ro = pathlib.Path('/sys')
  try:
    (ro / 'promot-probe').mkdir()
  except OSError:
    return ro
  (ro / 'promot-probe').rmdir()
  pytest.skip('no folder here refuses root')


# -----------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT finish the step, save, exit; the resume is bit-identical.
# -----------------------------------------------------------------------------
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_signal_saves_the_step_and_the_resume_equals_an_uninterrupted_run(tmp_path, fixtures_dir,
                                                                          sig):
  common = [*FINETUNE, '--gin.TRAIN_STEPS=20', '--gin.CHECKPOINT_PERIOD=100',
            '--gin.DROPOUT_RATE=0.1', '--gin.train.train.log_period=1']
  env = _env(fixtures_dir)
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'straight'), *common), env)

  run_dir = tmp_path / 'signalled'
  proc = subprocess.Popen(_cmd(*_toy_args(fixtures_dir, run_dir), *common), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = run_dir / 'metrics.jsonl'
  _wait_for(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
            'three logged steps')
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, out[-3000:]
  steps = _steps(run_dir)
  assert len(steps) == 1 and 3 <= steps[0] < 20, (steps, out[-2000:])
  assert f'stopped by {signal.Signals(sig).name} at step {steps[0]}/20' in out
  assert 'run the same command again to resume' in out
  _no_traceback(out)

  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common), env)
  assert f'resuming {run_dir} from step {steps[0]}' in r.stdout
  straight, resumed = _final_params(tmp_path / 'straight'), _final_params(run_dir)
  for p in straight:
    assert np.array_equal(straight[p], resumed[p]), p


@pytest.mark.slow(minutes=1)
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_saved_step(tmp_path, fixtures_dir):
  """SLURM or a TPU VM may signal one host first: every process stops and saves together."""
  from promot_t5x_launch import local

  common = [*FINETUNE, '--gin.TRAIN_STEPS=12', '--gin.CHECKPOINT_PERIOD=100',
            '--gin.SHUFFLE_TRAIN_EXAMPLES=False', '--gin.train.train.log_period=1']
  run_dir = tmp_path / 'two'
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'one'), *common),
       _env(fixtures_dir, devices=2))
  env = _env(fixtures_dir, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for cmd in local.commands(_cmd(*_toy_args(fixtures_dir, run_dir), *common), 2,
                                     local.free_port())]
  metrics = run_dir / 'metrics.jsonl'
  try:
    _wait_for(procs[0], lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
              'two logged steps')
    procs[1].send_signal(signal.SIGTERM)  # the process that does not log
    outs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [143, 143], outs[0][-3000:] + outs[1][-3000:]
  steps = _steps(run_dir)
  assert len(steps) == 1 and steps[0] < 12
  assert f'stopped by a signal on another process at step {steps[0]}/12' in outs[0]

  results = local.launch(_cmd(*_toy_args(fixtures_dir, run_dir), *common), num_processes=2,
                         devices_per_process=1, env=_env(fixtures_dir), timeout=300)
  assert all(r.returncode == 0 for r in results), results[0].stderr[-3000:]
  assert f'resuming {run_dir} from step {steps[0]}' in results[0].stdout
  one, two = _final_params(tmp_path / 'one'), _final_params(run_dir)
  for p in one:
    np.testing.assert_allclose(two[p], one[p], rtol=1e-5, atol=1e-7, err_msg=p)


# -----------------------------------------------------------------------------
# Run records and locks.
# -----------------------------------------------------------------------------
@pytest.mark.slow
def test_refused_restart_keeps_the_run_record_and_each_start_adds_to_the_history(
    tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  run_dir = tmp_path / 'run'
  _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=2'), env)
  config, info = (run_dir / 'config.gin').read_text(), (run_dir / 'model-info.txt').read_text()
  # Another model over the same MODEL_DIR: refused, and the record still describes the checkpoints.
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=4',
                '--gin.t5.T5Config.mlp_dim=48'), env, check=False)
  assert r.returncode == 1
  assert 'Could not resume from' in r.stderr and 'another model or stage' in r.stderr
  _no_traceback(r.stderr)
  assert len(r.stderr) < 2000  # no orbax tree dump
  assert (run_dir / 'config.gin').read_text() == config
  assert (run_dir / 'model-info.txt').read_text() == info
  assert _steps(run_dir) == [2]
  assert sorted(os.listdir(run_dir / 'history')) == ['001']
  # An accepted resume appends its own record.
  _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=3'), env)
  assert sorted(os.listdir(run_dir / 'history')) == ['001', '002']
  start = json.loads((run_dir / 'history' / '002' / 'start.json').read_text())
  assert start['resumed_from'] == 2
  assert (run_dir / 'history' / '001' / 'config.gin').read_text() == config


def test_second_run_on_a_model_dir_is_refused_and_a_killed_run_leaves_no_lock(tmp_path,
                                                                               fixtures_dir):
  env = _env(fixtures_dir)
  run_dir = tmp_path / 'run'
  common = [*FINETUNE, '--gin.TRAIN_STEPS=100000', '--gin.CHECKPOINT_PERIOD=2', '--gin.KEEP_CHECKPOINTS=2']
  first = subprocess.Popen(_cmd(*_toy_args(fixtures_dir, run_dir), *common), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for(first, lambda: bool(_steps(run_dir)), 'a first checkpoint')
    r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common), env, check=False)
    assert r.returncode == 1
    assert f'{run_dir} is in use by another run (pid {first.pid}' in r.stderr
    assert 'another MODEL_DIR' in r.stderr
    _no_traceback(r.stderr)
    assert first.poll() is None  # the first run goes on
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # No second writer: the refused start recorded nothing. (The checkpoint count is no
  # test of that: SIGKILL between orbax finishing a step and deleting the oldest one
  # leaves KEEP_CHECKPOINTS + 1 steps.)
  assert sorted(p.name for p in (run_dir / 'history').iterdir()) == ['001']
  kept = _steps(run_dir)
  assert kept
  # The killed run's lock is gone with its process: the next start resumes.
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE,
                f'--gin.TRAIN_STEPS={kept[-1] + 1}'), env)
  assert f'resuming {run_dir} from step {kept[-1]}' in r.stdout


# -----------------------------------------------------------------------------
# A damaged latest checkpoint.
# -----------------------------------------------------------------------------
@pytest.mark.slow
def test_truncated_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  run_dir = tmp_path / 'run'
  common = [*FINETUNE, '--gin.CHECKPOINT_PERIOD=2']
  _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common, '--gin.TRAIN_STEPS=2'), env)
  at_2 = _final_params(run_dir)
  _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common, '--gin.TRAIN_STEPS=4'), env)
  assert _steps(run_dir) == [2, 4]
  # Truncate every data file of step 4's parameters (a disk that filled up mid-write).
  data_files = [p for p in (run_dir / 'checkpoints' / '4' / 'params').rglob('*')
                if p.is_file() and p.stat().st_size > 100]
  assert data_files
  for p in data_files:
    with open(p, 'r+b') as f:
      f.truncate(p.stat().st_size // 3)

  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common, '--gin.TRAIN_STEPS=2'), env)
  assert f'checkpoint {run_dir}/checkpoints/4 could not be read' in r.stdout
  assert f'moved it to {run_dir}/bad_checkpoints/4' in r.stdout
  assert f'resuming {run_dir} from step 2' in r.stdout
  assert (run_dir / 'bad_checkpoints' / '4' / 'params').is_dir()
  assert _steps(run_dir) == [2]
  after = _final_params(run_dir)
  assert all(np.array_equal(at_2[p], after[p]) for p in at_2)  # the intact one, untouched


def _tmpfs_unavailable():
  """Why a tmpfs cannot be mounted in a user and mount namespace here (None: it can)."""
  if shutil.which('unshare') is None or shutil.which('fallocate') is None:
    return 'unshare or fallocate (util-linux) is not installed'
  r = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
                      'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d"; '
                      'rc=$?; rmdir "$d"; exit $rc'], capture_output=True, text=True)
  return None if r.returncode == 0 else f'unshare/mount failed: {r.stderr.strip()[:200]}'


@pytest.mark.slow
def test_full_disk_while_saving_is_one_paragraph_and_the_last_checkpoint_resumes(tmp_path,
                                                                                fixtures_dir):
  """A real full disk: a 4 MiB tmpfs in a user+mount namespace (no root needed), filled up."""
  why = _tmpfs_unavailable()
  if why:
    pytest.skip(f'a full disk needs a small file system of its own: {why}')
  env = _env(fixtures_dir)
  common = [*FINETUNE, '--gin.CHECKPOINT_PERIOD=2']
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'straight'), *common, '--gin.TRAIN_STEPS=4'), env)
  disk, out = tmp_path / 'disk', tmp_path / 'out'
  disk.mkdir()
  out.mkdir()
  run_dir = disk / 'run'

  def train(steps, name):
    cmd = shlex.join(_cmd(*_toy_args(fixtures_dir, run_dir), *common, f'--gin.TRAIN_STEPS={steps}'))
    return f'{cmd} >{out}/{name}.out 2>{out}/{name}.err; echo $? >{out}/{name}.rc'

  # The tmpfs lives as long as the namespace: one script runs the whole story in it.
  script = '\n'.join([
      f'mount -t tmpfs -o size=4m tmpfs {disk} || exit 3',
      train(2, 'first'),  # checkpoint 2 (~330 KB)
      f'cp -a {run_dir} {out}/at_2',
      # Fill the disk, leaving 120 KiB: the resume's records fit, checkpoint 4 does not.
      f'avail=$(df -B1 --output=avail {disk} | tail -1)',
      f'fallocate -l $((avail - 120 * 1024)) {disk}/filler || exit 4',
      train(4, 'full'),
      f'cp -a {run_dir} {out}/after_full',
      f'rm {disk}/filler',  # the fix: free space
      train(4, 'resumed'),
      f'cp -a {run_dir} {out}/resumed_dir'])
  r = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'bash', '-c', script],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  result = {n: ((out / f'{n}.rc').read_text().strip(), (out / f'{n}.out').read_text(),
                (out / f'{n}.err').read_text()) for n in ('first', 'full', 'resumed')}
  assert result['first'][0] == '0', result['first'][2][-3000:]

  rc, stdout, stderr = result['full']
  assert rc == '1', stdout[-2000:] + stderr[-3000:]
  assert f'promot-train: DiskFullError: No space left on the disk of MODEL_DIR={run_dir}' in stderr
  assert f'The last good checkpoint, {run_dir}/checkpoints/2, is intact' in stderr
  assert 'Free space on that disk' in stderr and 'another MODEL_DIR' in stderr
  assert 'run the same command again to resume from step 2.' in stderr
  assert len([line for line in stderr.splitlines() if line.startswith('promot-train:')]) == 1
  _no_traceback(stderr)
  assert len(stderr) < 3000, stderr[-3000:]
  # Nothing lost: checkpoint 2 as it was, and only it.
  assert _steps(out / 'after_full') == [2]
  at_2, after = _final_params(out / 'at_2'), _final_params(out / 'after_full')
  assert all(np.array_equal(at_2[p], after[p]) for p in at_2)

  rc, stdout, stderr = result['resumed']
  assert rc == '0', stderr[-3000:]
  assert f'resuming {run_dir} from step 2' in stdout
  assert _steps(out / 'resumed_dir') == [2, 4]
  straight, resumed = _final_params(tmp_path / 'straight'), _final_params(out / 'resumed_dir')
  for p in straight:
    assert np.array_equal(straight[p], resumed[p]), p


# -----------------------------------------------------------------------------
# A damaged INITIAL_CHECKPOINT_PATH.
# -----------------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['truncated', 'garbled'])
def test_damaged_initial_checkpoint_is_named_and_nothing_is_written(tmp_path, fixtures_dir,
                                                                    damage):
  env = _env(fixtures_dir)
  base = tmp_path / 'base'
  _run(_cmd(*_toy_args(fixtures_dir, base), *FINETUNE, '--gin.TRAIN_STEPS=2'), env)
  # The arrays' data files (OCDBT), as a copy or download that did not finish leaves them.
  data_files = [p for p in (base / 'checkpoints' / '2' / 'params').rglob('*')
                if p.is_file() and p.parent.name == 'd']
  assert data_files
  for p in data_files:
    size = p.stat().st_size
    with open(p, 'r+b') as f:
      if damage == 'truncated':
        f.truncate(size // 3)
      else:
        f.seek(0)
        f.write(bytes(range(256)) * (size // 256) + bytes(size % 256))

  # A MODEL_DIR to be made (with its parent), or an empty one made beforehand.
  run_dir = tmp_path / 'new' / 'stage1'
  if damage == 'garbled':
    run_dir.mkdir(parents=True)
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), '--gin_file=runs/prompt_tuning.gin',
                '--gin.PROMPT_LENGTH=2', '--gin.TRAIN_STEPS=2',
                f'--gin.INITIAL_CHECKPOINT_PATH={base}'), env, check=False)
  assert r.returncode == 1, r.stderr[-3000:]
  assert f'promot-train: CheckpointError: INITIAL_CHECKPOINT_PATH={base} could not be read (' \
      in r.stderr
  assert 'The checkpoint is damaged or incomplete' in r.stderr
  assert 'Copy it again from its source' in r.stderr
  _no_traceback(r.stderr)
  assert len(r.stderr) < 3000, r.stderr[-3000:]
  # Nothing written: not even the folders, or nothing in the folder that was there.
  assert (os.listdir(run_dir) == [] if damage == 'garbled' else not (tmp_path / 'new').exists())


# -----------------------------------------------------------------------------
# Stage chaining.
# -----------------------------------------------------------------------------
@pytest.mark.slow
def test_stage2_refuses_to_resume_when_stage1_moved_on(tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  s1, s2 = tmp_path / 's1', tmp_path / 's2'
  stage1 = ['--gin_file=runs/prompt_tuning.gin', '--gin.PROMPT_LENGTH=2', '--gin.CHECKPOINT_PERIOD=2']
  _run(_cmd(*_toy_args(fixtures_dir, s1), *stage1, '--gin.TRAIN_STEPS=2'), env)
  stage2 = ['--gin_file=runs/promot_stage2.gin', '--gin.PROMPT_LENGTH=2',
            f'--gin.INITIAL_CHECKPOINT_PATH={s1}', '--gin.CHECKPOINT_PERIOD=1']
  _run(_cmd(*_toy_args(fixtures_dir, s2), *stage2, '--gin.TRAIN_STEPS=1'), env)
  before = _final_params(s2)
  _run(_cmd(*_toy_args(fixtures_dir, s1), *stage1, '--gin.TRAIN_STEPS=4'), env)  # stage 1 moves on
  r = _run(_cmd(*_toy_args(fixtures_dir, s2), *stage2, '--gin.TRAIN_STEPS=2'), env, check=False)
  assert r.returncode == 1
  assert f'{s2} started from step 2 of {s1}, whose newest checkpoint is now step 4' in r.stderr
  assert f'move {s2} aside' in r.stderr
  _no_traceback(r.stderr)
  assert _steps(s2) == [1]
  after = _final_params(s2)
  assert all(np.array_equal(before[p], after[p]) for p in before)


def test_promot_rerun_with_more_stage1_steps_is_refused_before_stage1_trains(tmp_path,
                                                                             fixtures_dir):
  env = _env(fixtures_dir)
  top = tmp_path / 'promot'
  s1, s2 = top / 'stage1', top / 'stage2'

  def promot(*overrides, check=True):
    return _run(_cmd(*_toy_args(fixtures_dir, top), '--gin_file=promot/promot.gin',
                     '--gin.PROMPT_LENGTH=2', '--gin.STAGE2_STEPS=1',
                     '--gin.STAGE1_CHECKPOINT_PERIOD=2', '--gin.STAGE2_CHECKPOINT_PERIOD=1',
                     *overrides), env, check=check)

  promot('--gin.STAGE1_STEPS=2')
  assert _steps(s1) == [2] and _steps(s2) == [1]
  before1, before2 = _final_params(s1), _final_params(s2)
  history1 = sorted(os.listdir(s1 / 'history'))

  r = promot('--gin.STAGE1_STEPS=4', check=False)
  assert r.returncode == 1, r.stderr[-3000:]
  assert (f'{s2} (stage 2) started from step 2 of {s1} (stage 1), but this run would train it '
          'from step 2 on to step 4 (STAGE1_STEPS=4) first') in r.stderr
  assert 'Nothing was trained' in r.stderr
  assert f'move {s2} aside (or use another MODEL_DIR)' in r.stderr
  assert 'set STAGE1_STEPS=2' in r.stderr
  _no_traceback(r.stderr)
  assert 'training prompt_tuning' not in r.stdout  # refused before stage 1 spent a step
  assert _steps(s1) == [2] and _steps(s2) == [1]
  assert sorted(os.listdir(s1 / 'history')) == history1
  after1, after2 = _final_params(s1), _final_params(s2)
  assert all(np.array_equal(before1[p], after1[p]) for p in before1)
  assert all(np.array_equal(before2[p], after2[p]) for p in before2)

  # The fix it names: stage 2 moved aside, the same command trains both stages.
  shutil.move(s2, tmp_path / 'old_stage2')
  r = promot('--gin.STAGE1_STEPS=4')
  assert f'resuming {s1} from step 2' in r.stdout
  assert _steps(s1) == [2, 4] and _steps(s2) == [1]
  start = json.loads((s2 / 'history' / '001' / 'start.json').read_text())
  assert start['initial_checkpoint'] == {'path': str(s1), 'step': 4}


# -----------------------------------------------------------------------------
# Validate first: refused before any checkpoint is read or anything written.
# -----------------------------------------------------------------------------
def test_unknown_task_and_bad_batch_leave_no_model_dir(tmp_path, fixtures_dir):
  env = _env(fixtures_dir, devices=2)
  for overrides, expected in (
      (['--gin.MIXTURE_OR_TASK_NAME=toy_cpoy'], "Unknown task or mixture 'toy_cpoy'"),
      (['--gin.BATCH_SIZE=3', '--gin.MESH_DATA=2'],
       "BATCH_SIZE=3 does not divide over the mesh's data axis (2, MESH_DATA)")):
    run_dir = tmp_path / 'never'
    r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=1', *overrides),
             env, check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    assert expected in r.stderr
    _no_traceback(r.stderr)
    assert 'In call to configurable' not in r.stderr
    assert not run_dir.exists()


def test_vocabulary_larger_than_the_model_is_refused_with_the_sizes(tmp_path, fixtures_dir):
  run_dir = tmp_path / 'never'
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=1',
                '--gin.t5.T5Config.vocab_size=64'), _env(fixtures_dir), check=False)
  assert r.returncode == 1
  assert "The vocabulary of task 'toy_copy' (inputs) has 126 ids but the model's embedding has 64" \
      in r.stderr
  assert 'T5Config.vocab_size' in r.stderr
  assert not run_dir.exists()


def test_read_only_model_dir_is_refused_before_training(tmp_path, fixtures_dir):
  ro = _read_only_folder(tmp_path)
  r = _run(_cmd(*_toy_args(fixtures_dir, ro / 'run'), *FINETUNE, '--gin.TRAIN_STEPS=1'),
           _env(fixtures_dir), check=False)
  assert r.returncode == 1
  assert f"MODEL_DIR='{ro / 'run'}' cannot be written" in r.stderr
  _no_traceback(r.stderr)
  assert not (ro / 'run').exists()


def test_misspelt_macro_and_parameter_get_the_nearest_names(tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  run_dir = tmp_path / 'never'
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=1',
                '--gin.CHECKPOINT_PERIODS=2'), env, check=False)
  assert r.returncode == 2
  assert 'CHECKPOINT_PERIODS (did you mean CHECKPOINT_PERIOD?)' in r.stderr
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *FINETUNE, '--gin.TRAIN_STEPS=1',
                '--gin.t5.T5Config.mlp_dims=48'), env, check=False)
  assert r.returncode == 2
  assert "did you mean 'mlp_dim'" in r.stderr
  _no_traceback(r.stderr)
  assert not run_dir.exists()


def test_warnings_for_truncation_changed_batch_and_stage1_from_scratch(tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  run_dir = tmp_path / 'run'
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), '--gin_file=runs/prompt_tuning.gin',
                '--gin.PROMPT_LENGTH=2', '--gin.TRAIN_STEPS=1',
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 4, 'targets': 8}"), env)
  assert "of the first 64 training examples of 'toy_copy', inputs: 64 longer than 4" in r.stderr
  assert 'no INITIAL_CHECKPOINT_PATH is set' in r.stderr
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), '--gin_file=runs/prompt_tuning.gin',
                '--gin.PROMPT_LENGTH=2', '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=4',
                '--gin.LEARNING_RATE=0.5'), env)
  assert f'resuming {run_dir} with BATCH_SIZE=4, but its checkpoint was trained with 8' in r.stderr
  assert 'LEARNING_RATE=0.5, but its checkpoint was trained with' in r.stderr
  assert 'no INITIAL_CHECKPOINT_PATH' not in r.stderr  # a resume: the model is the run's own


def test_nan_before_any_checkpoint_does_not_speak_of_step_none(tmp_path, fixtures_dir):
  r = _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'nan'), '--gin_file=runs/finetune.gin',
                '--gin.TRAIN_STEPS=4', '--gin.LEARNING_RATE=1e38'), _env(fixtures_dir),
           check=False)
  assert r.returncode == 1
  assert 'step None' not in r.stderr
  assert 'no checkpoint had been saved yet' in r.stderr


# -----------------------------------------------------------------------------
# One error style, quiet start-up.
# -----------------------------------------------------------------------------
def test_start_up_is_quiet_and_verbose_shows_the_traceback(tmp_path, fixtures_dir):
  args = _cmd(*_toy_args(fixtures_dir, tmp_path / 'x'), *FINETUNE, '--gin.TRAIN_STEPS=1',
              '--gin.MIXTURE_OR_TASK_NAME=toy_cpoy')
  env = _env(fixtures_dir)
  for var in ('TF_CPP_MIN_LOG_LEVEL', 'CUDA_VISIBLE_DEVICES'):  # as on a user's machine
    env.pop(var, None)
  r = _run(args, env, check=False)
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert lines[0].startswith("promot-train: ValueError: Unknown task or mixture 'toy_cpoy'"), lines
  assert lines[1:] == ['(rerun with --verbose for the traceback)'], lines
  for noise in ('cuInit', 'cuda', 'oneDNN', 'absl::InitializeLog'):
    assert noise not in r.stdout + r.stderr
  r = _run(args + ['--verbose'], env, check=False)
  assert 'Traceback' in r.stderr and 'Unknown task or mixture' in r.stderr


def test_failed_orbax_io_echoes_are_dropped_and_other_reports_kept(tmp_path, capfd):
  """The real echo: a TensorStore read still in flight when its event loop was closed."""
  import asyncio
  import sys

  import tensorstore as ts

  from promot_t5x import cli

  spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': str(tmp_path / 'array')}}
  array = ts.open(spec, create=True, dtype=ts.float32, shape=[1024, 1024]).result()
  array.write(np.ones((1024, 1024), np.float32)).result()

  def run_and_close_loop():
    """Fails a gather while reads are in flight, closes the loop, waits for every read."""
    reads = [ts.open(spec).result().read() for _ in range(32)]

    async def fail_with_reads_in_flight():
      async def fail():
        raise ValueError('the first array failed')
      await asyncio.gather(fail(), *reads)

    loop = asyncio.new_event_loop()
    with pytest.raises(ValueError):
      loop.run_until_complete(fail_with_reads_in_flight())
    loop.close()  # as orbax does on an error
    deadline = time.monotonic() + 60
    while not all(r.done() for r in reads) and time.monotonic() < deadline:
      time.sleep(0.01)  # the reads finish into the closed loop
    time.sleep(0.2)  # their callbacks report

  previous = sys.unraisablehook
  reported = []
  sys.unraisablehook = reported.append
  try:
    # Whether a read is still in flight when the loop closes depends on the machine's
    # speed, so the failure is repeated until the echo is seen.
    for _ in range(20):
      run_and_close_loop()
      echoes = [u for u in reported if str(u.exc_value) == 'Event loop is closed']
      if echoes:
        break
    assert echoes, 'no read was in flight when the loop closed, in 20 tries'
    cli.quiet_failed_io_aftermath()
    assert sys.unraisablehook is not reported.append
    reported.clear()
    for echo in echoes:  # the real reports, with their real tracebacks
      sys.unraisablehook(echo)
    assert reported == []
    sys.unraisablehook(type('U', (), {'exc_value': RuntimeError('other'), 'exc_traceback': None})())
    assert len(reported) == 1  # any other unraisable report still goes through
    run_and_close_loop()  # live echoes too
    assert [u for u in reported if str(u.exc_value) == 'Event loop is closed'] == []
  finally:
    sys.unraisablehook = previous
  assert 'Event loop is closed' not in capfd.readouterr().err


def test_a_failed_checkpoint_write_left_in_a_future_is_dropped_and_other_futures_kept():
  """asyncio's 'Future exception was never retrieved' for a write TensorStore completed
  (no Python frames: only the error text names the orbax checkpoint), as on a full disk."""
  import logging

  from promot_t5x import cli

  def record(error):
    return logging.LogRecord('asyncio', logging.ERROR, 'base_events.py', 1, 'Future exception was never '
                             'retrieved', None, (type(error), error, None))

  full = ValueError('RESOURCE_EXHAUSTED: Error writing "decoder.decoder_norm.scale/0" in OCDBT database '
                    'at local file "run/checkpoints/4.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/"')
  echoes = cli._OrbaxFailureEchoes()  # pylint: disable=protected-access
  assert not echoes.filter(record(full))
  assert echoes.filter(record(ValueError('a failure of something else')))


# -----------------------------------------------------------------------------
# promot-eval fails fast.
# -----------------------------------------------------------------------------
def test_eval_checks_checkpoint_path_and_output_folder_before_any_work(tmp_path, capsys):
  from promot_t5x import eval as eval_script

  base = ['--gin_file=miniature/model.gin', '--gin_file=eval/fewshot_miniature.gin',
          '--gin.MIXTURE_OR_TASK_NAME=mini_rte', "--gin.EVAL_SUITE=['mini_cb_1shot']",
          "--gin.EVAL_SUITE_NAMES=['cls']", '--gin.MAX_EXAMPLES=2']
  out = tmp_path / 'out'
  missing = tmp_path / 'missing'
  assert eval_script.main([*base, f'--gin.CHECKPOINT_PATH={missing}',
                           f'--gin.EVAL_OUTPUT_DIR={out}']) == 1
  err = capsys.readouterr().err
  assert f"CHECKPOINT_PATH='{missing}' does not exist" in err
  assert 'INITIAL_CHECKPOINT_PATH' not in err
  _no_traceback(err)
  ro = _read_only_folder(tmp_path)
  assert eval_script.main([*base, f'--gin.CHECKPOINT_PATH={tmp_path}',
                           f'--gin.EVAL_OUTPUT_DIR={ro / "eval"}']) == 1
  err = capsys.readouterr().err
  assert f"EVAL_OUTPUT_DIR='{ro / 'eval'}' cannot be written" in err
  _no_traceback(err)
