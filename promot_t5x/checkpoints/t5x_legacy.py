"""Reader for checkpoints in the legacy T5X format (msgpack + TensorStore zarr).

This is the format of the released `gs://t5-data/pretrained_models/t5x/...`
checkpoints (mT5 XXL among them). A checkpoint folder `checkpoint_<step>/`
holds:

  checkpoint        msgpack: {'version': 3,
                              'optimizer': {'target': <params>,
                                            'state': {'step': ...,
                                                      'param_states': <slots>}}}
  target.<dotted.path>/   one zarr v2 array per large parameter

In the msgpack tree a small array is inlined as an ExtType(code=1) whose
payload is itself msgpack: `(shape, dtype name, raw C-order bytes)`. A large
array is replaced by a TensorStore spec, `{'driver': 'zarr', 'kvstore':
{'driver': 'gfile', 'path': 'target.encoder...'}, 'metadata': {...}}`, whose
path is relative to the checkpoint folder; it is read with TensorStore after
rewriting the kvstore to a local file (or GCS) store.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import tensorstore as ts

from promot_t5x.checkpoints import matching
from promot_t5x.models import t5

CHECKPOINT_FILE = 'checkpoint'
_EXT_NDARRAY = 1  # flax.serialization's ExtType codes
_EXT_COMPLEX = 2
_EXT_NPSCALAR = 3
_CHUNKED_ARRAY_KEY = '__msgpack_chunked_array__'


# -----------------------------------------------------------------------------
# Locating and decoding the msgpack file.
# -----------------------------------------------------------------------------
def _is_gcs(path: str) -> bool:
  return str(path).startswith('gs://')


def _exists(path: str) -> bool:
  if _is_gcs(path):
    import tensorflow as tf  # only for gs:// paths
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def _read_bytes(path: str) -> bytes:
  if _is_gcs(path):
    import tensorflow as tf
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read()
  with open(path, 'rb') as f:
    return f.read()


def _list_dir(path: str) -> list[str]:
  if _is_gcs(path):
    import tensorflow as tf
    return [p.rstrip('/') for p in tf.io.gfile.listdir(path)]
  return os.listdir(path)


def find_checkpoint_dir(path: str) -> str:
  """The folder holding the `checkpoint` file.

  `path` may be that folder, the `checkpoint` file itself, or a model folder
  with `checkpoint_<step>/` subfolders (the highest step is taken).
  """
  path = str(path).rstrip('/')
  if os.path.basename(path) == CHECKPOINT_FILE and not _exists(os.path.join(path, CHECKPOINT_FILE)):
    path = os.path.dirname(path)
  if _exists(os.path.join(path, CHECKPOINT_FILE)):
    return path
  if not _exists(path):
    raise FileNotFoundError(f'No legacy T5X checkpoint at {path}: the path does not exist.')
  steps = []
  for name in _list_dir(path):
    m = re.fullmatch(r'checkpoint_(\d+)', name)
    if m and _exists(os.path.join(path, name, CHECKPOINT_FILE)):
      steps.append((int(m.group(1)), name))
  if not steps:
    raise FileNotFoundError(
        f'No legacy T5X checkpoint at {path}: expected a `{CHECKPOINT_FILE}` msgpack file there '
        'or checkpoint_<step>/ subfolders. Pass the checkpoint folder, e.g. '
        '.../t5x/mt5_xxl/checkpoint_1000000.')
  return os.path.join(path, max(steps)[1])


def _numpy_dtype(name: str) -> np.dtype:
  try:
    return np.dtype(name)
  except TypeError:
    # bfloat16 and friends are not numpy builtins.
    if hasattr(ml_dtypes, name):
      return np.dtype(getattr(ml_dtypes, name))
    raise ValueError(f'Unknown array dtype {name!r} in the T5X checkpoint.') from None


def _ext_hook(code: int, data: bytes) -> Any:
  if code == _EXT_NDARRAY:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=False)
    dtype = _numpy_dtype(dtype_name)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()
  if code == _EXT_NPSCALAR:
    dtype_name, buffer = msgpack.unpackb(data, raw=False)
    return np.frombuffer(buffer, dtype=_numpy_dtype(dtype_name))[0]
  if code == _EXT_COMPLEX:
    real, imag = msgpack.unpackb(data, raw=False)
    return complex(real, imag)
  return msgpack.ExtType(code, data)


def _load_msgpack(checkpoint_dir: str) -> dict[str, Any]:
  raw = _read_bytes(os.path.join(checkpoint_dir, CHECKPOINT_FILE))
  state = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
  if not isinstance(state, dict) or 'optimizer' not in state:
    raise ValueError(f'{checkpoint_dir}/{CHECKPOINT_FILE} is not a legacy T5X checkpoint: '
                     "its msgpack tree has no 'optimizer' entry.")
  version = state.get('version')
  if version is not None and int(version) > 3:
    logging.warning('T5X checkpoint version %s is newer than 3; reading it as version 3.', version)
  return state


# -----------------------------------------------------------------------------
# Materializing arrays (inline, chunked msgpack, or TensorStore).
# -----------------------------------------------------------------------------
def _is_ts_spec(node: Any) -> bool:
  return isinstance(node, dict) and node.get('driver') in ('zarr', 'zarr3', 'n5') and (
      'kvstore' in node or 'path' in node)


def _kvstore(checkpoint_dir: str, relative: str) -> dict[str, Any]:
  if _is_gcs(relative):
    full = relative
  elif os.path.isabs(relative):
    # Older checkpoints stored absolute paths; fall back to the copy beside us
    # when the checkpoint was moved.
    full = relative if os.path.exists(relative) else os.path.join(
        checkpoint_dir, os.path.basename(relative))
  else:
    full = os.path.join(checkpoint_dir, relative)
  if _is_gcs(full):
    bucket, _, key = full[len('gs://'):].partition('/')
    return {'driver': 'gcs', 'bucket': bucket, 'path': key}
  return {'driver': 'file', 'path': os.path.abspath(full)}


class TensorStoreArray:
  """A zarr array of the checkpoint, opened on first use and read slice by slice.

  `array[index]` reads only the requested slice (a sharded restore reads each
  device's part); `np.asarray(array)` reads all of it.
  """

  def __init__(self, spec: dict[str, Any], checkpoint_dir: str, name: str):
    spec = copy.deepcopy(spec)
    kvstore = spec.pop('kvstore', None)
    if isinstance(kvstore, dict):
      relative = kvstore.get('path', '')
    elif isinstance(kvstore, str):
      relative = kvstore
    else:
      relative = spec.pop('path')
    spec.pop('path', None)
    metadata = spec.get('metadata', {})
    self.name = name
    self.shape = tuple(metadata.get('shape', ()) or ())
    try:
      self.dtype = _numpy_dtype(metadata['dtype'])
    except (KeyError, ValueError):
      self.dtype = None  # known once opened
    # The on-disk .zarray is authoritative; only the location is ours to fix.
    self._open_spec = {'driver': spec['driver'], 'kvstore': _kvstore(checkpoint_dir, relative)}
    self._store = None

  def _opened(self) -> Any:
    if self._store is None:
      try:
        store = ts.open(self._open_spec, open=True, read=True).result()
      except Exception as e:  # tensorstore raises ValueError/RuntimeError variants
        raise OSError(f'Could not read array {self.name} from {self._open_spec["kvstore"]}: '
                      f'{e}') from e
      if self.shape and tuple(store.shape) != self.shape:
        raise ValueError(f'Array {self.name}: zarr data has shape {tuple(store.shape)} but the '
                         f'checkpoint says {self.shape}.')
      self.shape = tuple(store.shape)
      self.dtype = np.dtype(store.dtype.numpy_dtype)
      self._store = store
    return self._store

  def __getitem__(self, index: Any) -> np.ndarray:
    store = self._opened()
    try:
      return np.asarray(store[index].read().result())
    except Exception as e:
      raise OSError(f'Could not read array {self.name} from {self._open_spec["kvstore"]}: '
                    f'{e}') from e

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    array = self[...]
    return array if dtype is None else array.astype(dtype)


def _chunked_array(node: dict[str, Any]) -> np.ndarray:
  chunks = [np.asarray(node['chunks'][str(i)] if str(i) in node['chunks'] else node['chunks'][i])
            for i in range(len(node['chunks']))]
  return np.concatenate([c.reshape(-1) for c in chunks]).reshape(node['shape'])


def _flatten_lazy(tree: Any, checkpoint_dir: str, prefix: str = '') -> dict[str, Any]:
  """Nested msgpack tree -> {'a/b/c': np.ndarray, scalar or TensorStoreArray (unread)}."""
  if _is_ts_spec(tree):
    return {prefix: TensorStoreArray(tree, checkpoint_dir, prefix)}
  if isinstance(tree, dict) and tree.get(_CHUNKED_ARRAY_KEY):
    return {prefix: _chunked_array(tree)}
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten_lazy(value, checkpoint_dir, f'{prefix}/{key}' if prefix else str(key)))
    return out
  return {prefix: tree}


def _flatten_arrays(tree: Any, checkpoint_dir: str) -> dict[str, Any]:
  """Nested msgpack tree -> {'a/b/c': np.ndarray or scalar}, reading TensorStore arrays."""
  return {k: v[...] if isinstance(v, TensorStoreArray) else v
          for k, v in _flatten_lazy(tree, checkpoint_dir).items()}


def _flatten_shapes(tree: Any, prefix: str = '') -> dict[str, tuple[int, ...]]:
  """Like `_flatten_arrays` but only shapes, reading no zarr data."""
  if _is_ts_spec(tree):
    return {prefix: tuple(tree.get('metadata', {}).get('shape', ()))}
  if isinstance(tree, dict) and tree.get(_CHUNKED_ARRAY_KEY):
    return {prefix: tuple(tree['shape'])}
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten_shapes(value, f'{prefix}/{key}' if prefix else str(key)))
    return out
  return {prefix: tuple(np.shape(tree))}


# -----------------------------------------------------------------------------
# Public API.
# -----------------------------------------------------------------------------
def read_t5x_legacy_params(path: str) -> dict[str, np.ndarray]:
  """All model parameters of a legacy T5X checkpoint, flat: {'encoder/.../kernel': array}.

  Arrays keep their stored dtype (float32 or bfloat16).
  """
  checkpoint_dir = find_checkpoint_dir(path)
  state = _load_msgpack(checkpoint_dir)
  return _flatten_arrays(state['optimizer']['target'], checkpoint_dir)


def lazy_t5x_legacy_params(path: str) -> dict[str, Any]:
  """Like `read_t5x_legacy_params`, but large arrays are `TensorStoreArray`s, read on indexing."""
  checkpoint_dir = find_checkpoint_dir(path)
  state = _load_msgpack(checkpoint_dir)
  return _flatten_lazy(state['optimizer']['target'], checkpoint_dir)


def read_t5x_optimizer_state(path: str) -> dict[str, Any]:
  """The optimizer state: `{'step': int, 'param_states': {param path: {slot: array}}}`.

  For Adafactor, `v_row`/`v_col` are the factored second moments (shape `[1]`
  placeholders where the parameter is not factored), `v` the unfactored one,
  `m` the momentum (a `[1]` placeholder without momentum). Param-state keys
  are '/'-joined parameter paths, matching `import_t5x`'s tree.
  """
  checkpoint_dir = find_checkpoint_dir(path)
  state = _load_msgpack(checkpoint_dir)
  opt_state = state['optimizer'].get('state', {})
  flat = _flatten_arrays(opt_state, checkpoint_dir)
  step = flat.pop('step', None)
  slots: dict[str, dict[str, np.ndarray]] = {}
  for key, value in flat.items():
    if not key.startswith('param_states/'):
      continue
    param_path, _, slot = key[len('param_states/'):].rpartition('/')
    slots.setdefault(param_path, {})[slot] = value
  return {'step': None if step is None else int(np.asarray(step)), 'param_states': slots}


def t5x_checkpoint_step(path: str) -> int | None:
  """The training step stored in the checkpoint (None if absent)."""
  state = _load_msgpack(find_checkpoint_dir(path))
  step = state['optimizer'].get('state', {}).get('step')
  return None if step is None else int(np.asarray(step))


def read_t5x_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """{param path: shape} of a legacy T5X checkpoint; reads only the msgpack file."""
  checkpoint_dir = find_checkpoint_dir(path)
  return _flatten_shapes(_load_msgpack(checkpoint_dir)['optimizer']['target'])


def t5x_config_from_checkpoint(path: str, **overrides: Any) -> t5.T5Config:
  """A `T5Config` read off the parameter shapes of a legacy T5X checkpoint.

  Inferred: vocab_size, emb_dim, num_heads, head_dim, mlp_dim, layer counts,
  relative_attention_num_buckets, logits_via_embedding (no
  `decoder/logits_dense`), mlp_activations (`wi_0`/`wi_1`: T5X's gated GELU
  `('gelu', 'linear')`; `wi`: `('relu',)`). Not stored in the checkpoint and
  taken from `overrides` or `T5Config`'s defaults: relative_attention_max_distance
  (128), layer_norm_epsilon, dropout_rate, dtype, prompt. Only the msgpack file
  is read.
  """
  return config_from_shapes(read_t5x_shapes(path), source=str(path), **overrides)


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], *, source: str = 'checkpoint',
                       **overrides: Any) -> t5.T5Config:
  """`T5Config` from `{T5X param path: shape}` (see `t5x_config_from_checkpoint`)."""
  def need(p: str) -> tuple[int, ...]:
    if p not in shapes:
      raise ValueError(f'Cannot infer the architecture of {source}: it has no {p}. Describe '
                       'the model with a model gin (--gin_file) instead.')
    return shapes[p]

  vocab, emb = need('token_embedder/embedding')
  layer_ids = {stack: sorted({int(m.group(1)) for p in shapes
                              if (m := re.match(rf'{stack}/layers_(\d+)/', p))})
               for stack in ('encoder', 'decoder')}
  heads, buckets = need('decoder/relpos_bias/rel_embedding')
  joined_kv = need('decoder/layers_0/self_attention/query/kernel')[1]
  if 'decoder/layers_0/mlp/wi_0/kernel' in shapes:
    mlp_dim = shapes['decoder/layers_0/mlp/wi_0/kernel'][1]
    activations = ('gelu', 'linear')
  else:
    mlp_dim = need('decoder/layers_0/mlp/wi/kernel')[1]
    activations = ('relu',)
  inferred = dict(
      vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined_kv // heads,
      mlp_dim=mlp_dim, num_encoder_layers=len(layer_ids['encoder']),
      num_decoder_layers=len(layer_ids['decoder']), mlp_activations=activations,
      logits_via_embedding='decoder/logits_dense/kernel' not in shapes,
      relative_attention_num_buckets=buckets)
  inferred.update(overrides)
  return t5.T5Config(**inferred)


def import_t5x(
    path: str,
    model: Any,
    *,
    allow_missing: Iterable[str] = (),
    allow_unused: Iterable[str] = (),
    fallback_params: Mapping[str, Any] | None = None,
    return_report: bool = False,
) -> Any:
  """Reads the parameters of a legacy T5X checkpoint for `model`.

  Args:
    path: the checkpoint folder (`.../checkpoint_1000000`), its `checkpoint`
      file, or a model folder with `checkpoint_<step>/` subfolders (latest taken).
    model: a `t5.Transformer` or `EncoderDecoderModel`; its parameter tree is
      the one returned.
    allow_missing: regexes of model parameters the checkpoint may lack, e.g.
      `('prompt/.*',)` when starting prompt tuning from a pretrained model.
      They are left out of the result (or copied from `fallback_params`).
    allow_unused: regexes of checkpoint parameters to drop.
    fallback_params: a parameter tree of `model` to take allowed-missing
      parameters from (e.g. its initialization).
    return_report: also return the `matching.CheckpointReport`.

  Returns:
    Nested dict of float32 numpy arrays with exactly `model`'s parameter paths
    and shapes (minus allowed-missing ones without a fallback); with
    `return_report`, `(params, report)`.

  Raises:
    matching.CheckpointError: any parameter missing, unexpected, or of
      the wrong shape (all are listed, with both shapes).
  """
  checkpoint_dir = find_checkpoint_dir(path)
  flat = read_t5x_legacy_params(checkpoint_dir)
  params, report = matching.match_params(
      flat, model, source=checkpoint_dir, allow_missing=allow_missing,
      allow_unused=allow_unused, fallback_params=fallback_params,
      hint=('`promot_t5x.checkpoints.t5x_config_from_checkpoint(path)` shows the '
            'architecture the checkpoint implies.'))
  return (params, report) if return_report else params

