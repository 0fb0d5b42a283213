"""The project's own parameter format: an orbax pytree item of numpy arrays.

Layout of a training run (the trainer's contract):

  MODEL_DIR/
    checkpoints/
      1000/                 one orbax step folder per saved step
        params/             orbax pytree item: the full parameter tree
                            (frozen parts included)
        ...                 other items (optimizer state, data iterator, ...)
      2000.orbax-checkpoint-tmp-.../   a save in progress: ignored

`save_params(directory, params)` writes a bare `params` item (what
`promot-convert` produces). `load_params(path)` reads any of the three: a run
folder (latest finished step), a step folder, or a params item folder, and
always returns a nested dict of numpy arrays, whatever devices or mesh wrote
it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from promot_t5x import fs

CHECKPOINTS_DIR = 'checkpoints'
PARAMS_ITEM = 'params'
# Files orbax writes into every pytree item folder.
_ITEM_MARKERS = ('_METADATA', 'manifest.ocdbt', '_CHECKPOINT_METADATA')


def save_params(directory: str | epath.PathLike, params: Mapping[str, Any], *,
                force: bool = False) -> epath.Path:
  """Writes `params` (nested dict of arrays) as an orbax pytree item at `directory`.

  `directory` must not exist unless `force`. Returns the folder.
  """
  directory = epath.Path(directory)
  if directory.exists() and not force:
    raise FileExistsError(f'{directory} exists; pass force=True (--force) to overwrite it.')
  params = jax.tree_util.tree_map(np.asarray, dict(params))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(fs.path(directory), params, force=force)
  checkpointer.wait_until_finished()
  return directory


def _is_item(path: epath.Path) -> bool:
  return any((path / marker).exists() for marker in _ITEM_MARKERS[:2])


def checkpoint_dir(model_dir: str) -> str:
  """The folder of a run's step folders (MODEL_DIR/checkpoints)."""
  return fs.join(model_dir, CHECKPOINTS_DIR)


def finished_steps(checkpoints_dir: str | epath.PathLike) -> list[int]:
  """The finished steps in `checkpoints_dir` with a params item, ascending (unfinished saves ignored).

  Args:
    checkpoints_dir: a run's `checkpoints/` folder; may be missing.

  Returns:
    The step numbers, [] when the folder is missing or holds no finished step.
  """
  checkpoints_dir = epath.Path(checkpoints_dir)
  if not checkpoints_dir.is_dir():
    return []
  return sorted(s for s in ocp.step.checkpoint_steps(checkpoints_dir)
                if (checkpoints_dir / str(s) / PARAMS_ITEM).is_dir())


def latest_step(checkpoints_dir: str | epath.PathLike) -> int | None:
  """The highest finished step in `checkpoints_dir` (unfinished saves ignored), or None."""
  steps = finished_steps(checkpoints_dir)
  return steps[-1] if steps else None


def best_step(model_dir: str) -> int | None:
  """The step recorded as best on the run's metric (None when not tracked)."""
  path = fs.join(checkpoint_dir(model_dir), 'best.json')
  if not fs.exists(path):
    return None
  return int(json.loads(fs.read_text(path))['step'])


def find_params_item(path: str | epath.PathLike) -> epath.Path:
  """The `params` item folder that `path` designates.

  `path` may be a run folder (MODEL_DIR: the latest finished step under
  `checkpoints/`), a step folder (`.../checkpoints/<step>`) or a params item.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'No checkpoint at {path}: the path does not exist.')
  if (path / PARAMS_ITEM).is_dir() and _is_item(path / PARAMS_ITEM):
    return path / PARAMS_ITEM  # a step folder
  if (path / CHECKPOINTS_DIR).is_dir() or path.name == CHECKPOINTS_DIR:
    checkpoints_dir = path if path.name == CHECKPOINTS_DIR else path / CHECKPOINTS_DIR
    step = latest_step(checkpoints_dir)
    if step is None:
      raise FileNotFoundError(
          f'{checkpoints_dir} holds no finished checkpoint with a `{PARAMS_ITEM}` item '
          '(folders named <step>; unfinished *.orbax-checkpoint-tmp-* saves are ignored).')
    return checkpoints_dir / str(step) / PARAMS_ITEM
  if _is_item(path):
    return path
  raise FileNotFoundError(
      f'No orbax parameters at {path}. Pass a run folder (with checkpoints/<step>/params), '
      f'a step folder (with params/), or a folder written by save_params.')


def load_params(path: str | epath.PathLike) -> dict[str, Any]:
  """Nested dict of numpy arrays from a run, step or params folder (see `find_params_item`)."""
  item = find_params_item(path)
  # The item's own metadata (step folders keep theirs one level up).
  tree = ocp.PyTreeCheckpointHandler().metadata(fs.path(item)).tree
  checkpointer = ocp.PyTreeCheckpointer()
  # Restore every leaf as a host numpy array: no sharding or device layout
  # from the writer is needed.
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(fs.path(item),
                                  args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return jax.tree_util.tree_map(np.asarray, plain_dict(restored))


def plain_dict(tree: Any) -> Any:
  """`tree` with every mapping (orbax's metadata and restored trees) as a dict with str keys.

  Args:
    tree: nested mappings; leaves are returned as they are.

  Returns:
    The same tree of plain dicts.
  """
  if isinstance(tree, Mapping):
    return {str(k): plain_dict(v) for k, v in tree.items()}
  return tree
