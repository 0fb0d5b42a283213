"""The one opening of every promot-* command: flags, gin, logging, errors.

Every console tool (setup.py's console_scripts) starts through `main()`:

  def main(argv=None):
    return cli.main('promot-train', __doc__, _run, argv, add_flags=_flags, gin=True,
                    multi_process=True)

so that all of them
- import modules of the working directory (a user's task module) as
  `python -m` would, so no `PYTHONPATH=.` is needed;
- are quiet on start-up: TensorFlow's C++ logging and absl's pre-init notice
  are switched off before TensorFlow or JAX is imported by the tool's work
  (`quiet_startup`), Python warnings of those libraries are hidden;
- read the same flags: `--gin_file/--gin.NAME=VALUE/--gin_bindings/
  --gin_search_paths` where the tool takes gin, the multi-process flags where
  it runs on several processes, and `--verbose` everywhere;
- fail in one style: one paragraph `<prog>: <Kind>: <problem and fix>` on
  stderr and a non-zero exit status (2: the command line or the gin config;
  1: anything else), the Python traceback only with `--verbose` (or
  PROMOT_DEBUG=1), and without the echoes of a failed orbax read or write
  (`quiet_failed_io_aftermath`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

EXIT_CONFIG = 2
EXIT_FAILED = 1


def quiet_startup() -> None:
  """Silences the start-up lines of TensorFlow, XLA and absl (must run before their import).

  On a CPU-only machine TensorFlow prints oneDNN and "could not find cuda
  drivers"/cuInit lines, and absl a "log messages before InitializeLog" notice;
  none of them is about the user's run. Settings the user made are kept.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
  os.environ.setdefault('GLOG_minloglevel', '3')
  # absl's C++ logging writes "WARNING: All log messages before absl::InitializeLog()"
  # before the first message; with the levels above no message is written.
  for module in ('tensorflow', 'tensorflow_datasets', 'seqio', 'orbax', 'absl', 'jax',
                 'flax', 'gin'):
    warnings.filterwarnings('ignore', module=module)
  warnings.filterwarnings('ignore', category=DeprecationWarning)
  warnings.filterwarnings('ignore', category=FutureWarning)


# Start-up lines of TensorFlow's C++ libraries that say nothing about the user's run.
_NOISE = re.compile(r'All log messages before absl::InitializeLog|oneDNN custom operations|'
                    r'cudart_stub|cuda drivers|cuInit|cuda_platform|Unable to register cu(DNN|FFT|BLAS)|'
                    r'computation placer already registered|TF-TRT Warning|cpu_feature_guard|'
                    r'This TensorFlow binary is optimized|rebuild TensorFlow with')


def quietly(fn: Callable[[], Any]) -> Any:
  """Calls `fn` with the known start-up lines removed from stderr (other output is kept).

  TensorFlow 2.21 and XLA's CUDA plugin write them from C++ (oneDNN, "could not
  find cuda drivers", `failed call to cuInit` on a CPU-only machine) before any
  log level is read, so they are caught at the file descriptor.
  """
  import tempfile

  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      return fn()
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors='replace').splitlines()
              if line.strip() and not _NOISE.search(line)]
      if kept:
        print('\n'.join(kept), file=sys.stderr)


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow without its start-up lines."""
  if 'tensorflow' not in sys.modules:
    quietly(lambda: importlib.import_module('tensorflow'))


def _configure_logging(verbose: bool) -> None:
  """Library loggers at WARNING (INFO with --verbose); the tools print their own lines."""
  level = logging.INFO if verbose else logging.WARNING
  logging.basicConfig(level=level, format='%(levelname)s %(name)s: %(message)s')
  for name in ('absl', 'tensorflow', 'jax', 'orbax', 'seqio', 'gin'):
    logging.getLogger(name).setLevel(level if verbose else logging.ERROR)
  try:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
  except ImportError:
    pass


# Where a failed checkpoint read or write shows: orbax's frames, the array
# serialization under it, or (a Future that TensorStore completed, with no
# Python frames) the paths of an orbax checkpoint in the error text.
_ORBAX_IO_FRAMES = (f'{os.sep}orbax{os.sep}', f'{os.sep}array_serialization{os.sep}')
_ORBAX_IO_TEXT = ('.orbax-checkpoint-tmp', 'OCDBT database')


def _through_orbax(exc_info: Any) -> bool:
  """Whether a logged exception comes from an orbax checkpoint read or write."""
  if not (isinstance(exc_info, tuple) and len(exc_info) == 3):
    return False
  tb = exc_info[2]
  while tb is not None:
    if any(part in tb.tb_frame.f_code.co_filename for part in _ORBAX_IO_FRAMES):
      return True
    tb = tb.tb_next
  return any(text in str(exc_info[1]) for text in _ORBAX_IO_TEXT)


class _OrbaxFailureEchoes(logging.Filter):
  """Drops the logs that repeat a failed orbax operation's error (see quiet_failed_io_aftermath)."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    if '_SignalingThread.run() raised an exception' in msg:  # orbax: re-raised to the caller
      return False
    # asyncio: the other reads/writes of the failed operation, left in orbax's closed loop.
    return not ('exception was never retrieved' in msg and _through_orbax(record.exc_info))


def _is_closed_loop_callback(unraisable: Any) -> bool:
  """An unraisable RuntimeError('Event loop is closed') from asyncio's `_check_closed`."""
  e = unraisable.exc_value
  if not (isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'):
    return False
  tb, last = unraisable.exc_traceback, None
  while tb is not None:
    last, tb = tb, tb.tb_next
  return last is not None and last.tb_frame.f_code.co_name == '_check_closed' and (
      'asyncio' in last.tb_frame.f_code.co_filename)


def quiet_failed_io_aftermath() -> None:
  """Hides the echoes of a failed orbax read or write; the error itself is reported once.

  orbax runs each save and restore in an event loop of its own and closes that
  loop as soon as the operation raises (a truncated file, a full disk, a shape
  that does not fit), while TensorStore reads and writes of the same operation
  are still in flight. As each finishes, TensorStore posts its result to the
  closed loop, and Python prints the `RuntimeError: Event loop is closed` as
  an unraisable exception, one traceback per array. orbax also logs the
  exception of each of its worker threads with a traceback before re-raising
  it to the caller, and asyncio logs `Task exception was never retrieved` for
  each of the operation's other tasks left in the closed loop. None of them says
  anything that the one-paragraph error does not: this drops exactly those
  (with --verbose everything is shown).
  """
  for name in ('absl', 'asyncio'):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _OrbaxFailureEchoes) for f in logger.filters):
      logger.addFilter(_OrbaxFailureEchoes())
  previous = sys.unraisablehook
  if getattr(previous, 'promot_quiet', False):
    return

  def hook(unraisable: Any) -> None:
    if not _is_closed_loop_callback(unraisable):
      previous(unraisable)

  hook.promot_quiet = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook


class UsageError(ValueError):
  """A wrong command line or configuration that the user fixes (exit status 2)."""


def parser(prog: str, doc: str | None, gin: bool = False,
           multi_process: bool = False) -> argparse.ArgumentParser:
  """The tool's argparse parser with the shared flags already on it."""
  from promot_t5x import distributed, gin_utils

  p = argparse.ArgumentParser(prog=prog, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--verbose', action='store_true',
                 help='print library logs and, on an error, the Python traceback.')
  if gin:
    gin_utils.add_gin_flags(p)
  if multi_process:
    distributed.add_flags(p)
  return p


MAX_MESSAGE = 1500
_GIN_CALL_CONTEXT = re.compile(r"\n\s*In call to configurable '[^']*' \(<[^>]*>\)")


def error_paragraph(prog: str, e: BaseException) -> str:
  """`<prog>: <Kind>: <message>`: the problem and its fix, without gin's call context."""
  msg = _GIN_CALL_CONTEXT.sub('', str(e)).strip()
  if len(msg) > MAX_MESSAGE:  # TensorStore / orbax errors carry whole trees and stacks
    msg = f'{msg[:MAX_MESSAGE]} ... ({len(msg) - MAX_MESSAGE} more characters with --verbose)'
  known = isinstance(e, (ValueError, OSError, ImportError, RuntimeError, FloatingPointError,
                         LookupError))
  if not known:
    msg += (' (an unexpected error, probably a bug in promot-t5x: rerun with --verbose and '
            'report the traceback)')
  return f'{prog}: {type(e).__name__}: {msg}'


def main(prog: str, doc: str | None, run: Callable[[argparse.Namespace], Any],
         argv: Sequence[str] | None = None, *,
         add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
         gin: bool = False, multi_process: bool = False, gin_required: str | None = None,
         check_args: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
         parse_gin: bool = True, inline_cpu_dispatch: bool | None = True) -> int:
  """Parses the command line, sets up quiet logging, gin and processes, runs `run(args)`.

  Args:
    prog: the command's name (error lines start with it).
    doc: the tool's module docstring (its --help).
    run: the tool's work; its return value is the exit status if it is an int, else 0.
    argv: the arguments (default: sys.argv[1:]).
    add_flags: adds the tool's own flags to the parser.
    gin: the tool takes gin flags; they are parsed (files, then bindings) before `run`
      unless `parse_gin` is False (the tool parses them itself).
    multi_process: the tool takes the multi-process flags; JAX's distributed system
      is started from them (or SLURM / a TPU VM) before gin is parsed.
    gin_required: if set, the error shown when no --gin_file is given (unless
      `check_args` lets the tool run without gin, e.g. promot-eval --merge).
    check_args: checks the parsed flags (call `parser.error` to refuse).
    parse_gin: see `gin`.
    inline_cpu_dispatch: passed to `host_memory.configure` (None: leave the
      allocator and JAX's dispatch as they are).

  Returns:
    The exit status: 0, 1 (the run failed), 2 (command line or configuration).
  """
  quiet_startup()
  from promot_t5x import distributed, gin_utils, host_memory

  if inline_cpu_dispatch is not None:
    host_memory.configure(inline_cpu_dispatch=inline_cpu_dispatch)
  # Task modules (MIXTURE_OR_TASK_MODULE) in the working directory import as under
  # `python -m`, without PYTHONPATH=. (last on the path: they shadow nothing).
  if os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  argv = list(sys.argv[1:] if argv is None else argv)
  if gin:
    argv = gin_utils.rewrite_gin_args(argv)
  p = parser(prog, doc, gin=gin, multi_process=multi_process)
  if add_flags is not None:
    add_flags(p)
  args = p.parse_args(argv)
  verbose = args.verbose or bool(os.environ.get('PROMOT_DEBUG'))
  _configure_logging(verbose)
  if not verbose:
    quiet_failed_io_aftermath()
  if gin and parse_gin and args.gin_file:  # the gin tools read seqio tasks, which import TensorFlow
    import_tensorflow_quietly()
  if check_args is not None:
    check_args(p, args)
  if gin and gin_required and not args.gin_file and not getattr(args, 'merge', None):
    p.error(gin_required)
  try:
    if multi_process:
      try:
        distributed.initialize(args.coordinator_address, args.process_count, args.process_index,
                               cpu_collectives=True)
      except ValueError as e:
        p.error(str(e))
      import jax

      quietly(jax.devices)  # starts JAX's backends (XLA's CUDA probe) without their noise
    if gin and parse_gin and args.gin_file:
      gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)
      gin_utils.check_macros(args.gin_bindings)
    status = run(args)
  except KeyboardInterrupt:
    print(f'{prog}: interrupted (Ctrl-C).', file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 (every error gets the same one-paragraph form)
    if verbose:
      traceback.print_exc()
    print(error_paragraph(prog, e), file=sys.stderr)
    if not verbose:
      print('(rerun with --verbose for the traceback)', file=sys.stderr)
    config_error = isinstance(e, (gin_utils.GinConfigError, UsageError))
    return EXIT_CONFIG if config_error else EXIT_FAILED
  return status if isinstance(status, int) else 0
