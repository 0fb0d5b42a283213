"""One file-system layer for the run's paths: local folders and `gs://` buckets alike.

MODEL_DIR, INITIAL_CHECKPOINT_PATH, CHECKPOINT_PATH and EVAL_OUTPUT_DIR, and
the records written in them (config.gin, model-info.txt, history/,
metrics.jsonl, best.json, results.json, predictions/, table.md), go through
these functions. They are built on `etils.epath`, the path library orbax
uses for its own folder handling, so a checkpoint and the files beside it
reach the same storage the same way:

- a local path (absolute or relative) uses the operating system (`os`);
- `gs://bucket/...` uses Cloud Storage, through TensorFlow's file system
  (`tf.io.gfile`, as T5X does) or, with EPATH_USE_TF=false, through fsspec;
  orbax writes the checkpoint arrays there with TensorStore's `gcs` driver.

Other URLs (`s3://`, `http://`, ...) are refused by `promot_t5x.paths`
before anything runs: orbax and TensorStore write checkpoints only to local
paths and `gs://`.

An error from the storage of a `gs://` path (no credentials, no network, no
such bucket, no permission) is raised as `RemoteAccessError` naming the path
and what Cloud Storage needs.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import re
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

_URL = re.compile(r'^[A-Za-z][\w+.-]*://')


class RemoteAccessError(OSError):
  """A `gs://` path could not be reached (credentials, network, bucket, permission)."""


def is_local(path: str | os.PathLike) -> bool:
  """True for a path of the local file system, False for a URL (`gs://...`)."""
  return not _URL.match(os.fspath(path))


def _first_line(e: BaseException, limit: int = 400) -> str:
  text = str(e).strip()
  text = text.splitlines()[0] if text else type(e).__name__
  return text if len(text) <= limit else text[:limit] + ' ...'


@contextlib.contextmanager
def _remote_errors(path: str | os.PathLike) -> Iterator[None]:
  """Turns storage errors on a URL path into RemoteAccessError (file-not-found ones pass)."""
  if is_local(path):
    yield
    return
  try:
    yield
  except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
    raise
  except Exception as e:  # noqa: BLE001 (TensorFlow, google-auth and fsspec raise their own types)
    if type(e).__name__ == 'NotFoundError':  # tf.errors.NotFoundError: a missing object
      raise FileNotFoundError(f'{os.fspath(path)}: {_first_line(e)}') from e
    raise RemoteAccessError(
        f'Cannot reach {os.fspath(path)}: {_first_line(e)}. A gs:// path needs Cloud Storage '
        'credentials on every host (on a TPU or GCE VM its service account with access to the '
        'bucket; elsewhere `gcloud auth application-default login` or '
        'GOOGLE_APPLICATION_CREDENTIALS) and network access to Cloud Storage.') from e


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an absolute `epath.Path`, what orbax takes (`epath.Path.absolute()` would
  turn `gs://b/x` into `<cwd>/gs:/b/x`)."""
  return epath.Path(absolute(p))


def join(base: str | os.PathLike, *parts: str) -> str:
  """`base/part/...`: os.path.join for local paths, '/'-joined for URLs."""
  base = os.fspath(base)
  if is_local(base):
    return os.path.join(base, *parts)
  return posixpath.join(base, *parts)


def dirname(p: str | os.PathLike) -> str:
  p = os.fspath(p)
  return os.path.dirname(p) if is_local(p) else posixpath.dirname(p.rstrip('/'))


def basename(p: str | os.PathLike) -> str:
  p = os.fspath(p)
  return os.path.basename(os.path.normpath(p)) if is_local(p) else posixpath.basename(p.rstrip('/'))


def absolute(p: str | os.PathLike) -> str:
  """An absolute local path (os.path.abspath); a URL as given, less trailing slashes."""
  p = os.fspath(p)
  return os.path.abspath(p) if is_local(p) else p.rstrip('/')


def exists(p: str | os.PathLike) -> bool:
  with _remote_errors(p):
    return epath.Path(p).exists()


def isdir(p: str | os.PathLike) -> bool:
  with _remote_errors(p):
    return epath.Path(p).is_dir()


def isfile(p: str | os.PathLike) -> bool:
  with _remote_errors(p):
    return epath.Path(p).is_file()


def makedirs(p: str | os.PathLike, exist_ok: bool = True) -> None:
  with _remote_errors(p):
    epath.Path(p).mkdir(parents=True, exist_ok=exist_ok)


def listdir(p: str | os.PathLike) -> list[str]:
  """The names in folder `p`."""
  with _remote_errors(p):
    return sorted(c.name for c in epath.Path(p).iterdir())


def open(p: str | os.PathLike, mode: str = 'r') -> IO[Any]:  # noqa: A001 (the module's `open`)
  with _remote_errors(p):
    return epath.Path(p).open(mode)


def read_text(p: str | os.PathLike) -> str:
  with _remote_errors(p):
    return epath.Path(p).read_text()


def read_bytes(p: str | os.PathLike) -> bytes:
  with _remote_errors(p):
    return epath.Path(p).read_bytes()


def write_text(p: str | os.PathLike, text: str, atomic: bool = False) -> None:
  """Writes `text` to `p`. atomic: readers see the old or the new file, never a partial one
  (locally a temporary file renamed over `p`; an object upload is atomic by itself)."""
  p = os.fspath(p)
  if atomic and is_local(p):
    tmp = p + '.tmp'
    with builtins.open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, p)
    return
  with _remote_errors(p):
    epath.Path(p).write_text(text)


def append_text(p: str | os.PathLike, text: str) -> None:
  """Appends `text` to `p` (created if missing). Objects cannot be appended to: a URL's file
  is read and written again whole (fine for logs such as metrics.jsonl)."""
  p = os.fspath(p)
  if is_local(p):
    with builtins.open(p, 'a') as f:
      f.write(text)
    return
  with _remote_errors(p):
    target = epath.Path(p)
    old = target.read_text() if target.exists() else ''
    target.write_text(old + text)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves file or folder `src` to `dst` (a rename locally; copies then deletes on a bucket)."""
  with _remote_errors(src):
    epath.Path(src).rename(dst)


def remove(p: str | os.PathLike) -> None:
  with _remote_errors(p):
    epath.Path(p).unlink()

