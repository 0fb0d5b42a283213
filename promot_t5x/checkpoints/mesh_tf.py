"""Reader for Mesh-TensorFlow T5 / mT5 checkpoints (the original released T5 and mT5 models).

The T5 and mT5 papers' checkpoints (`gs://t5-data/pretrained_models/...`,
`gs://t5-data/pretrained_models/mt5/xxl`) are TensorFlow checkpoints written by
Mesh TensorFlow: a folder with TensorFlow's `checkpoint` index file (text,
`model_checkpoint_path: "model.ckpt-1000000"`) and `model.ckpt-<step>.index` /
`.data-*` files. Their variables are named

  shared/embedding                                     [vocab, embed] (T5X: token_embedder/embedding)
  encoder/block_NNN/layer_000/SelfAttention/{q,k,v}    [embed, heads * kv]
  encoder/block_NNN/layer_000/SelfAttention/o          [heads * kv, embed]
  encoder/block_000/layer_000/SelfAttention/relative_attention_bias  [heads, buckets]
  encoder/block_NNN/layer_MMM/layer_norm/scale         [embed] (one per sub-layer)
  encoder/block_NNN/layer_001/DenseReluDense/{wi_0,wi_1,wo}/kernel  (T5 1.0: wi)
  encoder/final_layer_norm/scale
  decoder/block_NNN/layer_001/EncDecAttention/{q,k,v,o}  (decoder: 3 sub-layers)
  decoder/logits/kernel                                [embed, vocab] (untied models)

with kernels already laid out `[in, out]` as T5X's are (no transposes), and
the relative-position table only in block 0 (shared by the stack, as ours).
Adafactor's slots (`<var>_slot_vr`, `_slot_vc`, `_slot_v`) and `global_step`
are skipped: the import gives the parameters. Arrays are read with
TensorFlow's checkpoint reader, one variable at a time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from etils import epath

from promot_t5x.checkpoints import matching

INDEX_FILE = 'checkpoint'
_SLOT = re.compile(r'.*_slot_(vr|vc|v|m)$')
_SKIPPED = ('global_step',)


def is_tf_index_file(path: str) -> bool:
  """True when `path` is TensorFlow's text `checkpoint` index file (not T5X's msgpack one)."""
  p = epath.Path(path)
  if not p.is_file():
    return False
  with p.open('rb') as f:
    head = f.read(64)
  return head.lstrip().startswith((b'model_checkpoint_path', b'all_model_checkpoint_paths'))


def find_checkpoint_prefix(path: str) -> str | None:
  """The TensorFlow checkpoint prefix (`.../model.ckpt-1000000`) `path` names, or None.

  `path` may be the prefix itself, its `.index` file, or a folder with
  TensorFlow's `checkpoint` index file (its latest checkpoint is taken).
  """
  path = str(path).rstrip('/')
  if path.endswith('.index'):
    path = path[:-len('.index')]
  if epath.Path(path + '.index').exists():
    return path
  if is_tf_index_file(os.path.join(path, INDEX_FILE)):
    import tensorflow as tf  # deferred: TensorFlow is slow to import

    prefix = tf.train.latest_checkpoint(path)
    if prefix is not None:
      return prefix
    raise FileNotFoundError(f'{path}/{INDEX_FILE} names no checkpoint whose .index file exists.')
  return None


def _require_prefix(path: str) -> str:
  prefix = find_checkpoint_prefix(path)
  if prefix is None:
    raise FileNotFoundError(
        f'No TensorFlow (Mesh-TF) checkpoint at {path}: expected a folder with TensorFlow\'s '
        '`checkpoint` index file or a prefix such as .../model.ckpt-1000000.')
  return prefix


def _our_name(name: str) -> str | None:
  """Our (T5X) path for one Mesh-TF variable; None for skipped ones (slots, global_step)."""
  if name in _SKIPPED or _SLOT.match(name):
    return None
  if name == 'shared/embedding':
    return 'token_embedder/embedding'
  if m := re.fullmatch(r'(encoder|decoder)/final_layer_norm/scale', name):
    return f'{m[1]}/{m[1]}_norm/scale'
  if name == 'decoder/logits/kernel':
    return 'decoder/logits_dense/kernel'
  m = re.fullmatch(r'(encoder|decoder)/block_(\d+)/layer_(\d+)/(.+)', name)
  if not m:
    return None
  stack, block, sub, rest = m[1], int(m[2]), int(m[3]), m[4]
  layer = f'{stack}/layers_{block}'
  if rest == 'SelfAttention/relative_attention_bias':
    if block != 0:
      raise ValueError(f'{name}: a relative-position table in block {block}. Our model (as '
                       'T5 and mT5) shares one table per stack, held by block 0.')
    return f'{stack}/relpos_bias/rel_embedding'
  if a := re.fullmatch(r'(SelfAttention|EncDecAttention)/([qkvo])', rest):
    kind = ('attention' if stack == 'encoder' else
            {'SelfAttention': 'self_attention', 'EncDecAttention': 'encoder_decoder_attention'}[a[1]])
    return f'{layer}/{kind}/{dict(q="query", k="key", v="value", o="out")[a[2]]}/kernel'
  if d := re.fullmatch(r'DenseReluDense/(wi|wi_0|wi_1|wo)/kernel', rest):
    return f'{layer}/mlp/{d[1]}/kernel'
  if rest == 'layer_norm/scale':
    norms = (('pre_attention_layer_norm', 'pre_mlp_layer_norm') if stack == 'encoder' else
             ('pre_self_attention_layer_norm', 'pre_cross_attention_layer_norm',
              'pre_mlp_layer_norm'))
    if sub >= len(norms):
      raise ValueError(f'{name}: a {stack} block has {len(norms)} sub-layers.')
    return f'{layer}/{norms[sub]}/scale'
  return None


class _TFVariable:
  """One variable of a TensorFlow checkpoint, read whole on first indexing (the last one kept)."""

  _last: tuple[Any, str, np.ndarray] | None = None

  def __init__(self, reader: Any, name: str, shape: tuple[int, ...], dtype: np.dtype):
    self.reader, self.name, self.shape, self.dtype = reader, name, shape, dtype

  def __getitem__(self, index: Any) -> np.ndarray:
    last = _TFVariable._last
    if last is None or last[0] is not self.reader or last[1] != self.name:
      _TFVariable._last = (self.reader, self.name, np.asarray(self.reader.get_tensor(self.name)))
    return _TFVariable._last[2][index]

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    array = self[...]
    return array if dtype is None else array.astype(dtype)


def lazy_mesh_tf_params(path: str) -> dict[str, Any]:
  """{our path: variable read on indexing} of a Mesh-TF checkpoint; slots and global_step skipped.

  Raises:
    ValueError: variables that are neither T5 parameters nor skipped (listed).
  """
  import tensorflow as tf

  prefix = _require_prefix(path)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  out, unknown = {}, []
  for name in sorted(shapes):
    ours = _our_name(name)
    if ours is None:
      if name not in _SKIPPED and not _SLOT.match(name):
        unknown.append(name)
      continue
    if ours in out:
      raise ValueError(f'{prefix}: {name} and {out[ours].name} both map to {ours}.')
    out[ours] = _TFVariable(reader, name, tuple(shapes[name]), np.dtype(dtypes[name].as_numpy_dtype))
  if unknown:
    raise ValueError(f'{prefix} holds variables that are not Mesh-TF T5/mT5 parameters: '
                     f'{unknown[:10]}{" ..." if len(unknown) > 10 else ""}.')
  if not out:
    raise ValueError(f'{prefix} holds no Mesh-TF T5/mT5 parameters (shared/embedding, '
                     'encoder/block_000/...).')
  return out


def read_mesh_tf_params(path: str) -> dict[str, np.ndarray]:
  """All parameters of a Mesh-TF checkpoint, flat under our names, in their stored dtype."""
  return {k: v[...] for k, v in lazy_mesh_tf_params(path).items()}


def mesh_tf_checkpoint_step(path: str) -> int | None:
  """The checkpoint's `global_step` (None when it has none)."""
  import tensorflow as tf

  reader = tf.train.load_checkpoint(_require_prefix(path))
  if not reader.has_tensor('global_step'):
    return None
  return int(reader.get_tensor('global_step'))


def read_mesh_tf_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """{our path: shape}, from the checkpoint's index alone."""
  return {k: v.shape for k, v in lazy_mesh_tf_params(path).items()}


def mesh_tf_config_from_checkpoint(path: str, **overrides: Any) -> Any:
  """A `T5Config` read off the parameter shapes (see `t5x_legacy.config_from_shapes`)."""
  from promot_t5x.checkpoints import t5x_legacy

  return t5x_legacy.config_from_shapes(read_mesh_tf_shapes(path), source=str(path), **overrides)


def import_mesh_tf(path: str, model: Any, *, allow_missing: Iterable[str] = (),
                   allow_unused: Iterable[str] = (),
                   fallback_params: Mapping[str, Any] | None = None,
                   return_report: bool = False) -> Any:
  """Reads the parameters of a Mesh-TF T5/mT5 checkpoint for `model`.

  Args:
    path: the checkpoint folder (with TensorFlow's `checkpoint` index file),
      or a prefix `.../model.ckpt-<step>`.
    model: a `t5.Transformer` or `EncoderDecoderModel`.
    allow_missing: regexes of model parameters the checkpoint may lack (the
      prompt: `('prompt/.*',)`).
    allow_unused: regexes of checkpoint parameters to drop.
    fallback_params: a parameter tree of `model` for allowed-missing parameters.
    return_report: also return the `matching.CheckpointReport`.

  Returns:
    Nested float32 numpy parameters of `model`; with `return_report`,
    `(params, report)`.

  Raises:
    matching.CheckpointError: missing, unexpected or wrong-shape parameters.
  """
  prefix = _require_prefix(path)
  params, report = matching.match_params(
      read_mesh_tf_params(prefix), model, source=prefix, allow_missing=allow_missing,
      allow_unused=allow_unused, fallback_params=fallback_params,
      hint=('`promot_t5x.checkpoints.mesh_tf.mesh_tf_config_from_checkpoint(path)` shows the '
            'architecture the checkpoint implies.'))
  return (params, report) if return_report else params
