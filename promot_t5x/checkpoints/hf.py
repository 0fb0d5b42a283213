"""Hugging Face T5 / mT5 folders (config.json + safetensors) <-> our parameters.

Needs neither torch nor transformers: config.json is plain JSON and the
safetensors format is read here directly (so bfloat16 files work too).

Weight names (HF stores linear weights as `[out, in]`; T5X kernels are
`[in, out]`, so every linear weight and the relative bias table are transposed):

  HF                                            ours
  shared.weight                                 token_embedder/embedding
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight
      -> encoder/layers_{i}/attention/{query,key,value,out}/kernel
  encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
      -> encoder/relpos_bias/rel_embedding [heads, buckets]
  encoder.block.{i}.layer.0.layer_norm.weight   .../pre_attention_layer_norm/scale
  encoder.block.{i}.layer.1.DenseReluDense.{wi | wi_0, wi_1, wo}.weight
      -> encoder/layers_{i}/mlp/{wi | wi_0, wi_1, wo}/kernel
  encoder.block.{i}.layer.1.layer_norm.weight   .../pre_mlp_layer_norm/scale
  encoder.final_layer_norm.weight               encoder/encoder_norm/scale
  decoder.block.{i}.layer.0 SelfAttention       decoder/layers_{i}/self_attention
      (relative_attention_bias in block 0 -> decoder/relpos_bias/rel_embedding),
      layer_norm -> pre_self_attention_layer_norm
  decoder.block.{i}.layer.1 EncDecAttention     .../encoder_decoder_attention,
      layer_norm -> pre_cross_attention_layer_norm
  decoder.block.{i}.layer.2 DenseReluDense      .../mlp, layer_norm -> pre_mlp_layer_norm
  decoder.final_layer_norm.weight               decoder/decoder_norm/scale
  lm_head.weight [vocab, d]                     decoder/logits_dense/kernel [d, vocab]

Output layer. T5.1.0 ties the LM head to `shared` and scales the decoder
output by `d_model**-0.5` (our `logits_via_embedding=True`). T5.1.1 / mT5
have a separate `lm_head` and no scaling (`logits_via_embedding=False`).
transformers 5.x always ties `lm_head` to `shared` in memory and only unties
it when the file holds a different `lm_head.weight`; for T5 it keeps the
scaling decision in `scale_decoder_outputs` (default: `tie_word_embeddings`),
for mT5 it never scales. An HF model without `lm_head.weight` that does not
scale is imported with `logits_dense = shared.T` (an untied copy).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np
import safetensors.numpy

from promot_t5x import param_sets
from promot_t5x.checkpoints import matching
from promot_t5x.models import encoder_decoder, t5

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
WEIGHTS_INDEX_NAME = 'model.safetensors.index.json'
PROMPTS_NAME = 'prompts.npz'

# Tensors some HF checkpoints carry that hold nothing of their own.
_IGNORED_HF_TENSORS = (
    # A relative bias that T5's cross-attention never uses (old checkpoints).
    r'decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight',
)
# Copies of `shared.weight` (tied in every HF T5).
_EMBEDDING_COPIES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')

_ST_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}

# HF activation name (after the 'gated-' prefix) -> our activation name. HF's
# plain 'gelu' is the exact erf GELU, which our model does not have, except in
# 'gated-gelu', which HF maps to the tanh approximation 'gelu_new'.
_HF_TO_OUR_ACTIVATION = {'relu': 'relu', 'gelu_new': 'gelu_new'}


# -----------------------------------------------------------------------------
# Config.
# -----------------------------------------------------------------------------
def _activations_from_hf(feed_forward_proj: str) -> tuple[str, ...]:
  if feed_forward_proj == 'gated-gelu':
    return ('gelu', 'linear')
  gated = feed_forward_proj.startswith('gated-')
  act = feed_forward_proj[len('gated-'):] if gated else feed_forward_proj
  if act not in _HF_TO_OUR_ACTIVATION:
    raise ValueError(
        f"HF feed_forward_proj={feed_forward_proj!r} is not supported; the model implements "
        "'relu' (T5.1.0), 'gated-gelu' (T5.1.1/mT5), 'gelu_new', 'gated-relu' and "
        "'gated-gelu_new'.")
  ours = _HF_TO_OUR_ACTIVATION[act]
  return (ours, 'linear') if gated else (ours,)


def _activations_to_hf(activations: tuple[str, ...]) -> str:
  acts = tuple(activations)
  if len(acts) == 2 and acts[1] == 'linear' and acts[0] in ('gelu', 'gelu_new', 'relu'):
    return {'gelu': 'gated-gelu', 'gelu_new': 'gated-gelu_new', 'relu': 'gated-relu'}[acts[0]]
  if len(acts) == 1 and acts[0] in ('relu', 'gelu', 'gelu_new'):
    # Our 'gelu' is the tanh approximation: HF's 'gelu_new'.
    return {'relu': 'relu', 'gelu': 'gelu_new', 'gelu_new': 'gelu_new'}[acts[0]]
  raise ValueError(f'mlp_activations={acts} has no Hugging Face T5 equivalent; HF supports '
                   "one activation or a gated pair (act, 'linear').")


def _hf_scales_decoder_output(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 before the LM head."""
  if hf_config.get('model_type') == 'mt5':
    return False  # MT5ForConditionalGeneration (transformers 5.x) never scales.
  if 'scale_decoder_outputs' in hf_config:
    return bool(hf_config['scale_decoder_outputs'])
  return hf_config.get('tie_word_embeddings', True) is not False


def t5_config_from_hf(hf_config: Mapping[str, Any], *, logits_via_embedding: bool,
                      **overrides: Any) -> t5.T5Config:
  """`T5Config` from an HF T5/MT5 config dict (`config.json`)."""
  model_type = hf_config.get('model_type', 't5')
  if model_type not in ('t5', 'mt5'):
    raise ValueError(f"HF model_type {model_type!r} is not T5: expected 't5' or 'mt5'.")
  num_layers = int(hf_config.get('num_layers', 6))
  num_decoder_layers = hf_config.get('num_decoder_layers')
  values = dict(
      vocab_size=int(hf_config['vocab_size']),
      emb_dim=int(hf_config['d_model']),
      num_heads=int(hf_config['num_heads']),
      head_dim=int(hf_config['d_kv']),
      mlp_dim=int(hf_config['d_ff']),
      num_encoder_layers=num_layers,
      num_decoder_layers=int(num_layers if num_decoder_layers is None else num_decoder_layers),
      mlp_activations=_activations_from_hf(hf_config.get('feed_forward_proj', 'relu')),
      logits_via_embedding=logits_via_embedding,
      relative_attention_num_buckets=int(hf_config.get('relative_attention_num_buckets', 32)),
      relative_attention_max_distance=int(hf_config.get('relative_attention_max_distance', 128)),
      dropout_rate=float(hf_config.get('dropout_rate', 0.1)),
      layer_norm_epsilon=float(hf_config.get('layer_norm_epsilon', 1e-6)),
  )
  values.update(overrides)
  return t5.T5Config(**values)


def hf_config_from_t5(config: t5.T5Config, model_type: str = 't5') -> dict[str, Any]:
  """HF `config.json` contents for `config` (`model_type` 't5' or 'mt5')."""
  if model_type not in ('t5', 'mt5'):
    raise ValueError(f"model_type must be 't5' or 'mt5', got {model_type!r}.")
  if model_type == 'mt5' and config.logits_via_embedding:
    raise ValueError("Tied logits (logits_via_embedding=True) scale the decoder output, which "
                     "HF's MT5 does not do: export with model_type='t5'.")
  return {
      'architectures': ['MT5ForConditionalGeneration' if model_type == 'mt5'
                        else 'T5ForConditionalGeneration'],
      'model_type': model_type,
      'vocab_size': config.vocab_size,
      'd_model': config.emb_dim,
      'd_kv': config.head_dim,
      'd_ff': config.mlp_dim,
      'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers,
      'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance,
      'dropout_rate': config.dropout_rate,
      'layer_norm_epsilon': config.layer_norm_epsilon,
      'initializer_factor': 1.0,
      'feed_forward_proj': _activations_to_hf(config.mlp_activations),
      'tie_word_embeddings': bool(config.logits_via_embedding),
      'scale_decoder_outputs': bool(config.logits_via_embedding),
      'is_encoder_decoder': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'decoder_start_token_id': 0,
      'dtype': 'float32',
  }


# -----------------------------------------------------------------------------
# safetensors.
# -----------------------------------------------------------------------------
def read_safetensors(filename: str) -> dict[str, np.ndarray]:
  """{name: array} of one .safetensors file (memory-mapped, any dtype incl. bfloat16).

  Format: 8-byte little-endian header size, a JSON header
  `{name: {'dtype', 'shape', 'data_offsets': [begin, end]}}`, then the data.
  """
  with open(filename, 'rb') as f:
    (header_size,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(header_size))
  data = np.memmap(filename, dtype=np.uint8, mode='r', offset=8 + header_size)
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _ST_DTYPES:
      raise ValueError(f'{filename}: tensor {name} has unsupported dtype {info["dtype"]}.')
    begin, end = info['data_offsets']
    out[name] = data[begin:end].view(_ST_DTYPES[info['dtype']]).reshape(info['shape'])
  return out


def read_hf_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of an HF folder (`model.safetensors` or a sharded index)."""
  index = os.path.join(path, WEIGHTS_INDEX_NAME)
  single = os.path.join(path, WEIGHTS_NAME)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      tensors.update(read_safetensors(os.path.join(path, shard)))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f'{index} lists tensors that no shard holds: {missing[:10]}')
    return tensors
  if os.path.exists(single):
    return read_safetensors(single)
  present = sorted(os.listdir(path)) if os.path.isdir(path) else []
  hint = ''
  if any(n.endswith('.bin') for n in present):
    hint = (' Only PyTorch .bin weights are there: convert them with transformers, '
            '`Model.from_pretrained(path).save_pretrained(out, safe_serialization=True)`.')
  raise FileNotFoundError(f'No {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {path} '
                          f'(found: {present[:20]}).{hint}')


# -----------------------------------------------------------------------------
# Name mapping.
# -----------------------------------------------------------------------------
_ATTN = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}


def _hf_to_t5x_names(config: t5.T5Config) -> dict[str, tuple[str, str]]:
  """{HF tensor name: (our path, how)}; how: 'T' (transpose) or 'copy'."""
  mlp = ['wi'] if len(config.mlp_activations) == 1 else [
      f'wi_{i}' for i in range(len(config.mlp_activations))]
  mlp.append('wo')
  names: dict[str, tuple[str, str]] = {'shared.weight': ('token_embedder/embedding', 'copy')}

  def attention(hf: str, ours: str):
    for h, o in _ATTN.items():
      names[f'{hf}.{h}.weight'] = (f'{ours}/{o}/kernel', 'T')

  def ff(hf: str, ours: str):
    for w in mlp:
      names[f'{hf}.DenseReluDense.{w}.weight'] = (f'{ours}/mlp/{w}/kernel', 'T')

  for i in range(config.num_encoder_layers):
    hf, ours = f'encoder.block.{i}', f'encoder/layers_{i}'
    attention(f'{hf}.layer.0.SelfAttention', f'{ours}/attention')
    names[f'{hf}.layer.0.layer_norm.weight'] = (f'{ours}/pre_attention_layer_norm/scale', 'copy')
    ff(f'{hf}.layer.1', ours)
    names[f'{hf}.layer.1.layer_norm.weight'] = (f'{ours}/pre_mlp_layer_norm/scale', 'copy')
  names['encoder.final_layer_norm.weight'] = ('encoder/encoder_norm/scale', 'copy')
  for i in range(config.num_decoder_layers):
    hf, ours = f'decoder.block.{i}', f'decoder/layers_{i}'
    attention(f'{hf}.layer.0.SelfAttention', f'{ours}/self_attention')
    names[f'{hf}.layer.0.layer_norm.weight'] = (f'{ours}/pre_self_attention_layer_norm/scale',
                                                'copy')
    attention(f'{hf}.layer.1.EncDecAttention', f'{ours}/encoder_decoder_attention')
    names[f'{hf}.layer.1.layer_norm.weight'] = (f'{ours}/pre_cross_attention_layer_norm/scale',
                                                'copy')
    ff(f'{hf}.layer.2', ours)
    names[f'{hf}.layer.2.layer_norm.weight'] = (f'{ours}/pre_mlp_layer_norm/scale', 'copy')
  names['decoder.final_layer_norm.weight'] = ('decoder/decoder_norm/scale', 'copy')
  # The relative bias tables live in block 0 of each stack: [buckets, heads].
  if config.num_encoder_layers:
    names['encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
        'encoder/relpos_bias/rel_embedding', 'T')
  names['decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
      'decoder/relpos_bias/rel_embedding', 'T')
  if not config.logits_via_embedding:
    names['lm_head.weight'] = ('decoder/logits_dense/kernel', 'T')
  return names


def hf_tensors_to_params(tensors: Mapping[str, np.ndarray], config: t5.T5Config,
                         *, source: str = 'HF checkpoint', lazy: bool = False
                         ) -> dict[str, np.ndarray]:
  """HF tensors -> flat {our path: float32 array}; errors on unknown or missing tensors.

  `tensors` must already hold `lm_head.weight` for an untied config (see
  `import_hf` for how a tied, unscaled HF head is untied). With `lazy`, the
  values are views of `tensors` (transposed where ours are; stored dtype),
  so memory-mapped tensors are read only where indexed.
  """
  names = _hf_to_t5x_names(config)
  unknown, flat = [], {}
  for name, value in tensors.items():
    if name in names:
      path, how = names[name]
      if lazy:
        flat[path] = value.T if how == 'T' else value
        continue
      value = np.asarray(value, dtype=np.float32)
      flat[path] = np.ascontiguousarray(value.T) if how == 'T' else value
    elif name in _EMBEDDING_COPIES:
      if not _equal(value, tensors.get('shared.weight')):
        raise ValueError(f'{source}: {name} differs from shared.weight; this model needs one '
                         'shared token embedding.')
    elif any(re.fullmatch(p, name) for p in _IGNORED_HF_TENSORS):
      continue
    else:
      unknown.append(name)
  missing = sorted(n for n in names if n not in tensors)
  if unknown or missing:
    raise ValueError(
        f'{source} does not match its config (T5: {config.num_encoder_layers}+'
        f'{config.num_decoder_layers} layers, mlp {config.mlp_activations}, '
        f'{"tied" if config.logits_via_embedding else "untied"} head).\n'
        f'Unknown tensors ({len(unknown)}): {sorted(unknown)[:25]}\n'
        f'Missing tensors ({len(missing)}): {missing[:25]}\n'
        'Check that config.json (num_layers, num_decoder_layers, feed_forward_proj, '
        'tie_word_embeddings) describes these weights.')
  return flat


def params_to_hf_tensors(params: Mapping[str, Any], config: t5.T5Config
                         ) -> dict[str, np.ndarray]:
  """Our nested parameters -> HF tensors (float32, contiguous). Soft prompts are skipped."""
  flat = {p: v for p, v in param_sets.flatten(params).items()
          if not p.startswith(param_sets.PROMPT_ROOT + '/')}
  names = _hf_to_t5x_names(config)
  out, missing = {}, []
  for hf_name, (path, how) in names.items():
    if path not in flat:
      missing.append(path)
      continue
    value = np.asarray(flat[path], dtype=np.float32)
    out[hf_name] = np.ascontiguousarray(value.T if how == 'T' else value)
  ours = {path for path, _ in names.values()}
  extra = sorted(p for p in flat if p not in ours)
  expected = matching.expected_shapes(t5.Transformer(config.replace(prompt=None)))
  wrong = sorted(f'{p}: {np.shape(flat[p])} vs config {expected[p]}' for p in ours
                 if p in flat and tuple(np.shape(flat[p])) != expected[p])
  if missing or extra or wrong:
    raise ValueError(f'The parameters do not match the config: missing {missing[:25]}, '
                     f'unexpected {extra[:25]}, wrong shape {wrong}. Pass the T5Config the '
                     'parameters were trained with.')
  return out


# -----------------------------------------------------------------------------
# Import / export.
# -----------------------------------------------------------------------------
def read_hf_config(path: str) -> dict[str, Any]:
  filename = os.path.join(path, CONFIG_NAME)
  if not os.path.exists(filename):
    raise FileNotFoundError(f'No {CONFIG_NAME} in {path}: pass a Hugging Face model folder '
                            '(config.json + model.safetensors).')
  with open(filename) as f:
    return json.load(f)


def _hf_params(path: str, config_overrides: Mapping[str, Any] | None, lazy: bool
               ) -> tuple[t5.T5Config, dict[str, Any]]:
  """(our config, flat {our path: array}) of an HF folder; `lazy`: views, read when indexed."""
  hf_config = read_hf_config(path)
  tensors = read_hf_tensors(path)
  shared = tensors.get('shared.weight')
  if shared is None:
    raise ValueError(f'{path} has no shared.weight (the token embedding).')
  lm_head = tensors.get('lm_head.weight')
  scale = _hf_scales_decoder_output(hf_config)
  tensors = dict(tensors)
  if lm_head is None or _equal(lm_head, shared):
    # One embedding for input and output.
    tensors.pop('lm_head.weight', None)
    tied = scale
    if not scale:
      # HF multiplies by `shared` without the T5.1.0 rescaling: our untied head
      # with an initial copy of the embedding computes the same logits.
      tensors['lm_head.weight'] = shared
      logging.info('%s: unscaled tied LM head imported as an untied copy of shared.weight.',
                   path)
  else:
    tied = False
    if scale:
      # A separate head applied to a rescaled decoder output (T5 with
      # tie_word_embeddings unset): fold the scale into the kernel.
      factor = np.float32(hf_config['d_model']) ** -0.5
      tensors['lm_head.weight'] = (_Scaled(lm_head, factor) if lazy
                                   else np.asarray(lm_head, np.float32) * factor)
  overrides = dict(config_overrides or {})
  if 'logits_via_embedding' in overrides:
    raise ValueError('logits_via_embedding follows from the HF weights (lm_head.weight) and '
                     'config; it cannot be overridden.')
  config = t5_config_from_hf(hf_config, logits_via_embedding=tied, **overrides)
  return config, hf_tensors_to_params(tensors, config, source=path, lazy=lazy)


def lazy_hf_params(path: str) -> dict[str, Any]:
  """{our path: array-like} of an HF folder, reading no tensor data until indexed.

  Each value is a view of the memory-mapped safetensors file (transposed where
  our layout is), or a `_Scaled` one for a head whose rescaling is folded in;
  `checkpoints.sources` reads each process's slices of them.
  """
  return _hf_params(path, None, lazy=True)[1]


class _Scaled:
  """`base * factor` as float32, computed only for the slices read."""

  def __init__(self, base: Any, factor: float):
    self.base, self.factor = base, np.float32(factor)
    self.shape, self.dtype = tuple(base.shape), np.dtype(np.float32)

  @property
  def T(self) -> _Scaled:  # noqa: N802 (numpy's name)
    return _Scaled(self.base.T, self.factor)

  def __getitem__(self, index: Any) -> np.ndarray:
    return np.asarray(self.base[index], np.float32) * self.factor

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    array = self[...]
    return array if dtype is None else array.astype(dtype)


def _equal(a: Any, b: Any, rows: int = 4096) -> bool:
  """np.array_equal of two (memory-mapped) tensors, a block of rows at a time."""
  if b is None or tuple(a.shape) != tuple(b.shape):
    return False
  if not a.shape:
    return bool(np.asarray(a) == np.asarray(b))
  return all(np.array_equal(np.asarray(a[i:i + rows]), np.asarray(b[i:i + rows]))
             for i in range(0, a.shape[0], rows))


def import_hf(
    path: str,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    allow_missing: Iterable[str] = (matching.PROMPT_PATTERN,),
    fallback_params: Mapping[str, Any] | None = None,
    return_report: bool = False,
) -> Any:
  """Reads a Hugging Face T5/mT5 folder into our model and parameters.

  Args:
    path: folder with `config.json` and `model.safetensors` (or a sharded
      `model.safetensors.index.json`).
    config_overrides: `T5Config` fields to set on top of the HF config, e.g.
      `{'dtype': 'bfloat16', 'dropout_rate': 0.0, 'prompt': PromptConfig(...)}`.
    allow_missing: regexes of model parameters HF cannot hold (by default
      the soft prompt, which is then left out or taken from `fallback_params`).
    fallback_params: parameter tree to take allowed-missing parameters from.
    return_report: also return the `matching.CheckpointReport`.

  Returns:
    `(EncoderDecoderModel, params)` (no vocabulary attached: set
    `model.vocabulary`), or `(model, params, report)` with `return_report`.
  """
  config, flat = _hf_params(path, config_overrides, lazy=False)
  model = encoder_decoder.EncoderDecoderModel(module=t5.Transformer(config))
  params, report = matching.match_params(
      flat, model, source=path, allow_missing=allow_missing, fallback_params=fallback_params)
  return (model, params, report) if return_report else (model, params)


def export_hf(
    params: Mapping[str, Any],
    config: t5.T5Config,
    path: str,
    *,
    model_type: str = 't5',
    save_prompts: bool = True,
    vocabulary: Any = None,
) -> list[str]:
  """Writes `config.json` + `model.safetensors` (float32) that transformers loads.

  `transformers.T5ForConditionalGeneration.from_pretrained(path)` (or
  `MT5ForConditionalGeneration` with `model_type='mt5'`) loads it with no
  missing or unexpected keys; `generation_config.json` holds T5's special ids.
  Soft prompts are not part of an HF model: with `save_prompts` each becomes a
  PEFT prompt-tuning adapter `peft/<name>/` (`peft_export`) and all go to
  `prompts.npz` (one `[P, E]` array per prompt name). With a `vocabulary`
  (`seqio.SentencePieceVocabulary`) the tokenizer files are written too.
  Returns the files written.
  """
  from promot_t5x.checkpoints import peft_export

  prompts = {name: np.asarray(v, np.float32)
             for name, v in dict(params.get(param_sets.PROMPT_ROOT, {})).items()}
  tensors = params_to_hf_tensors(params, config)
  if os.path.exists(os.path.join(path, WEIGHTS_INDEX_NAME)):
    raise FileExistsError(f'{path} holds a sharded HF model ({WEIGHTS_INDEX_NAME}); export to '
                          'an empty folder.')
  os.makedirs(path, exist_ok=True)
  written = []
  config_file = os.path.join(path, CONFIG_NAME)
  with open(config_file, 'w') as f:
    json.dump(hf_config_from_t5(config, model_type), f, indent=2, sort_keys=True)
  written.append(config_file)
  weights_file = os.path.join(path, WEIGHTS_NAME)
  safetensors.numpy.save_file(tensors, weights_file, metadata={'format': 'pt'})
  written.append(weights_file)
  written.append(peft_export.write_generation_config(path))
  if vocabulary is not None:
    written += peft_export.write_tokenizer(vocabulary, path)
  if prompts and save_prompts:
    prompts_file = os.path.join(path, PROMPTS_NAME)
    np.savez(prompts_file, **prompts)
    written.append(prompts_file)
    written += peft_export.write_peft_prompts(prompts, path, config)
  elif prompts:
    logging.info('Soft prompts %s not exported (save_prompts=False).', sorted(prompts))
  return written
