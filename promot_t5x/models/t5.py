"""T5.1.0 / T5.1.1 / mT5 encoder-decoder in flax.linen.

Parameter paths and 2-D kernel shapes follow the T5X minimal model
(`token_embedder/embedding`, `encoder/layers_0/attention/query/kernel`,
`decoder/logits_dense/kernel`, `encoder/relpos_bias/rel_embedding`, ...), so
released T5X checkpoints load without renaming. Every parameter is boxed with
logical axis names (`vocab, embed, mlp, heads, kv, joined_kv, relpos_buckets`)
and activations are constrained with `batch, length, ...`; a partitioner maps
them onto a `('data', 'model')` mesh.

Conventions (as in T5X): token id 0 is padding, so masks are `tokens > 0`;
attention logits are not scaled at run time (the query initializer carries the
`1/sqrt(head_dim)`); RMS norm has a scale and no bias.

The soft prompt is a separate module (`prompts.SoftPrompts`): the transformer
only prepends whatever `[batch, P, embed]` it returns to the embedded encoder
inputs and extends the masks. Called with `prompt_index=None` the model is
exactly the plain model.

The model's products are functions it is given (flax's `dot_general` /
attention-function pattern): `T5Config.dot_general` for every dense layer and
`T5Config.attention_fn` for attention's inner part, XLA's own by default
(`jax.lax.dot_general`, `dot_product_attention`). Hardware-specific kernels are
optional parts that provide such functions (promot_t5x.contrib.cpu_kernels, chosen
with gin/options/cpu_kernels.gin).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from promot_t5x.models import prompts as prompts_lib

Array = jax.Array
Dtype = Any
# jax.lax.dot_general's signature: (lhs, rhs, dimension_numbers, precision=None,
# preferred_element_type=None) -> Array.
DotGeneral = Callable[..., Array]
# dot_product_attention's signature: (query, key, value, bias, *, dtype, dropout) -> Array.
AttentionFn = Callable[..., Array]

# T5X's remat policy names (t5x/examples/scalable_t5/network.py).
REMAT_POLICIES = ('none', 'minimal', 'full')
# Logical name of the stacked-layers axis of scanned parameters.
LAYERS_AXIS = 'layers'

_ACTIVATIONS = {
    'relu': nn.relu,
    # T5X's `nn.gelu` is the tanh approximation, as is HF's `gelu_new`.
    'gelu': functools.partial(nn.gelu, approximate=True),
    'gelu_new': functools.partial(nn.gelu, approximate=True),
    'linear': lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 encoder-decoder.

  T5.1.0: `mlp_activations=('relu',)`, `logits_via_embedding=True`.
  T5.1.1 / mT5: `mlp_activations=('gelu', 'linear')`, `logits_via_embedding=False`.
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_activations: tuple[str, ...] = ('gelu', 'linear')
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  dtype: str = 'float32'  # activations; parameters are always float32.
  layer_norm_epsilon: float = 1e-6
  # The products (not part of the architecture): None means XLA's own,
  # jax.lax.dot_general for the dense layers and dot_product_attention for attention.
  # Optional kernels bind other functions here (gin/options/cpu_kernels.gin).
  dot_general: DotGeneral | None = None
  attention_fn: AttentionFn | None = None
  # Activation rematerialization of each encoder/decoder layer in training, by
  # T5X's policy names: 'none' (keep every activation for the backward pass),
  # 'minimal' (keep the products without batch dimensions, i.e. the dense
  # projections; recompute attention scores, softmax, activations, norms),
  # 'full' (keep only each layer's input; recompute the whole layer).
  # The same function and gradients either way; memory against compute.
  remat_policy: str = 'none'
  # Run each stack's layers as one flax `nn.scan` over stacked parameters
  # (`encoder/layers/...` with a leading [layers] axis) instead of unrolling
  # them: the compiled program holds one layer body, so it compiles several
  # times faster. Checkpoints stay in the unrolled layout (`layers_0`, ...);
  # see `scan_params` / `unscan_params`.
  scan_layers: bool = False
  # Soft prompts live beside the model, in their own parameter set.
  prompt: prompts_lib.PromptConfig | None = None

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                 'relative_attention_num_buckets',
                 'relative_attention_max_distance'):
      if getattr(self, name) <= 0:
        raise ValueError(f'T5Config.{name} must be positive, got {getattr(self, name)}.')
    if self.num_encoder_layers < 0 or self.num_decoder_layers <= 0:
      raise ValueError('T5Config needs >= 0 encoder layers and >= 1 decoder layer.')
    unknown = [a for a in self.mlp_activations if a not in _ACTIVATIONS]
    if unknown or not self.mlp_activations:
      raise ValueError(
          f'T5Config.mlp_activations={self.mlp_activations!r}: use ("relu",) for '
          f'T5.1.0 or ("gelu", "linear") for T5.1.1/mT5; known: {sorted(_ACTIVATIONS)}.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    for name in ('dot_general', 'attention_fn'):
      if getattr(self, name) is not None and not callable(getattr(self, name)):
        raise ValueError(f'T5Config.{name} must be a function (or None for XLA\'s own), got '
                         f'{getattr(self, name)!r}; in gin bind a function reference without '
                         'parentheses, e.g. `t5.T5Config.dot_general = @cpu_kernels.dot_general`.')
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'T5Config.remat_policy must be one of {REMAT_POLICIES} (T5X\'s names), '
                       f'got {self.remat_policy!r}.')
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f'T5Config.scan_layers must be True or False, got {self.scan_layers!r}.')
    if self.dtype not in ('float32', 'bfloat16', 'float16'):
      raise ValueError(f'T5Config.dtype must be float32, bfloat16 or float16, got {self.dtype!r}.')
    # Lists from gin become tuples so the config stays hashable.
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))

  @property
  def activation_dtype(self) -> Dtype:
    return jnp.dtype(self.dtype)

  @property
  def dot_general_fn(self) -> DotGeneral:
    """The dense layers' product: `dot_general`, or XLA's `jax.lax.dot_general`."""
    return self.dot_general or jax.lax.dot_general

  @property
  def attention_function(self) -> AttentionFn:
    """Attention's inner part: `attention_fn`, or XLA's `dot_product_attention`."""
    return self.attention_fn or dot_product_attention

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)


# -----------------------------------------------------------------------------
# Initializers (T5X's defaults).
# -----------------------------------------------------------------------------
def _kernel_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, 'fan_in', 'truncated_normal')


def _boxed(init_fn, names: Sequence[str | None]):
  return nn.with_logical_partitioning(init_fn, tuple(names))


def _constrain(x: Array, names: Sequence[str | None]) -> Array:
  return nn.with_logical_constraint(x, tuple(names))


# -----------------------------------------------------------------------------
# Layers.
# -----------------------------------------------------------------------------
class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = jnp.asarray(x, jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = jnp.asarray(x32 * jax.lax.rsqrt(var + self.epsilon), self.dtype)
    scale = self.param('scale', _boxed(nn.initializers.ones, ('embed',)),
                       (x.shape[-1],), jnp.float32)
    return y * jnp.asarray(scale, self.dtype)


class Dense(nn.Module):
  """Dense layer whose kernel is stored 2-D, as T5X's DenseGeneral stores it.

  Contracts the trailing `len(in_dims)` axes of the input with a kernel of
  shape `[prod(in_dims), prod(features)]` and returns `[..., *features]`.
  """

  features: tuple[int, ...]
  in_axes: int
  kernel_axes: tuple[str, str]
  kernel_init: Any = dataclasses.field(default_factory=_kernel_init)
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = jax.lax.dot_general  # T5Config.dot_general_fn

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.in_axes:]
    kernel = self.param('kernel', _boxed(self.kernel_init, self.kernel_axes),
                        (int(np.prod(in_shape)), int(np.prod(self.features))),
                        jnp.float32)
    kernel = jnp.asarray(kernel, self.dtype)
    x = jnp.asarray(x, self.dtype)
    batch_shape = x.shape[:x.ndim - self.in_axes]
    # One 2-D matmul over the flattened leading axes: XLA:CPU runs the
    # backward of 3-D dot_generals around the gated GELU slower than the same
    # work as 2-D matmuls (bench/micro.py).
    x = x.reshape(-1, kernel.shape[0])  # [m, k]
    y = self.dot_general(x, kernel, (((1,), (0,)), ((), ())))  # [m, n]
    return y.reshape(*batch_shape, *self.features)


class Embed(nn.Module):
  """Token embedding table `[vocab, embed]`; `attend` gives tied logits."""

  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        'embedding', _boxed(nn.initializers.normal(stddev=1.0), ('vocab', 'embed')),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int -> [batch, length, embed]."""
    return jnp.asarray(jnp.take(self.embedding, tokens, axis=0), self.dtype)

  def attend(self, query: Array) -> Array:
    """[..., embed] -> [..., vocab]: dot product with every embedding."""
    return jnp.dot(jnp.asarray(query, self.dtype), jnp.asarray(self.embedding, self.dtype).T)


def relative_position_buckets(query_length: int, key_length: int, bidirectional: bool,
                              num_buckets: int, max_distance: int,
                              query_offset: int = 0) -> np.ndarray:
  """Bucket ids `[query_length, key_length]` of Mesh TensorFlow's T5 scheme.

  Computed with numpy at trace time (the lengths are static). The arithmetic is
  float32 in the same order as Mesh TF and Hugging Face so that bucket
  boundaries agree with released checkpoints bit for bit.
  """
  context = np.arange(query_length, dtype=np.int64)[:, None] + query_offset
  memory = np.arange(key_length, dtype=np.int64)[None, :]
  relative_position = memory - context
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    n = np.abs(relative_position)
  else:
    n = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide='ignore'):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(num_buckets - max_exact))
  scaled = np.where(is_small, 0, scaled)  # avoid casting -inf
  large = max_exact + scaled.astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return (buckets + np.where(is_small, n, large)).astype(np.int32)


class RelativePositionBiases(nn.Module):
  """One learned bias per (head, bucket); one table per stack."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_length: int, key_length: int, bidirectional: bool) -> Array:
    """Returns the bias `[1, heads, query_length, key_length]`."""
    table = self.param(
        'rel_embedding',
        _boxed(nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
               ('heads', 'relpos_buckets')),
        (self.num_heads, self.num_buckets), jnp.float32)
    ids = relative_position_buckets(query_length, key_length, bidirectional,
                                    self.num_buckets, self.max_distance)
    bias = jnp.take(jnp.asarray(table, self.dtype), jnp.asarray(ids), axis=1)
    return bias[None]


def _add_position_bias(position_bias: Array, mask_bias: Array) -> Array:
  """`position_bias` [1, heads, q, k] + `mask_bias` [batch, 1, q, k] -> [batch, heads, q, k].

  The same sum as `+`; only the gradient of the position bias is computed
  differently: its sum over the batch is a `ones @ g` product instead of a
  reduction over the leading axis, which XLA:CPU runs much slower
  (bench/README.md, "Where the gap to the peer is"). The sharding of the
  sum is left to the compiler, as for `+`.
  """
  if position_bias.shape[0] != 1:
    raise ValueError(f'position bias must have batch dimension 1, got {position_bias.shape}.')
  return _position_bias_sum(position_bias, mask_bias)


@jax.custom_vjp
def _position_bias_sum(position_bias: Array, mask_bias: Array) -> Array:
  return position_bias + mask_bias


def _position_bias_sum_fwd(position_bias, mask_bias):
  return position_bias + mask_bias, (position_bias.shape, mask_bias.shape)


def _position_bias_sum_bwd(shapes, g):
  position_shape, mask_shape = shapes
  flat = g.reshape(g.shape[0], -1)
  ones = jnp.ones((g.shape[0],), flat.dtype)
  d_position = jnp.dot(ones, flat, precision=jax.lax.Precision.HIGHEST)
  d_mask = jnp.sum(g, axis=tuple(i for i, n in enumerate(mask_shape) if n == 1 and i > 0),
                   keepdims=True)
  return (d_position.reshape(position_shape).astype(g.dtype),
          jnp.broadcast_to(d_mask, mask_shape).astype(g.dtype))


_position_bias_sum.defvjp(_position_bias_sum_fwd, _position_bias_sum_bwd)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array | None, *,
                          dtype: Dtype, dropout: Callable[[Array], Array] | None = None) -> Array:
  """softmax(query key^T + bias) value per (batch, head), with XLA's own products.

  No scaling (T5 folds 1/sqrt(head_dim) into the query initializer); the softmax runs
  in float32.

  Args:
    query: [batch, q_length, heads, head_dim].
    key, value: [batch, kv_length, heads, head_dim].
    bias: [batch or 1, heads or 1, q_length, kv_length] (positions, masks) or None.
    dtype: the activations' dtype (the probabilities are cast to it).
    dropout: applied to the probabilities [batch, heads, q_length, kv_length], or None.

  Returns:
    [batch, q_length, heads, head_dim].
  """
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def _mask_to_bias(mask: Array, dtype: Dtype) -> Array:
  """Boolean/0-1 mask -> additive bias (0 where attended, very negative elsewhere)."""
  return jnp.where(mask > 0, 0.0, -1e10).astype(dtype)


def attention_mask(query_valid: Array, key_valid: Array) -> Array:
  """[batch, q] x [batch, k] validity -> [batch, 1, q, k] mask."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :]).astype(jnp.float32)


def causal_mask(length: int) -> Array:
  return jnp.tril(jnp.ones((length, length), jnp.float32))[None, None]


class MultiHeadAttention(nn.Module):
  """T5 attention with T5X's parameter names (query, key, value, out).

  `mode`:
    'full'    — attend over all keys (training, scoring, encoding);
    'prefill' — decoding set-up: create the caches (cross-attention computes
                and stores its keys/values once), return a dummy output;
    'step'    — one decoding step of length 1 using the caches.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float
  dtype: Dtype
  is_cross_attention: bool = False
  dot_general: DotGeneral = jax.lax.dot_general  # T5Config.dot_general_fn
  attention_fn: AttentionFn = dot_product_attention  # T5Config.attention_function

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None,
               deterministic: bool, mode: str = 'full',
               max_decode_length: int = 0, bias_table=None) -> Array:
    features = (self.num_heads, self.head_dim)
    make = functools.partial(Dense, features=features, in_axes=1,
                             kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
                             dot_general=self.dot_general)
    # The 1/sqrt(head_dim) of dot-product attention is folded into the
    # query initializer; nothing is scaled at run time.
    query = make(kernel_init=_kernel_init(1.0 / self.head_dim), name='query')
    key = make(name='key')
    value = make(name='value')
    q = _constrain(query(inputs_q), ('batch', 'length', 'heads', 'kv'))

    if mode == 'full':
      k = _constrain(key(inputs_kv), ('batch', 'length', 'heads', 'kv'))
      v = _constrain(value(inputs_kv), ('batch', 'length', 'heads', 'kv'))
      dropout = None
      if not deterministic and self.dropout_rate > 0:
        drop = nn.Dropout(self.dropout_rate)
        dropout = functools.partial(drop, deterministic=False)
      out = self.attention_fn(q, k, v, bias, dtype=self.dtype, dropout=dropout)
    else:
      # Decoding caches are kept in the layouts the per-step products read
      # without a copy: keys [batch, heads, head_dim, length] and values
      # [batch, heads, length, head_dim]. (Caching [batch, length, heads,
      # head_dim] made XLA:CPU transpose every layer's cross-attention keys and
      # values at every step: a quarter of greedy decoding's op time,
      # `bench/profile_step.py --decode=greedy`.)
      if self.is_cross_attention:
        # Keys and values of the encoder output are computed once per sequence.
        batch, length = inputs_kv.shape[:2]
        cached_k = self.variable('cache', 'cached_key', jnp.zeros,
                                 (batch, features[0], features[1], length), self.dtype)
        cached_v = self.variable('cache', 'cached_value', jnp.zeros,
                                 (batch, features[0], length, features[1]), self.dtype)
        if mode == 'prefill':
          cached_k.value = jnp.transpose(key(inputs_kv), (0, 2, 3, 1)).astype(self.dtype)
          cached_v.value = jnp.transpose(value(inputs_kv), (0, 2, 1, 3)).astype(self.dtype)
      else:
        batch = inputs_q.shape[0]
        cached_k = self.variable('cache', 'cached_key', jnp.zeros,
                                 (batch, features[0], features[1], max_decode_length), self.dtype)
        cached_v = self.variable('cache', 'cached_value', jnp.zeros,
                                 (batch, features[0], max_decode_length, features[1]), self.dtype)
        index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
        if mode == 'prefill':
          bias = None
        else:  # 'step': one new token at position `index`.
          if inputs_q.shape[1] != 1:
            raise ValueError(f'decoding step expects length-1 queries, got {inputs_q.shape}')
          i = index.value
          new_k = jnp.transpose(key(inputs_kv), (0, 2, 3, 1)).astype(self.dtype)
          new_v = jnp.transpose(value(inputs_kv), (0, 2, 1, 3)).astype(self.dtype)
          cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, new_k, (0, 0, 0, i))
          cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, new_v, (0, 0, i, 0))
          index.value = i + 1
          visible = (jnp.arange(max_decode_length) <= i)[None, None, None, :]
          bias = _mask_to_bias(visible, self.dtype)
          if bias_table is not None:
            # bias_table: [1, heads, max_len, max_len]; take row i.
            row = jax.lax.dynamic_slice_in_dim(bias_table, i, 1, axis=2)
            bias = bias + row.astype(self.dtype)
      # Decoding: XLA's products on the cache layouts.
      k_t, v = cached_k.value, cached_v.value
      logits = jnp.einsum('bqhd,bhdk->bhqk', q, k_t)
      if bias is not None:
        logits = logits + bias.astype(logits.dtype)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
      if not deterministic and self.dropout_rate > 0:
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
      out = jnp.einsum('bhqk,bhkd->bqhd', weights, v)
    out = Dense(features=(inputs_q.shape[-1],), in_axes=2, kernel_axes=('joined_kv', 'embed'),
                dtype=self.dtype, dot_general=self.dot_general, name='out')(out)
    return _constrain(out, ('batch', 'length', 'embed'))


class MlpBlock(nn.Module):
  """`wi` (ReLU, T5.1.0) or `wi_0`/`wi_1` (gated GELU, T5.1.1), then `wo`."""

  mlp_dim: int
  activations: tuple[str, ...]
  dropout_rate: float
  dtype: Dtype
  dot_general: DotGeneral = jax.lax.dot_general  # T5Config.dot_general_fn

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    hidden = None
    for i, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = Dense(features=(self.mlp_dim,), in_axes=1, kernel_axes=('embed', 'mlp'),
                dtype=self.dtype, dot_general=self.dot_general, name=name)(x)
      h = _ACTIVATIONS[act](h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic)
    hidden = _constrain(hidden, ('batch', 'length', 'mlp'))
    return Dense(features=(x.shape[-1],), in_axes=1, kernel_axes=('mlp', 'embed'),
                 dtype=self.dtype, dot_general=self.dot_general, name='wo')(hidden)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_attention_layer_norm')(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                           dot_general=cfg.dot_general_fn, attention_fn=cfg.attention_function,
                           name='attention')(h, h, bias, deterministic)
    x = x + dropout(h, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(x)
    h = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype,
                 dot_general=cfg.dot_general_fn, name='mlp')(h, deterministic)
    x = x + dropout(h, deterministic=deterministic)
    return _constrain(x, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array | None,
               cross_bias: Array | None, deterministic: bool, mode: str,
               max_decode_length: int, bias_table: Array | None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_self_attention_layer_norm')(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                           dot_general=cfg.dot_general_fn, attention_fn=cfg.attention_function,
                           name='self_attention')(
                               h, h, self_bias, deterministic, mode,
                               max_decode_length, bias_table)
    x = x + dropout(h, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_cross_attention_layer_norm')(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                           is_cross_attention=True, dot_general=cfg.dot_general_fn,
                           attention_fn=cfg.attention_function,
                           name='encoder_decoder_attention')(
                               h, encoded, cross_bias, deterministic, mode)
    x = x + dropout(h, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(x)
    h = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype,
                 dot_general=cfg.dot_general_fn, name='mlp')(h, deterministic)
    x = x + dropout(h, deterministic=deterministic)
    return _constrain(x, ('batch', 'length', 'embed'))


def _scan_body(layer_cls: type[nn.Module]) -> type[nn.Module]:
  """`layer_cls` returning `(x, None)`, the (carry, output) pair `nn.scan` expects."""

  class ScanBody(layer_cls):
    def __call__(self, x, *args):
      return super().__call__(x, *args), None

  ScanBody.__name__ = layer_cls.__name__
  return ScanBody


def _run_layers(layer_cls: type[nn.Module], cfg: T5Config, num_layers: int, x: Array,
                args: tuple, static_argnums: tuple[int, ...], train: bool) -> Array:
  """Applies `num_layers` layers `layer_cls(cfg)(x, *args)` -> x, as `cfg` asks.

  Unrolled: submodules `layers_0 ... layers_{n-1}`. Scanned (`cfg.scan_layers`):
  one submodule `layers` whose parameters carry a leading `[num_layers]` axis
  (logical name `layers`) and whose body runs under `nn.scan`. In training
  (`train`) each layer is rematerialized by `cfg.remat_policy`.

  Args:
    layer_cls: EncoderLayer or DecoderLayer (unchanged; wrapped here).
    cfg: the model config.
    num_layers: how many layers.
    x: the carried activations `[batch, length, embed]`.
    args: the layer's other arguments, the same for every layer.
    static_argnums: which of `(x, *args)` are Python values (not traced).
    train: whether gradients may be taken (remat applies only then).

  Returns:
    The last layer's output `[batch, length, embed]`.
  """
  cls = _scan_body(layer_cls) if cfg.scan_layers else layer_cls
  if train and cfg.remat_policy != 'none':
    policy = (jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
              if cfg.remat_policy == 'minimal' else None)  # 'full': save only the inputs
    # flax counts `self` as argument 0.
    cls = nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers,
                   static_argnums=tuple(i + 1 for i in static_argnums))
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = cls(cfg, name=f'layers_{i}')(x, *args)
    return x
  scanned = nn.scan(cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                    in_axes=(nn.broadcast,) * len(args), length=num_layers,
                    metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})
  x, _ = scanned(cfg, name='layers')(x, *args)
  return x


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, valid: Array, deterministic: bool) -> Array:
    """embedded: [batch, length, embed] (prompt already prepended); valid: [batch, length]."""
    cfg = self.config
    dtype = cfg.activation_dtype
    length = embedded.shape[1]
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance,
                                    cfg.num_heads, dtype, name='relpos_bias')
    bias = _add_position_bias(relpos(length, length, bidirectional=True),
                              _mask_to_bias(attention_mask(valid, valid), dtype))
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        embedded, deterministic=deterministic)
    x = _constrain(x.astype(dtype), ('batch', 'length', 'embed'))
    # EncoderLayer(x, bias, deterministic): `deterministic` is static.
    x = _run_layers(EncoderLayer, cfg, cfg.num_encoder_layers, x, (bias, deterministic),
                    static_argnums=(2,), train=True)
    x = RMSNorm(cfg.layer_norm_epsilon, dtype, name='encoder_norm')(x)
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, encoded: Array, query_valid: Array | None,
               encoder_valid: Array, deterministic: bool, mode: str,
               max_decode_length: int, token_embedder: Embed,
               logits_kernel_t: Array | None = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance,
                                    cfg.num_heads, dtype, name='relpos_bias')
    length = embedded.shape[1]
    if mode == 'full':
      self_mask = causal_mask(length) * attention_mask(query_valid, query_valid)
      self_bias = _add_position_bias(relpos(length, length, bidirectional=False),
                                     _mask_to_bias(self_mask, dtype))
      cross_bias = _mask_to_bias(attention_mask(query_valid, encoder_valid), dtype)
      bias_table = None
    else:
      self_bias = None
      cross_bias = _mask_to_bias(encoder_valid[:, None, None, :], dtype)
      bias_table = relpos(max_decode_length, max_decode_length, bidirectional=False)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        embedded, deterministic=deterministic)
    x = _constrain(x.astype(dtype), ('batch', 'length', 'embed'))
    if mode != 'full' and cfg.scan_layers:
      raise ValueError('Cached decoding runs the unrolled layers: call it through '
                       'EncoderDecoderModel (which converts scanned parameters with '
                       'unscan_params) or set T5Config.scan_layers=False.')
    # DecoderLayer(x, encoded, self_bias, cross_bias, deterministic, mode,
    # max_decode_length, bias_table): deterministic, mode and the length are static.
    x = _run_layers(DecoderLayer, cfg, cfg.num_decoder_layers, x,
                    (encoded, self_bias, cross_bias, deterministic, mode, max_decode_length,
                     bias_table),
                    static_argnums=(4, 5, 6), train=mode == 'full')
    x = RMSNorm(cfg.layer_norm_epsilon, dtype, name='decoder_norm')(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      # Tied embeddings (T5.1.0): rescale, as Mesh TF and HF do.
      logits = token_embedder.attend(x) / jnp.sqrt(jnp.asarray(cfg.emb_dim, dtype))
    elif logits_kernel_t is not None:
      # logits_dense's kernel, transposed by the caller ([vocab, embed]).
      logits = jax.lax.dot_general(x.astype(jnp.float32), logits_kernel_t.astype(jnp.float32),
                                   (((x.ndim - 1,), (1,)), ((), ())))
    else:
      logits = Dense(features=(cfg.vocab_size,), in_axes=1, kernel_axes=('embed', 'vocab'),
                     dtype=jnp.float32, dot_general=cfg.dot_general_fn, name='logits_dense')(x)
    logits = _constrain(jnp.asarray(logits, jnp.float32), ('batch', 'length', 'vocab'))
    return logits


class Transformer(nn.Module):
  """The T5 encoder-decoder with optional soft prompts.

  `module.apply({'params': params}, encoder_input_tokens, decoder_input_tokens,
  decoder_target_tokens, enable_dropout=False, prompt_index=None)` returns
  float32 logits `[batch, target_length, vocab]`.

  `prompt_index` is None (the plain model) or an int array `[batch]` choosing,
  per example, which of `config.prompt.names` to prepend.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype,
                                name='token_embedder')
    self.encoder = Encoder(cfg, name='encoder')
    self.decoder = Decoder(cfg, name='decoder')
    if cfg.prompt is not None:
      self.prompt = prompts_lib.SoftPrompts(cfg.prompt, cfg.emb_dim, name='prompt')

  # -- helpers -----------------------------------------------------------------
  def _prompt_length(self, prompt_index: Array | None) -> int:
    if prompt_index is None:
      return 0
    if self.config.prompt is None:
      raise ValueError(
          'A prompt was requested (prompt_index given) but the model has no soft '
          'prompt: set T5Config.prompt = @prompts.PromptConfig() (PROMPT_LENGTH) in '
          'the model gin.')
    return self.config.prompt.length

  def encoder_valid(self, encoder_input_tokens: Array,
                    prompt_index: Array | None = None) -> Array:
    """[batch, P + length] bool: which encoder positions are real."""
    valid = encoder_input_tokens > 0
    p = self._prompt_length(prompt_index)
    if p:
      valid = jnp.concatenate([jnp.ones((valid.shape[0], p), bool), valid], axis=1)
    return valid

  # -- entry points --------------------------------------------------------------
  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_index: Array | None = None) -> Array:
    """[batch, length] -> encoded [batch, P + length, embed]."""
    cfg = self.config
    tokens = _constrain(encoder_input_tokens, ('batch', 'length'))
    embedded = self.token_embedder(tokens)
    if prompt_index is not None:
      self._prompt_length(prompt_index)
      prompt = self.prompt(prompt_index, self.token_embedder.embedding)
      embedded = jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1)
    del cfg
    return self.encoder(embedded, self.encoder_valid(tokens, prompt_index),
                        deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Array | None = None,
             enable_dropout: bool = False, prompt_index: Array | None = None,
             decode_mode: str = 'full', max_decode_length: int = 0,
             logits_kernel_t: Array | None = None) -> Array:
    """Decoder logits `[batch, target_length, vocab]` (float32).

    `decode_mode`: 'full' (teacher forcing over the whole target), 'prefill'
    (create the key/value cache; `max_decode_length` required) or 'step' (one
    token `[batch, 1]` with the cache; call with `mutable=['cache']`).
    `logits_kernel_t`: optionally `params['decoder']['logits_dense']['kernel'].T`
    ([vocab, embed]; untied logits only). Decoding transposes it once, outside
    its loop: XLA:CPU reads a [vocab, embed] kernel for a few rows of
    activations faster than the stored [embed, vocab] one (the greedy
    step's largest product; bench/README.md).
    """
    if decode_mode != 'full' and max_decode_length <= 0:
      raise ValueError('Cached decoding needs max_decode_length > 0.')
    if decode_mode == 'full':
      targets = decoder_input_tokens if decoder_target_tokens is None else decoder_target_tokens
      query_valid = targets > 0
    else:
      query_valid = None
    embedded = self.token_embedder(_constrain(decoder_input_tokens, ('batch', 'length')))
    return self.decoder(embedded, encoded, query_valid,
                        self.encoder_valid(encoder_input_tokens, prompt_index),
                        deterministic=not enable_dropout, mode=decode_mode,
                        max_decode_length=max_decode_length,
                        token_embedder=self.token_embedder,
                        logits_kernel_t=logits_kernel_t)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, enable_dropout: bool = False,
               prompt_index: Array | None = None) -> Array:
    encoded = self.encode(encoder_input_tokens, enable_dropout, prompt_index)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout, prompt_index)


def abstract_params(module: Transformer, batch: int = 1, input_length: int = 8,
                    target_length: int = 8) -> Any:
  """Boxed parameter tree of `ShapeDtypeStruct`s: nothing is allocated."""
  def init(rng):
    enc = jnp.ones((batch, input_length), jnp.int32)
    dec = jnp.ones((batch, target_length), jnp.int32)
    prompt_index = (jnp.zeros((batch,), jnp.int32)
                    if module.config.prompt is not None else None)
    return module.init(rng, enc, dec, dec, prompt_index=prompt_index)['params']
  return jax.eval_shape(init, jax.random.PRNGKey(0))


def init_params(module: Transformer, rng: Array, input_length: int = 8,
                target_length: int = 8) -> Any:
  """Initialized (boxed) parameters, with every prompt initialized too.

  Jitted: eager initialization dispatches every small op separately, which is
  tens of times slower on CPU.
  """
  prompt_index = jnp.zeros((1,), jnp.int32) if module.config.prompt is not None else None

  @jax.jit
  def init(rng):
    enc = jnp.ones((1, input_length), jnp.int32)
    dec = jnp.ones((1, target_length), jnp.int32)
    return module.init(rng, enc, dec, dec, prompt_index=prompt_index)['params']

  return init(rng)


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(params))))


# -----------------------------------------------------------------------------
# Scanned <-> unrolled parameter layout.
# -----------------------------------------------------------------------------
def _stacks(config: T5Config) -> tuple[tuple[str, int], ...]:
  return (('encoder', config.num_encoder_layers), ('decoder', config.num_decoder_layers))


def unscan_params(params: Any, config: T5Config, take=None) -> Any:
  """Scanned parameters -> the unrolled (T5X, on-disk) layout.

  `{'encoder': {'layers': tree [L, ...]}}` becomes `{'encoder': {'layers_0':
  tree [...], ..., 'layers_{L-1}': ...}}`; the rest of the tree is unchanged.
  A tree that is already unrolled is returned as it is.

  Args:
    params: nested dict of parameters (arrays, or any leaves `take` handles).
    config: the model config (layer counts).
    take: `take(leaf, i)` -> layer i's leaf; default `leaf[i]` (numpy and jax
      arrays; under jit or on sharded arrays alike).

  Returns:
    The unrolled nested dict.
  """
  take = take or (lambda x, i: x[i])
  out = dict(params)
  for stack, num_layers in _stacks(config):
    if stack not in out or LAYERS_AXIS not in out[stack]:
      continue
    tree = dict(out[stack])
    stacked = tree.pop(LAYERS_AXIS)
    for i in range(num_layers):
      tree[f'layers_{i}'] = jax.tree_util.tree_map(lambda x, i=i: take(x, i), stacked)
    out[stack] = tree
  return out


def scan_params(params: Any, config: T5Config, stack_fn=None) -> Any:
  """Unrolled (T5X, on-disk) parameters -> the scanned layout; inverse of `unscan_params`.

  Args:
    params: nested dict with `encoder/layers_{i}` and `decoder/layers_{i}`.
    config: the model config (layer counts).
    stack_fn: `stack_fn(list of leaves)` -> the stacked leaf; default
      `jnp.stack` (numpy arrays stay numpy with `np.stack`).

  Returns:
    The nested dict with `encoder/layers` and `decoder/layers` of leading
    axis `[num_layers]`. A tree that is already scanned is returned as is.

  Raises:
    ValueError: when a stack's layers are incomplete.
  """
  def default_stack(xs):
    return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)

  stack_fn = stack_fn or default_stack
  out = dict(params)
  for stack, num_layers in _stacks(config):
    if stack not in out or 'layers_0' not in out[stack]:
      continue
    tree = dict(out[stack])
    layers = []
    for i in range(num_layers):
      if f'layers_{i}' not in tree:
        raise ValueError(f'{stack}/layers_{i} is missing: cannot stack {num_layers} {stack} '
                         'layers for scan_layers=True; the checkpoint has another depth.')
      layers.append(tree.pop(f'layers_{i}'))
    extra = sorted(k for k in tree if re.fullmatch(r'layers_\d+', k))
    if extra:
      raise ValueError(f'{stack} has more layers than num_{stack}_layers={num_layers} '
                       f'({extra[:3]}...).')
    tree[LAYERS_AXIS] = jax.tree_util.tree_map(lambda *xs: stack_fn(list(xs)), *layers)
    out[stack] = tree
  return out


def take_layer_abstract(x: Any, i: int) -> Any:
  """`unscan_params`'s `take` for ShapeDtypeStructs and NamedShardings.

  Drops the leading [layers] axis from the shape and from the sharding's spec,
  so that an unrolled restore target lands on the mesh as the scanned
  parameter would (the layers axis is never sharded).
  """
  del i  # every layer has the same shape and sharding
  if isinstance(x, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(x.mesh, jax.sharding.PartitionSpec(*tuple(x.spec)[1:]))
  if isinstance(x, jax.ShapeDtypeStruct):
    sharding = x.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = take_layer_abstract(sharding, 0)
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)
  raise TypeError(f'take_layer_abstract: unsupported leaf {type(x).__name__}.')
