"""gin command lines in T5X's style.

Every entry point takes
  --gin_file=PATH           (repeatable; resolved against --gin_search_paths)
  --gin.NAME=VALUE          (repeatable; becomes the binding `NAME = VALUE`)
  --gin_bindings='NAME = VALUE'
  --gin_search_paths=DIR[,DIR]
gin itself has no `--gin.X=Y` parser; `rewrite_gin_args` turns those flags into
ordinary bindings before parsing, as T5X does.

The project's gin files are always on the search path, so
`--gin_file=models/mt5_xxl.gin` works from a checkout and from an installed
wheel alike (`gin_dir()`: the checkout's `gin/` folder, else the installed
`promot_t5x_gin` package data); from a checkout `--gin_file=gin/models/mt5_xxl.gin`
works too.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import gin

# The checkout's gin/ folder (a source tree or an editable install).
REPO_GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / 'gin'
# A file every copy of the project's gin files has: tells gin/ from gin-config's own package
# folder (site-packages/gin) when this module runs from an installed wheel.
_MARKER = pathlib.Path('models') / '_common.gin'


def gin_dir() -> pathlib.Path:
  """The folder holding the project's gin files (models/, runs/, ...).

  Returns:
    The checkout's `gin/` when this module runs from a source tree, else the
    folder of the installed `promot_t5x_gin` package (the wheel's copy).

  Raises:
    GinConfigError: neither exists (a broken install).
  """
  if (REPO_GIN_DIR / _MARKER).is_file():
    return REPO_GIN_DIR
  spec = importlib.util.find_spec('promot_t5x_gin')
  for location in (spec.submodule_search_locations or []) if spec else []:
    if (pathlib.Path(location) / _MARKER).is_file():
      return pathlib.Path(location)
  raise GinConfigError(f'the gin files of promot-t5x are neither in a checkout ({REPO_GIN_DIR}) nor '
                       'installed as the package promot_t5x_gin; reinstall with `pip install promot-t5x` '
                       '(or `pip install -e .` in a checkout).')


def _guard_package_file_reader() -> None:
  """Makes gin's package-path file check answer "no" instead of crashing.

  gin also looks `runs/_base.gin` up as a file of a Python package `runs`; a
  folder `runs/` in the working directory (the miniature writes its results
  there) is a namespace package without an origin, and gin 0.5.0's check then
  raises TypeError instead of moving on to the next search path.
  """
  from gin import config as gin_config

  for i, (reader, exists) in enumerate(gin_config._FILE_READERS):  # pylint: disable=protected-access
    if getattr(exists, '_promot_guarded', False) or reader is open:
      continue

    def guarded(path, _exists=exists):
      try:
        return _exists(path)
      except (TypeError, ValueError, ImportError):
        return False

    guarded._promot_guarded = True
    gin_config._FILE_READERS[i] = (reader, guarded)  # pylint: disable=protected-access


_guard_package_file_reader()
_GIN_FLAG = re.compile(r'^--gin\.([^=]+)=(.*)$', re.S)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE`; other args unchanged.

  A value that is a bare word (not a number, macro, reference, list or quoted
  string) is quoted, so `--gin.MIXTURE_OR_TASK_NAME=my_task` works as users
  expect; `--gin.TRAIN_STEPS=100`, `--gin.X=%Y`, `--gin.X="'a'"` pass through.
  """
  out = []
  for arg in argv:
    m = _GIN_FLAG.match(arg)
    if not m:
      out.append(arg)
      continue
    name, value = m.group(1), m.group(2)
    out.append(f'--gin_bindings={name} = {_maybe_quote(value)}')
  return out


def _maybe_quote(value: str) -> str:
  v = value.strip()
  if not v:
    return "''"
  if v[0] in '\'"%@([{-.' or v[0].isdigit():
    return v
  if v in ('True', 'False', 'None'):
    return v
  if re.fullmatch(r'[A-Za-z_][A-Za-z0-9_.]*', v) and ('.' not in v):
    return repr(v)
  if re.fullmatch(r'[\w./:-]+', v):  # paths, task names with dots, URLs
    return repr(v)
  return v


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin config file (repeatable).')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help="gin binding, e.g. 'TRAIN_STEPS = 100' (repeatable). "
                           '--gin.NAME=VALUE is the short form.')
  parser.add_argument('--gin_search_paths', action='append', default=[],
                      help='comma-separated folders where gin files are looked up.')


def search_paths(extra: Sequence[str] = ()) -> list[str]:
  paths = []
  for item in extra:
    paths.extend(p for p in item.split(',') if p)
  configs = gin_dir()
  paths += [str(configs), os.getcwd()]
  if configs == REPO_GIN_DIR:
    paths.append(str(REPO_GIN_DIR.parent))  # `gin/models/...` from a checkout
  seen, out = set(), []
  for p in paths:
    if p not in seen:
      seen.add(p)
      out.append(p)
  return out


class _QuietSearch(logging.Filter):
  """gin logs every search-path miss as an error while resolving includes."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith('Path not found')


logging.getLogger().addFilter(_QuietSearch())


class GinConfigError(ValueError):
  """A gin file or binding could not be parsed; the message names where."""


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          gin_search_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Parses gin files and bindings (T5X order: files first, then bindings)."""
  gin.clear_config()
  for p in search_paths(gin_search_paths):
    gin.add_config_file_search_path(p)
  files = [str(f) for f in gin_files]
  for f in files:
    if not _findable(f, search_paths(gin_search_paths)):
      raise GinConfigError(f'gin file {f!r} not found in the working directory or the search '
                           f'paths {search_paths(gin_search_paths)}; check --gin_file and '
                           '--gin_search_paths.')
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False,
                                        skip_unknown=False)
  except Exception as e:  # gin raises several types; all carry file/line context.
    raise GinConfigError(_explain(e, files, bindings)) from e
  if finalize:
    gin.finalize()


def _findable(path: str, paths: Sequence[str]) -> bool:
  if os.path.exists(path):
    return True
  return any(os.path.exists(os.path.join(p, path)) for p in paths)


def _explain(e: Exception, files: Sequence[str], bindings: Sequence[str]) -> str:
  msg = str(e)
  hint = ''
  if 'No configurable matching' in msg:
    hint = ('\nHint: check the spelling of the configurable and that its module is imported '
            'in the gin file (`from promot_t5x import ...`).')
  elif 'Unknown reference' in msg or 'Unbound macro' in msg or 'macro' in msg.lower():
    hint = '\nHint: a macro (%NAME) is used but never defined; define it in a gin file or pass --gin.NAME=VALUE.'
  return (f'gin config error: {msg}{hint}\n(gin files: {list(files)}; bindings: '
          f'{list(bindings)})')


def bind_and_call(selector: str, bindings: str) -> Any:
  """Parses `bindings` (gin text) and calls the configurable `selector`
  (its full dotted name, e.g. 'promot_t5x.train.train')."""
  try:
    gin.parse_config(bindings)
  except Exception as e:
    raise GinConfigError(_explain(e, [], [bindings])) from e
  return gin.get_configurable(selector)()


def operative_config() -> str:
  return gin.operative_config_str()


def config_str() -> str:
  """Every binding gin has (resolved macros included): written beside each run."""
  return gin.config_str()
