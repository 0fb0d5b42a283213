"""A checkpoint's parameter shapes without its data, and its arrays read shard by shard.

`open_source(path, step)` takes any checkpoint the trainer and the evaluator
accept (an orbax run, step or params folder; a legacy T5X checkpoint; a
Mesh-TensorFlow T5/mT5 checkpoint; a Hugging Face T5/mT5 folder; `detect_kind`
tells them apart) and knows each parameter's shape and dtype from metadata
alone (orbax's tree metadata, the T5X msgpack file, the TensorFlow checkpoint
index, the safetensors headers). `read`
then reads the parameters asked for, float32:

- with a sharding: a `jax.Array` laid out with it, for which this process reads
  only the slices its own devices hold. orbax restores each leaf with that
  sharding; a T5X zarr array is read slice by slice with TensorStore. A
  multi-process run (a TPU host, one process per GPU) therefore holds and reads
  its part of the model, not the whole: mT5 XXL is ~52 GB in float32, once per
  process when read whole.
- with None: the whole array on the host (numpy).

Hugging Face safetensors are memory-mapped and our layout is a view of them
(transposed where ours is; the head of a T5 that rescales the decoder output
is scaled slice by slice), so they are read slice by slice as well. Opening
one compares the LM head with the embedding, block by block, to see whether
they are tied.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from promot_t5x import fs, param_sets
from promot_t5x.checkpoints import hf, orbax_io, t5x_legacy
from promot_t5x.checkpoints.matching import CheckpointError

Sharding = jax.sharding.Sharding


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
  shape: tuple[int, ...]
  dtype: np.dtype | None


class Source(abc.ABC):
  """A checkpoint's parameters: `shapes` (from metadata) and `read` (shard-aware).

  Subclasses (one per storage kind) implement `_read`.
  """

  kind: str = ''

  def __init__(self, path: str, shapes: Mapping[str, ArrayInfo]):
    self.path = path
    self.shapes = dict(shapes)

  def read(self, wanted: Mapping[str, Sharding | None]) -> dict[str, Any]:
    """{checkpoint path: float32 array}: a jax.Array where a sharding is given, else numpy."""
    unknown = sorted(set(wanted) - set(self.shapes))
    if unknown:
      raise KeyError(f'{self.path} has no parameters {unknown[:10]}.')
    return self._read(dict(wanted))

  @abc.abstractmethod
  def _read(self, wanted: dict[str, Sharding | None]) -> dict[str, Any]:
    """`read` after its check that every wanted path exists."""


def _from_slices(shape: tuple[int, ...], sharding: Sharding | None,
                 read_slice: Callable[[Any], np.ndarray]) -> Any:
  """A float32 array from `read_slice(index)`: whole (no sharding) or per local device.

  Devices of this process holding the same slice (replicas) share one read.
  """
  # np.array copies: a slice of a memory-mapped file becomes memory of our own.
  if sharding is None:
    return np.array(read_slice(...), np.float32)
  done: dict[Any, np.ndarray] = {}

  def callback(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in done:
      done[key] = np.array(read_slice(index), np.float32)
    return done[key]

  return jax.make_array_from_callback(tuple(shape), sharding, callback)


class ArraysSource(Source):
  """Parameters indexable slice by slice: in-memory or memory-mapped numpy, TensorStore."""

  def __init__(self, path: str, arrays: Mapping[str, Any], kind: str):
    super().__init__(path, {k: ArrayInfo(tuple(np.shape(v)), getattr(v, 'dtype', None))
                            for k, v in arrays.items()})
    self._arrays = dict(arrays)
    self.kind = kind

  def _read(self, wanted):
    return {k: _from_slices(self.shapes[k].shape, sharding,
                            lambda index, a=self._arrays[k]: a[index])
            for k, sharding in wanted.items()}


class OrbaxSource(Source):
  """A params item written by orbax (ours): sharded restores read only local shards."""

  kind = 'orbax'

  def __init__(self, path: str, item: epath.Path):
    self.item = fs.path(item)
    tree = ocp.PyTreeCheckpointHandler().metadata(self.item).tree
    flat = param_sets.flatten(orbax_io.plain_dict(tree))
    super().__init__(path, {k: ArrayInfo(tuple(m.shape), np.dtype(m.dtype))
                            for k, m in flat.items()})

  def _read(self, wanted):
    if not wanted:
      return {}

    def args(path, sharding):
      if sharding is None:
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32)
      return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=self.shapes[path].shape,
                                  dtype=np.float32)

    restore_args = param_sets.unflatten({k: args(k, s) for k, s in wanted.items()})
    item = param_sets.unflatten({k: 0 for k in wanted})
    restored = ocp.PyTreeCheckpointer().restore(
        self.item, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                               partial_restore=True))
    flat = param_sets.flatten(orbax_io.plain_dict(restored))
    return {k: flat[k] for k in wanted}


def params_item(path: str, step: int | str = 'latest') -> epath.Path:
  """The orbax params folder that `path` names.

  Args:
    path: a run folder (MODEL_DIR), a step folder or a params folder.
    step: for a run folder, 'latest', 'best' (its best.json) or a step number.

  Returns:
    The params item folder.

  Raises:
    CheckpointError: the run has no finished checkpoint, no best.json for 'best', or not
      the step asked for.
  """
  ckdir = orbax_io.checkpoint_dir(path)
  if fs.isdir(ckdir):
    steps = orbax_io.finished_steps(ckdir)
    if not steps:
      raise CheckpointError(f'Run folder {path} has no complete checkpoint under {ckdir}.')
    if step == 'latest':
      chosen = steps[-1]
    elif step == 'best':
      chosen = orbax_io.best_step(path)
      if chosen is None:
        raise CheckpointError(f'Run {path} did not track a best checkpoint (no best.json); '
                              "use step='latest' or a step number.")
    else:
      chosen = int(step)
    if chosen not in steps:
      raise CheckpointError(f'Step {chosen} is not among the complete checkpoints {steps} of {path}.')
    path = fs.join(ckdir, str(chosen))
  return orbax_io.find_params_item(path)


# The kind names of `detect_kind` (`source_kind` is the same function under the name
# the restore path uses).
KINDS = {
    'orbax': 'our orbax run folder (MODEL_DIR, with checkpoints/<step>/), a step folder or a '
             'params folder',
    't5x_legacy': 'a legacy T5X checkpoint_<step>/ folder (msgpack `checkpoint` file + zarr '
                  'arrays) or a T5X model folder holding them',
    'mesh_tf': 'a Mesh-TensorFlow T5/mT5 checkpoint (TensorFlow `checkpoint` index file + '
               'model.ckpt-<step>.index/.data-*), or its model.ckpt-<step> prefix',
    'hf': 'a Hugging Face T5/mT5 folder (config.json + *.safetensors)',
}


def _is_msgpack_checkpoint(path: epath.Path) -> bool:
  """T5X's `checkpoint` file: a msgpack map (first byte 0x80-0x8f, 0xde or 0xdf)."""
  if not path.is_file():
    return False
  with path.open('rb') as f:
    head = f.read(1)
  return bool(head) and (0x80 <= head[0] <= 0x8f or head[0] in (0xde, 0xdf))


def detect_kind(path: str) -> str:
  """Which kind of checkpoint `path` holds: one of `KINDS` ('orbax', 't5x_legacy', 'mesh_tf', 'hf').

  Raises:
    CheckpointError: `path` does not exist or is none of these (the
      message lists what each kind looks like).
  """
  from promot_t5x.checkpoints import mesh_tf

  p = epath.Path(path)
  if not p.exists() and not epath.Path(f'{path}.index').exists():
    raise CheckpointError(f'Checkpoint path {path!r} does not exist.')
  if mesh_tf.find_checkpoint_prefix(str(path)) is not None:
    return 'mesh_tf'
  if p.is_dir():
    if _is_msgpack_checkpoint(p / 'checkpoint'):
      return 't5x_legacy'
    if (p / 'checkpoints').is_dir() or (p / 'params').is_dir() or any(
        (p / m).exists() for m in ('_METADATA', 'manifest.ocdbt')):
      return 'orbax'
    names = [c.name for c in p.iterdir()]
    if 'config.json' in names and any(n.endswith(('.safetensors', '.safetensors.index.json'))
                                      for n in names):
      return 'hf'
    if any(re.fullmatch(r'checkpoint_\d+', n) and _is_msgpack_checkpoint(p / n / 'checkpoint')
           for n in names):
      return 't5x_legacy'
  elif p.name == 'checkpoint' and _is_msgpack_checkpoint(p):
    return 't5x_legacy'
  kinds = '\n'.join(f'  {k}: {v}' for k, v in KINDS.items())
  raise CheckpointError(
      f'{path} is not a checkpoint this project reads. The kinds it reads:\n{kinds}')


def open_source(path: str, step: int | str = 'latest') -> Source:
  """The checkpoint at `path` (run folders: `step` is 'latest', 'best' or a number)."""
  from promot_t5x.checkpoints import mesh_tf

  kind = detect_kind(path)
  if kind == 'mesh_tf':
    return ArraysSource(path, mesh_tf.lazy_mesh_tf_params(path), kind)
  if kind == 't5x_legacy':
    return ArraysSource(path, t5x_legacy.lazy_t5x_legacy_params(path), kind)
  if kind == 'hf':
    return ArraysSource(path, hf.lazy_hf_params(path), kind)
  return OrbaxSource(path, params_item(path, step))


source_kind = detect_kind


def read_params(path: str, step: int | str = 'latest') -> dict[str, np.ndarray]:
  """Flat {path: numpy array} of any checkpoint kind this project reads, read whole."""
  source = open_source(path, step)
  return source.read(dict.fromkeys(source.shapes))
