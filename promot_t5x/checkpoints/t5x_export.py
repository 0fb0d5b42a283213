"""Writer for the legacy T5X checkpoint format: our parameters and Adafactor state, back to T5X.

`export_t5x(params, model_dir, step=...)` writes `model_dir/checkpoint_<step>/`
as T5X's `Checkpointer` does (the layout `t5x_legacy.py` reads, and the one of
the released checkpoints and of ../shared/fixtures):

  checkpoint_<step>/checkpoint      msgpack {'version': 3,
                                             'optimizer': {'state': {'param_states': ...,
                                                                     'step': int32},
                                                           'target': <params>}}
  checkpoint_<step>/target.<a.b.c>/ zarr v2 (gzip) per kernel / embedding
  checkpoint_<step>/state.param_states.<a.b.c>.<slot>/  zarr for slots shaped like such a
                                    parameter (`v` unfactored, `m` momentum)

Which arrays go to zarr: the matrices T5X partitions (`.../kernel`,
`token_embedder/embedding`, the prompt) and their parameter-shaped slots;
norm scales, relative-position tables, factored slots, placeholders and the
step are inlined in the msgpack file (msgpack ExtType 1: shape, dtype name,
C-order bytes). A zarr array is referenced from the msgpack tree by a
TensorStore spec whose `kvstore.path` is relative to the checkpoint folder, so
the folder can be moved or copied to a bucket.

Adafactor state: T5X keeps, for every parameter, all four slots `m`, `v`,
`v_row`, `v_col`, with `[1]` placeholders for the unused ones; it names the
factored pair by size (`v_row` drops the largest axis, `v_col` the second
largest), where ours names them by position (`v_row` drops the later of the
two). Parameters our run holds no state for (a frozen parameter set) get
T5X's initial state (zeros, factored as T5X's default Adafactor would), so a
T5X run restoring the checkpoint starts their statistics fresh, as our stage
would have.

The soft prompt (`prompt/<name>`, not part of a T5X model) goes, by
`prompt_placement`:
  'npy'    (default) beside the checkpoint: `model_dir/prompts/<name>.npy`,
           `[P, E]` float32, the file prompt-tuning's `from_file` initializer
           reads; the checkpoint is then a plain T5X model;
  'target' into the checkpoint at `encoder/prompt/prompt/prompt`, where the
           prompt-tuning codebase's prompted models keep it (one prompt only);
  'none'   left out.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import tensorstore as ts

from promot_t5x import param_sets

VERSION = 3
CHECKPOINT_FILE = 'checkpoint'
PROMPTS_DIR = 'prompts'
# Where the prompt-tuning codebase's prompted T5X models keep a single prompt.
T5X_PROMPT_PATH = 'encoder/prompt/prompt/prompt'
PROMPT_PLACEMENTS = ('npy', 'target', 'none')
_SLOTS = ('m', 'v', 'v_col', 'v_row')
_EXT_NDARRAY = 1
# T5X's chunk target: chunks of at most 64 MiB.
_CHUNK_BYTES = 64 * 1024 * 1024
# Adafactor defaults of T5X (t5x.adafactor), for parameters without state.
_MIN_DIM_SIZE_TO_FACTOR = 128


# -----------------------------------------------------------------------------
# Adafactor state: ours <-> T5X's.
# -----------------------------------------------------------------------------
def _t5x_factored_axes(shape: tuple[int, ...], min_dim: int = _MIN_DIM_SIZE_TO_FACTOR
                       ) -> tuple[int, int] | None:
  """T5X's (largest axis, second largest axis) of a factored parameter, or None.

  Ties go to the later axis, as numpy's stable argsort orders them.
  """
  if len(shape) < 2:
    return None
  by_size = sorted(range(len(shape)), key=lambda i: (shape[i], i))
  largest, second = by_size[-1], by_size[-2]
  if shape[second] < min_dim:
    return None
  return largest, second


def _placeholder() -> np.ndarray:
  return np.zeros((1,), np.float32)


def t5x_slots_from_ours(shape: tuple[int, ...], slots: Mapping[str, Any] | None
                        ) -> dict[str, np.ndarray]:
  """One parameter's Adafactor slots in T5X's naming, with its `[1]` placeholders.

  Args:
    shape: the parameter's shape.
    slots: our slots for it (`{'v'}` or `{'v_row', 'v_col'}`, plus `'m'`), or
      None for T5X's initial state (zeros).

  Returns:
    {'m', 'v', 'v_col', 'v_row'}: float32 arrays.
  """
  shape = tuple(shape)
  out = {k: _placeholder() for k in _SLOTS}
  if slots is None:
    axes = _t5x_factored_axes(shape)
    if axes is None:
      out['v'] = np.zeros(shape, np.float32)
    else:
      largest, second = axes
      out['v_row'] = np.zeros(shape[:largest] + shape[largest + 1:], np.float32)
      out['v_col'] = np.zeros(shape[:second] + shape[second + 1:], np.float32)
    return out
  slots = {k: np.asarray(v, np.float32) for k, v in slots.items()}
  if 'm' in slots:
    out['m'] = slots['m']
  if 'v' in slots:
    out['v'] = slots['v']
  elif 'v_row' in slots and 'v_col' in slots:
    # Ours: v_row drops the later factored axis, v_col the earlier one. T5X's
    # v_row drops the largest axis: the same array when the largest is the later.
    row_shape, col_shape = slots['v_row'].shape, slots['v_col'].shape
    if _dropped_axis(shape, row_shape) is None or _dropped_axis(shape, col_shape) is None:
      raise ValueError(f'Factored Adafactor slots of shapes {row_shape}, {col_shape} do not fit a '
                       f'parameter of shape {shape}.')
    largest = _t5x_factored_axes(shape, min_dim=1)[0]
    if _dropped_axis(shape, row_shape) == largest:
      out['v_row'], out['v_col'] = slots['v_row'], slots['v_col']
    else:
      out['v_row'], out['v_col'] = slots['v_col'], slots['v_row']
  else:
    raise ValueError(f'Adafactor slots {sorted(slots)} for a parameter of shape {shape}: '
                     "expected 'v' or 'v_row' and 'v_col'.")
  return out


def _dropped_axis(shape: tuple[int, ...], reduced: tuple[int, ...]) -> int | None:
  """The axis of `shape` whose removal gives `reduced` (the later one when ambiguous)."""
  found = None
  for axis in range(len(shape)):
    if shape[:axis] + shape[axis + 1:] == tuple(reduced):
      found = axis
  return found


def our_slots_from_t5x(shape: tuple[int, ...], slots: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `t5x_slots_from_ours`: drops placeholders, names the factored pair by position.

  Args:
    shape: the parameter's shape.
    slots: T5X's `{'m', 'v', 'v_col', 'v_row'}` for it (placeholders included).

  Returns:
    Our slots: `{'v'}` or `{'v_row', 'v_col'}`, plus `'m'` where it holds a value.
  """
  shape = tuple(shape)
  slots = {k: np.asarray(v) for k, v in slots.items()}
  # Placeholders are `[1]`; a parameter of shape [1] itself is never factored.
  real = {k: v for k, v in slots.items() if v.shape != (1,) or shape == (1,)}
  out = {}
  if 'm' in real and (shape != (1,) or np.any(real['m'])):
    out['m'] = real['m']
  if 'v_row' in real and 'v_col' in real and shape != (1,):
    t5x_row, t5x_col = real['v_row'], real['v_col']
    largest = _dropped_axis(shape, t5x_row.shape)
    second = _dropped_axis(shape, t5x_col.shape)
    if largest is not None and second is not None and largest < second:
      out['v_row'], out['v_col'] = t5x_col, t5x_row
    else:
      out['v_row'], out['v_col'] = t5x_row, t5x_col
  elif 'v' in real:
    out['v'] = real['v']
  else:
    raise ValueError(f'T5X Adafactor slots {sorted(slots)} of a parameter of shape {shape} '
                     "hold neither 'v' nor 'v_row' and 'v_col'.")
  return out


def _adafactor_param_states(opt_state: Any) -> tuple[dict[str, dict[str, Any]], int | None]:
  """{param path: our slots} and the step count from a run's optimizer state.

  Accepts a multi-set state `{set: {'count', 'param_states'}}` (what our
  trainer saves), one Adafactor state, or nothing (None / orbax's empty marker).
  """
  if opt_state is None:
    return {}, None
  if hasattr(opt_state, '_asdict'):
    opt_state = opt_state._asdict()
  opt_state = dict(opt_state)
  if 'param_states' in opt_state:
    per_set = {'': opt_state}
  else:
    per_set = {k: (v._asdict() if hasattr(v, '_asdict') else v) for k, v in opt_state.items()
               if k != '_empty'}
  slots: dict[str, dict[str, Any]] = {}
  count = None
  for name, state in per_set.items():
    if not isinstance(state, Mapping) or 'param_states' not in state:
      logging.warning('Optimizer state of set %r is not Adafactor\'s; its parameters get '
                      'T5X\'s initial Adafactor state in the export.', name)
      continue
    if state.get('count') is not None:
      count = max(count or 0, int(np.asarray(state['count'])))
    flat = param_sets.flatten(state['param_states'])
    for key, value in flat.items():
      path, _, slot = key.rpartition('/')
      slots.setdefault(path, {})[slot] = value
  return slots, count


# -----------------------------------------------------------------------------
# Writing.
# -----------------------------------------------------------------------------
def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """Chunks of at most 64 MiB that divide the shape: the largest dimension is cut down first."""
  chunk = list(shape)
  budget = max(1, _CHUNK_BYTES // itemsize)
  while math.prod(chunk) > budget:
    axis = max(range(len(chunk)), key=lambda i: (chunk[i], -i))
    size = chunk[axis]
    chunk[axis] = max(d for d in range(1, size) if shape[axis] % d == 0 and d < size) if size > 1 else 1
  return chunk


def _goes_to_zarr(path: str, array: np.ndarray) -> bool:
  """The arrays T5X partitions and writes with TensorStore: kernels, embeddings, prompts."""
  if array.ndim < 2:
    return False
  leaf = path.rsplit('/', 1)[-1]
  return leaf in ('kernel', 'embedding', 'prompt') or array.nbytes >= 2 ** 30


class _Writer:
  """Writes arrays of one checkpoint folder (local or gs://) and builds its msgpack tree."""

  def __init__(self, directory: str):
    self.directory = directory
    self.zarr_names: list[str] = []

  def _kvstore(self, name: str) -> dict[str, Any]:
    if self.directory.startswith('gs://'):
      bucket, _, prefix = self.directory[len('gs://'):].partition('/')
      return {'driver': 'gcs', 'bucket': bucket, 'path': f'{prefix.rstrip("/")}/{name}'}
    return {'driver': 'file', 'path': os.path.join(os.path.abspath(self.directory), name)}

  def zarr(self, name: str, array: np.ndarray) -> dict[str, Any]:
    """Writes `array` as zarr folder `name`; returns the spec T5X keeps in the msgpack file."""
    array = np.ascontiguousarray(array)
    metadata = {'chunks': _chunk_shape(array.shape, array.dtype.itemsize),
                'compressor': {'id': 'gzip', 'level': 1},
                'dtype': array.dtype.str,
                'shape': list(array.shape)}
    store = ts.open({'driver': 'zarr', 'kvstore': self._kvstore(name), 'metadata': metadata},
                    create=True, delete_existing=True).result()
    store.write(array).result()
    self.zarr_names.append(name)
    # T5X writes 'gfile' for local and bucket paths alike; readers swap in their driver.
    return {'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': name}, 'metadata': metadata}


def _pack_ext(obj: Any) -> Any:
  if isinstance(obj, (np.ndarray, np.generic)):
    array = np.asarray(obj)
    payload = msgpack.packb((list(array.shape), array.dtype.name, array.tobytes('C')),
                            use_bin_type=True)
    return msgpack.ExtType(_EXT_NDARRAY, payload)
  raise TypeError(f'Cannot write {type(obj).__name__} into a T5X checkpoint.')


def _nested_sorted(flat: Mapping[str, Any]) -> dict[str, Any]:
  """'/'-joined paths -> nested dict with keys sorted at every level (as T5X's files are)."""
  def sort(node):
    if isinstance(node, dict) and not _is_spec(node):
      return {k: sort(node[k]) for k in sorted(node)}
    return node
  return sort(param_sets.unflatten(dict(flat)))


def _is_spec(node: Any) -> bool:
  return isinstance(node, dict) and node.get('driver') == 'zarr'


def _exists(path: str) -> bool:
  if path.startswith('gs://'):
    import tensorflow as tf
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def _write_bytes(path: str, data: bytes) -> None:
  if path.startswith('gs://'):
    import tensorflow as tf
    with tf.io.gfile.GFile(path, 'wb') as f:
      f.write(data)
    return
  with open(path, 'wb') as f:
    f.write(data)


def _remove(path: str) -> None:
  if path.startswith('gs://'):
    import tensorflow as tf
    tf.io.gfile.rmtree(path)
  else:
    shutil.rmtree(path)


def export_t5x(params: Mapping[str, Any], model_dir: str, *, step: int,
               opt_state: Any = None, prompt_placement: str = 'npy',
               force: bool = False) -> list[str]:
  """Writes `model_dir/checkpoint_<step>/` in T5X's legacy layout.

  Args:
    params: our nested parameter tree (T5X names; soft prompts under `prompt/`).
    model_dir: the T5X model folder to write into (local or gs://).
    step: the training step: the folder's name and T5X's `state/step`.
    opt_state: the run's optimizer state (`{set: AdafactorState}` as our
      trainer saves it, one Adafactor state, or None). Parameters without a
      state get T5X's initial Adafactor state.
    prompt_placement: 'npy', 'target' or 'none' (module docstring).
    force: replace an existing `checkpoint_<step>/`.

  Returns:
    The paths written: the checkpoint folder, then any prompt files.

  Raises:
    ValueError: a bad `prompt_placement`, several prompts for 'target', or
      optimizer slots that do not fit their parameter.
    FileExistsError: the checkpoint folder exists and not `force`.
  """
  if prompt_placement not in PROMPT_PLACEMENTS:
    raise ValueError(f'prompt_placement must be one of {PROMPT_PLACEMENTS}, got '
                     f'{prompt_placement!r}.')
  flat = {p: np.asarray(v, np.float32) for p, v in param_sets.flatten(dict(params)).items()}
  prompts = {p[len('prompt/'):]: v for p, v in flat.items() if p.startswith('prompt/')}
  target = {p: v for p, v in flat.items() if not p.startswith('prompt/')}
  our_slots, count = _adafactor_param_states(opt_state)
  prompt_slots = None
  if prompt_placement == 'target' and prompts:
    if len(prompts) > 1:
      raise ValueError(f'prompt_placement=target holds one prompt ({T5X_PROMPT_PATH}); this '
                       f'model has {sorted(prompts)}. Use prompt_placement=npy.')
    (name, prompt), = prompts.items()
    target[T5X_PROMPT_PATH] = prompt
    prompt_slots = our_slots.get(f'prompt/{name}')

  checkpoint_dir = f'{model_dir.rstrip("/")}/checkpoint_{int(step)}'
  if _exists(checkpoint_dir):
    if not force:
      raise FileExistsError(f'{checkpoint_dir} exists; pass force=True (--force) to overwrite it.')
    _remove(checkpoint_dir)
  if not checkpoint_dir.startswith('gs://'):
    os.makedirs(checkpoint_dir)
  writer = _Writer(checkpoint_dir)

  target_tree, state_tree = {}, {}
  for path in sorted(target):
    value = target[path]
    dotted = path.replace('/', '.')
    target_tree[path] = (writer.zarr(f'target.{dotted}', value)
                         if _goes_to_zarr(path, value) else value)
    slots = prompt_slots if path == T5X_PROMPT_PATH else our_slots.get(path)
    for slot, array in t5x_slots_from_ours(value.shape, slots).items():
      if array.shape != value.shape and slot in ('v', 'm') and array.shape != (1,):
        raise ValueError(f'Optimizer slot {slot} of {path} has shape {array.shape}, the '
                         f'parameter {value.shape}.')
      if _goes_to_zarr(path, value) and array.shape == value.shape:
        state_tree[f'{path}/{slot}'] = writer.zarr(f'state.param_states.{dotted}.{slot}', array)
      else:
        state_tree[f'{path}/{slot}'] = array
  unused = sorted(set(our_slots) - set(target) - {f'prompt/{n}' for n in prompts})
  if unused:
    raise ValueError(f'Optimizer state for parameters the model lacks: {unused[:5]}.')
  if count is not None and count != int(step):
    logging.info('Optimizer step count %d differs from the run step %d; T5X gets step %d.',
                 count, step, step)

  tree = {'version': VERSION,
          'optimizer': {'state': {'param_states': _nested_sorted(state_tree),
                                  'step': np.asarray(int(step), np.int32)},
                        'target': _nested_sorted(target_tree)}}
  _write_bytes(f'{checkpoint_dir}/{CHECKPOINT_FILE}',
               msgpack.packb(tree, default=_pack_ext, use_bin_type=True, strict_types=False))
  written = [checkpoint_dir]
  if prompt_placement == 'npy':
    for name, prompt in sorted(prompts.items()):
      written.append(_write_prompt(model_dir, name, prompt))
  return written


def _write_prompt(model_dir: str, name: str, prompt: np.ndarray) -> str:
  """`model_dir/prompts/<name>.npy`: `[P, E]` float32."""
  if not re.fullmatch(r'[\w.-]+', name):
    raise ValueError(f'Prompt name {name!r} is not a file name.')
  path = f'{model_dir.rstrip("/")}/{PROMPTS_DIR}/{name}.npy'
  if path.startswith('gs://'):
    import io

    import tensorflow as tf
    tf.io.gfile.makedirs(os.path.dirname(path))
    buffer = io.BytesIO()
    np.save(buffer, prompt)
    _write_bytes(path, buffer.getvalue())
  else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, prompt)
  return path


def export_run_to_t5x(run_path: str, model_dir: str, *, step: int | str = 'latest',
                      prompt_placement: str = 'npy', force: bool = False) -> list[str]:
  """Exports one checkpoint of our run (params and optimizer state) with `export_t5x`.

  Args:
    run_path: our run folder (MODEL_DIR), a step folder, or a params folder
      (then without optimizer state).
    model_dir: the T5X model folder to write into.
    step: 'latest', 'best' or a step number of a run folder.
    prompt_placement: 'npy', 'target' or 'none'.
    force: replace an existing `checkpoint_<step>/`.

  Returns:
    The paths written (see `export_t5x`).
  """
  import json

  from etils import epath

  from promot_t5x.checkpoints import manager, orbax_io

  item = epath.Path(manager.params_item(run_path, step))
  params = orbax_io.load_params(item)
  step_dir = item.parent
  opt_state, run_step = None, None
  if (step_dir / 'opt_state').is_dir():
    opt_state = orbax_io.load_params(step_dir / 'opt_state')
  if (step_dir / 'meta' / 'metadata').exists():
    run_step = json.loads((step_dir / 'meta' / 'metadata').read_text()).get('step')
  if run_step is None and step_dir.name.isdigit():
    run_step = int(step_dir.name)
  if run_step is None:
    _, count = _adafactor_param_states(opt_state)
    run_step = count or 0
  return export_t5x(params, model_dir, step=int(run_step), opt_state=opt_state,
                    prompt_placement=prompt_placement, force=force)
