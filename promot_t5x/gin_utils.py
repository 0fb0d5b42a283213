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
  hint += _nearest_parameter_hint(msg)
  return (f'gin config error: {msg}{hint}\n(gin files: {list(files)}; bindings: '
          f'{list(bindings)})')


_NO_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")


def _nearest_parameter_hint(msg: str) -> str:
  """'Did you mean ...?' for a misspelt parameter of a configurable (its nearest names)."""
  import dataclasses
  import difflib
  import inspect

  m = _NO_PARAMETER.search(msg)
  if not m:
    return ''
  configurable, wrong = m.groups()
  try:
    fn = gin.get_configurable(configurable)
    if dataclasses.is_dataclass(fn):  # gin wraps a class's __init__ in (*args, **kwargs)
      names = [f.name for f in dataclasses.fields(fn)]
    else:
      fn = inspect.unwrap(fn.__init__ if inspect.isclass(fn) else fn)
      names = [n for n in inspect.signature(fn).parameters if n not in ('self', 'args', 'kwargs')]
  except Exception:  # noqa: BLE001 (an ambiguous or dynamic configurable: no suggestion)
    return ''
  close = difflib.get_close_matches(wrong, names, n=3, cutoff=0.6)
  if close:
    return f"\nHint: did you mean {' or '.join(repr(c) for c in close)}? ({configurable} takes {names})"
  return f'\nHint: {configurable} takes {names}.'


def _macro_refs(value: Any, out: set[str]) -> None:
  """Adds the names of every macro (%NAME) referenced in a bound value (nested) to `out`."""
  from gin import config as gin_config

  if isinstance(value, gin_config.ConfigurableReference):
    if value.selector == 'gin.macro':
      out.add(value.scoped_selector.rsplit('/', 1)[0])
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      _macro_refs(v, out)
  elif isinstance(value, dict):
    for k, v in value.items():
      _macro_refs(k, out)
      _macro_refs(v, out)


# Macros the entry points read with gin.query_parameter, not through a binding.
QUERIED_MACROS = ('RUN_ENTRY',)


def check_macros(bindings: Sequence[str]) -> None:
  """Refuses command-line macros (`--gin.NAME=VALUE`) that nothing in the config uses.

  gin accepts `--gin.CHECKPOINT_PERIODS=2` as a new macro and ignores it, so a
  misspelt macro would silently leave the setting at its default. Macros set
  in gin files are not checked (a base gin may define more than a run uses).

  Raises:
    GinConfigError: naming each unused macro and the nearest macros the config uses.
  """
  import difflib

  from gin import config as gin_config

  given = []
  for b in bindings:
    m = re.match(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=', b)
    if m:
      given.append(m.group(1))
  if not given:
    return
  used: set[str] = set(QUERIED_MACROS)
  for params in gin_config._CONFIG.values():  # pylint: disable=protected-access
    for v in params.values():
      _macro_refs(v, used)
  unused = [n for n in dict.fromkeys(given) if n not in used]
  if not unused:
    return
  parts = []
  for name in unused:
    close = difflib.get_close_matches(name, sorted(used), n=3, cutoff=0.7)
    parts.append(f'{name} (did you mean {" or ".join(close)}?)' if close else name)
  raise GinConfigError(
      f'gin config error: the macro(s) {", ".join(parts)} set on the command line are used '
      'nowhere in the gin files, so they would change nothing. Fix the spelling, or add the '
      f'gin file that uses them. Macros this config uses: {sorted(used)}.')


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
