"""What keeps a training run from losing work or going silently wrong.

- `RunLock`: one run per MODEL_DIR at a time. An OS file lock (`flock`) on
  MODEL_DIR/.lock, taken by process 0: the kernel releases it when the process
  ends, however it ends (SIGKILL, a crash), so a dead run never leaves it stuck.
- `Preemption`: SIGTERM (how TPU VMs and SLURM announce preemption) and SIGINT
  (Ctrl-C) set a flag instead of killing the process; the training loop asks
  `stop_requested()` after each step, finishes that step, saves a checkpoint and
  exits. In a multi-process run the processes agree on the flag after every
  step (any process signalled stops all of them at the same step), so they save
  the same checkpoint together. A second Ctrl-C interrupts at once.
- `record_start`: each start appends MODEL_DIR/history/<n>/ (config.gin,
  model-info.txt, start.json), written only after the configuration was checked
  against the checkpoints there; MODEL_DIR/config.gin and model-info.txt are the
  latest accepted ones.
- `refuse_mismatch`, `warn_changes`: a resume's configuration against what its checkpoint records
  (stage, the stage-1 checkpoint a stage 2 started from, batch size, learning rate).
- `refuse_stale_stage2`: `promot` (stage 1 then stage 2) refuses, before stage 1
  trains a step, a re-run whose stage 1 would move past the checkpoint its
  existing stage 2 started from.
- `raise_if_disk_full`, `raise_if_unreadable_initial`, `remove_unused_start`:
  a full disk and a damaged INITIAL_CHECKPOINT_PATH reported in one paragraph
  with the fix, and a start that failed before its first record leaves no
  MODEL_DIR behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from promot_t5x import fs

LOCK_FILE = '.lock'
HISTORY_DIR = 'history'


class RunLockedError(RuntimeError):
  """Another process holds MODEL_DIR's lock."""


class DiskFullError(OSError):
  """The disk (or quota) of MODEL_DIR is full; the checkpoints saved before are intact."""


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def warn(msg: str) -> None:
  """A warning line on stderr (process 0 only)."""
  if jax.process_index() == 0:
    print(f'WARNING: {msg}', file=sys.stderr, flush=True)


def _all_processes_agree(flag: bool) -> bool:
  """True on every process if `flag` is True on any (one small collective when multi-process)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
  return bool(np.asarray(flags).any())


# -----------------------------------------------------------------------------
# One run per MODEL_DIR.
# -----------------------------------------------------------------------------
class RunLock:
  """An exclusive lock on MODEL_DIR held for the run's lifetime (process 0 holds it)."""

  def __init__(self, model_dir: str):
    self.path = fs.join(model_dir, LOCK_FILE)
    self._fd: int | None = None
    self.local = fs.is_local(model_dir)

  def acquire(self) -> None:
    """Takes the lock, or raises RunLockedError naming the holder, on every process."""
    import fcntl

    if not self.local:
      warn(f'{fs.dirname(self.path)} is on object storage, which has no file locks: nothing '
           'stops a second run on the same MODEL_DIR, so start only one.')
      return
    problem = None
    if jax.process_index() == 0:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
        os.close(fd)
        problem = holder
      else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()} since '
                      f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode(), 0)
        self._fd = fd
    if _all_processes_agree(problem is not None):
      where = os.path.dirname(self.path)
      raise RunLockedError(
          f'{where} is in use by another run ({problem or "see process 0"}). Two runs on one '
          'MODEL_DIR would overwrite each other\'s checkpoints and logs. Wait for that run to '
          'end (or stop it), or give this run another MODEL_DIR. The lock is an OS lock on '
          f'{self.path}: it is released when its process ends, even if it crashed.')

  def __del__(self):  # an error between acquire and the run's end: the lock goes with its object
    self.release()

  def release(self) -> None:
    if self._fd is not None:
      import fcntl

      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


# -----------------------------------------------------------------------------
# Preemption.
# -----------------------------------------------------------------------------
class Preemption:
  """Turns SIGTERM/SIGINT into a request to stop after the current step (a context manager)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def _handler(self, signum, frame):  # noqa: ARG002
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if self.signal is None:
      self.signal = signum
      print(f'\n{signal.Signals(signum).name} received: finishing this step, then saving a '
            'checkpoint and stopping (Ctrl-C again to stop at once, losing the unsaved steps).',
            file=sys.stderr, flush=True)

  def install(self) -> Preemption:
    """Installs the handlers (in the main thread; elsewhere signals stay as they were)."""
    try:
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handler)
    except ValueError:  # not the main thread: signals stay as they were
      self._previous.clear()
    return self

  def uninstall(self) -> None:
    """Puts the previous handlers back."""
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

  def __enter__(self) -> Preemption:
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def stop_requested(self) -> bool:
    """Whether any process was signalled (the same answer on every process)."""
    return _all_processes_agree(self.signal is not None)

  @property
  def name(self) -> str:
    return signal.Signals(self.signal).name if self.signal is not None else 'a signal on another process'

  @property
  def exit_status(self) -> int:
    """128 + the signal's number, as a shell reports a process ended by it."""
    return 128 + int(self.signal if self.signal is not None else signal.SIGTERM)


# -----------------------------------------------------------------------------
# Run records.
# -----------------------------------------------------------------------------
def record_start(model_dir: str, config: str, model_info: str, start: Mapping[str, Any]) -> str:
  """Appends MODEL_DIR/history/<n>/ and updates MODEL_DIR/config.gin, model-info.txt.

  Args:
    model_dir: the run folder.
    config: the gin configuration (all bindings).
    model_info: the parameter table (trainer.describe_params).
    start: JSON-able facts of this start (step, argv, host, time, source checkpoint).

  Returns:
    The history folder written (process 0; '' on other processes).
  """
  if jax.process_index() != 0:
    return ''
  history = fs.join(model_dir, HISTORY_DIR)
  fs.makedirs(history)
  n = 1 + max((int(d) for d in fs.listdir(history) if d.isdigit()), default=0)
  folder = fs.join(history, f'{n:03d}')
  fs.makedirs(folder, exist_ok=False)
  files = {'config.gin': config, 'model-info.txt': model_info,
           'start.json': json.dumps(dict(start), indent=1, default=str) + '\n'}
  for name, text in files.items():
    fs.write_text(fs.join(folder, name), text)
  for name in ('config.gin', 'model-info.txt'):
    fs.write_text(fs.join(model_dir, name), files[name], atomic=True)
  return folder


def source_of(initial_checkpoint: Any) -> dict[str, Any] | None:
  """{path, step} of INITIAL_CHECKPOINT_PATH as it resolves now (step: None if not a run folder)."""
  if initial_checkpoint is None:
    return None
  from promot_t5x.checkpoints import manager as ckpt_manager
  from promot_t5x.checkpoints import orbax_io

  path = fs.absolute(initial_checkpoint.path)
  step = None
  ckdir = ckpt_manager.checkpoint_dir(path)
  steps = orbax_io.finished_steps(ckdir)
  if steps:
    want = initial_checkpoint.step
    if want == 'latest':
      step = steps[-1]
    elif want == 'best':
      step = ckpt_manager.best_step(path)
    else:
      step = int(want)
  return {'path': path, 'step': step}


def refuse_mismatch(model_dir: str, meta: Mapping[str, Any], stage_name: str,
                    source: Mapping[str, Any] | None) -> None:
  """Refuses to resume a checkpoint that this configuration must not continue.

  Raises:
    CheckpointError: another stage's checkpoint, or a run that started from a
      checkpoint (stage 1's) that has since moved on.
  """
  from promot_t5x.checkpoints import manager as ckpt_manager

  if meta.get('stage') not in (None, stage_name):
    raise ckpt_manager.CheckpointError(
        f'{model_dir} holds a checkpoint of stage {meta.get("stage")!r}, not {stage_name!r}; '
        'use a fresh MODEL_DIR for each stage (or the gin of the run that made it).')
  started = meta.get('initial_checkpoint')
  if started and source and started.get('path') == source['path'] and (
      started.get('step') is not None and source['step'] is not None
      and started['step'] != source['step']):
    raise ckpt_manager.CheckpointError(
        f'{model_dir} started from step {started["step"]} of {source["path"]}, whose '
        f'newest checkpoint is now step {source["step"]}: that run (stage 1) moved on after '
        'this one (stage 2) began, so resuming would go on training a model made with the old '
        f'prompt. To train from the new one, move {model_dir} aside (or use another MODEL_DIR) '
        f'and start again; to finish this run as it began, put the first run back at step '
        f'{started["step"]} (its TRAIN_STEPS / STAGE1_STEPS).')


def warn_changes(model_dir: str, meta: Mapping[str, Any], batch_size: int,
                 learning_rate: float | None) -> None:
  """Warns when a resume changes the batch size or learning rate its checkpoint was trained with."""
  old_batch = meta.get('batch_size')
  if old_batch is not None and int(old_batch) != batch_size:
    warn(f'resuming {model_dir} with BATCH_SIZE={batch_size}, but its checkpoint was trained '
         f'with {old_batch}: the data position is counted in batches, so the examples seen '
         'from here on differ from those of an uninterrupted run.')
  old_lr = meta.get('learning_rate')
  if old_lr is not None and learning_rate is not None and float(old_lr) != float(learning_rate):
    warn(f'resuming {model_dir} with LEARNING_RATE={learning_rate}, but its checkpoint was '
         f'trained with {old_lr}.')


def learning_rate_macro() -> float | None:
  """The base learning rate gin gives the schedule in the current scope (None if unknown).

  Looks at `optimizers.learning_rate_schedule.base` in the active gin scope
  (`stage1/`, `stage2/` of gin/promot) and unscoped, then at LEARNING_RATE.
  """
  try:
    import gin
    from gin import config as gin_config
  except ImportError:
    return None

  def value(key: str) -> float | None:
    try:
      v = gin.query_parameter(key)
      if isinstance(v, gin_config.ConfigurableReference) and v.selector == 'gin.macro':
        v = gin.query_parameter('%' + v.scoped_selector.rsplit('/', 1)[0])
    except Exception:  # noqa: BLE001 (not bound, or train() called without gin)
      return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

  scope = gin.current_scope_str()
  keys = ([f'{scope}/optimizers.learning_rate_schedule.base'] if scope else []) + [
      'optimizers.learning_rate_schedule.base', '%LEARNING_RATE']
  for key in keys:
    v = value(key)
    if v is not None:
      return v
  return None


# -----------------------------------------------------------------------------
# Stage chaining, checked before stage 1 trains.
# -----------------------------------------------------------------------------
def _gin_value(key: str) -> Any:
  """The value gin binds to `key` (a macro resolved), or None when unbound or without gin."""
  try:
    import gin
    from gin import config as gin_config

    v = gin.query_parameter(key)
    while isinstance(v, gin_config.ConfigurableReference) and v.selector == 'gin.macro':
      v = gin.query_parameter('%' + v.scoped_selector.rsplit('/', 1)[0])
    return v
  except Exception:  # noqa: BLE001 (not bound, or called without gin)
    return None


def stage_train_steps(entry: str, argument: str) -> int | None:
  """TRAIN_STEPS of the gin-scoped `train` that `entry`'s `argument` names (None if unknown).

  E.g. ('train.promot', 'stage1') -> the binding of `stage1/train.train.train_steps`
  (STAGE1_STEPS in gin/promot/promot.gin), else of `train.train.train_steps`.
  """
  ref = _gin_value(f'{entry}.{argument}')
  scoped = getattr(ref, 'scoped_selector', None)
  if not scoped:
    return None
  *scopes, selector = scoped.split('/')
  for n in range(len(scopes), -1, -1):
    v = _gin_value('/'.join([*scopes[:n], selector]) + '.train_steps')
    if isinstance(v, int) and not isinstance(v, bool):
      return v
  return None


def _read_meta(step_dir: str) -> dict[str, Any] | None:
  """The JSON record (meta item) of a checkpoint step folder, or None when unreadable."""
  try:
    import orbax.checkpoint as ocp

    return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        fs.absolute(fs.join(step_dir, 'meta'))))
  except Exception:  # noqa: BLE001 (a damaged record: the resume itself reports it)
    return None


def refuse_stale_stage2(stage1_dir: str, stage2_dir: str, stage2_from: Any,
                        stage1_steps: int | None) -> None:
  """Refuses, before stage 1 trains, a re-run after which stage 2 could not resume.

  Stage 2 records the stage-1 step it started from (`refuse_mismatch` refuses
  to resume it once stage 1 has moved on). When stage 2 started from stage 1's
  latest checkpoint, this predicts where stage 1 will stand after this run
  (its newest step, or `stage1_steps` if it trains on) and refuses now, so a
  re-run with more stage-1 steps costs nothing instead of a whole stage 1.

  Args:
    stage1_dir, stage2_dir: the two stages' MODEL_DIRs.
    stage2_from: 'latest', 'best' or a step (promot's stage2_from); only
      'latest' moves with stage 1 and is checked.
    stage1_steps: stage 1's TRAIN_STEPS (None: unknown; then only a stage 1
      that has already moved on is refused).

  Raises:
    CheckpointError: stage 2's existing checkpoints started from another
      stage-1 step than stage 1 will end at.
  """
  from promot_t5x.checkpoints import manager as ckpt_manager
  from promot_t5x.checkpoints import orbax_io

  if stage2_from != 'latest':
    return
  steps2 = orbax_io.finished_steps(ckpt_manager.checkpoint_dir(stage2_dir))
  if not steps2:
    return
  meta = _read_meta(fs.join(ckpt_manager.checkpoint_dir(stage2_dir), str(steps2[-1])))
  started = (meta or {}).get('initial_checkpoint') or {}
  stage1_path = fs.absolute(stage1_dir)
  if started.get('path') != stage1_path or started.get('step') is None:
    return
  steps1 = orbax_io.finished_steps(ckpt_manager.checkpoint_dir(stage1_dir))
  now = steps1[-1] if steps1 else None
  will_be = max(now or 0, stage1_steps) if stage1_steps is not None else now
  began = int(started['step'])
  if will_be is None or will_be == began:
    return
  moving = (f'its newest checkpoint is step {now}' if stage1_steps is None or will_be == now
            else f'this run would train it from step {now} on to step {will_be} '
                 f'(STAGE1_STEPS={stage1_steps}) first')
  raise ckpt_manager.CheckpointError(
      f'{stage2_dir} (stage 2) started from step {began} of {stage1_path} (stage 1), but '
      f'{moving}, and stage 2 must not go on training a model made with the old prompt. '
      'Nothing was trained. To run stage 2 from the new prompt, move '
      f'{stage2_dir} aside (or use another MODEL_DIR) and run again; to finish the run as it '
      f'began, set STAGE1_STEPS={began}.')


# -----------------------------------------------------------------------------
# A full disk, a damaged starting checkpoint, a start that failed.
# -----------------------------------------------------------------------------
_DISK_FULL_TEXT = re.compile(r'No space left on device|Disk quota exceeded|'
                             r"os_error_code='(28|122)'")
_FAILED_FILE = re.compile(r'(?:Failed writing|local file): "([^"]+)"')


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def is_disk_full(e: BaseException) -> bool:
  """Whether `e` (or an error it came from) is ENOSPC/EDQUOT, as OSError or TensorStore text."""
  return any((isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT))
             or bool(_DISK_FULL_TEXT.search(str(x))) for x in _chain(e))


def raise_if_disk_full(e: BaseException, model_dir: str) -> None:
  """Raises DiskFullError (the fix, the last good checkpoint) from `e` when `e` is a full disk."""
  if not is_disk_full(e):
    return
  from promot_t5x.checkpoints import manager as ckpt_manager
  from promot_t5x.checkpoints import orbax_io

  where = ''
  for x in _chain(e):
    match = _FAILED_FILE.search(str(x))
    name = getattr(x, 'filename', None) if isinstance(x, OSError) else None
    if name or match:
      where = f' while writing {name or match.group(1)}'
      break
  ckdir = ckpt_manager.checkpoint_dir(fs.absolute(model_dir))
  steps = orbax_io.finished_steps(ckdir)
  kept = (f'The last good checkpoint, {ckdir}/{steps[-1]}, is intact (a save that did not '
          'finish is never taken for a checkpoint and is removed on the next start).'
          if steps else 'No checkpoint had been saved yet, so a rerun starts from the beginning.')
  full = DiskFullError(
      f'No space left on the disk of MODEL_DIR={model_dir}{where}. {kept} Free space on that '
      'disk (or raise the quota), or give another MODEL_DIR on a disk with room (copy this '
      'run folder there first to keep its checkpoints); then run the same command again'
      + (f' to resume from step {steps[-1]}.' if steps else '.'))
  full.errno = errno.ENOSPC
  raise full from e


def raise_if_unreadable_initial(e: BaseException, path: str) -> None:
  """Raises CheckpointError naming INITIAL_CHECKPOINT_PATH when reading it failed.

  An error that already explains itself (a checkpoint that does not fit the
  model, a path that does not exist: CheckpointError) is left as it is.
  """
  from promot_t5x.checkpoints import manager as ckpt_manager

  if isinstance(e, ckpt_manager.CheckpointError) or not isinstance(
      e, (OSError, ValueError, RuntimeError, KeyError)):
    return
  text = str(e).strip()
  first = text.splitlines()[0] if text else type(e).__name__
  first = re.sub(r"\s*\[tensorstore_spec=.*", '', first)
  if len(first) > 400:
    first = first[:400] + ' ...'
  raise ckpt_manager.CheckpointError(
      f'INITIAL_CHECKPOINT_PATH={path} could not be read ({first}). The checkpoint is damaged '
      'or incomplete (a truncated or garbled file, a copy or download that did not finish). '
      'Copy it again from its source, or set INITIAL_CHECKPOINT_PATH to an intact checkpoint '
      '(another step folder of that run, .../checkpoints/<step>). Nothing was written to '
      'MODEL_DIR.') from e


def first_missing_folder(path: str) -> str | None:
  """The topmost folder of `path` that does not exist yet (what os.makedirs would create).

  None for a `gs://` path (object storage has no folders to clean up).
  """
  if not fs.is_local(path):
    return None
  path = os.path.abspath(path)
  top = None
  while not os.path.exists(path):
    top = path
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return top


def remove_unused_start(created: str | None, model_dir: str) -> None:
  """Removes what a failed start put in a MODEL_DIR that never had an accepted start.

  Called before the start releases its lock. A folder tree the start created
  (`created`) goes when it holds nothing but the lock file; a MODEL_DIR that
  existed but has no run record (history/) loses the lock file and an empty
  checkpoints/ folder. A MODEL_DIR with a history is left as it is.

  Args:
    created: `first_missing_folder(model_dir)`, taken before the start made MODEL_DIR
      (None: MODEL_DIR existed).
    model_dir: MODEL_DIR.
  """
  from promot_t5x.checkpoints import orbax_io

  if jax.process_index() != 0 or not fs.is_local(model_dir):  # (no lock is taken on gs://)
    return
  model_dir = os.path.abspath(model_dir)
  lock = os.path.join(model_dir, LOCK_FILE)
  if created is not None:
    if os.path.isdir(created) and all(os.path.join(root, f) == lock
                                      for root, _, files in os.walk(created) for f in files):
      shutil.rmtree(created, ignore_errors=True)
    return
  if os.path.exists(os.path.join(model_dir, HISTORY_DIR)):
    return
  checkpoints = orbax_io.checkpoint_dir(model_dir)
  if os.path.isdir(checkpoints) and not os.listdir(checkpoints):
    os.rmdir(checkpoints)
  if os.path.isfile(lock):
    os.remove(lock)
