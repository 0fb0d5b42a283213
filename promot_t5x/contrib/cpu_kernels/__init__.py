"""CPU kernels for the T5 model's products, as the functions the model takes.

The model (`promot_t5x.models.t5`) runs XLA's own products unless its config is given
other functions: `T5Config.dot_general` (every dense layer's product) and
`T5Config.attention_fn` (attention's inner part). This package provides both, backed by
the kernels of `kernels.py` (oneMKL's sgemm for the dense layers; BLAS products and a fused
scores-softmax-context kernel for attention), and is chosen in gin:

  --gin_file=options/cpu_kernels.gin

which binds

  t5.T5Config.dot_general = @cpu_kernels.dot_general
  t5.T5Config.attention_fn = @cpu_kernels.attention

Each function uses its kernel where the kernel applies, a float32 computation on the CPU
backend in an unpartitioned program (no mesh, or a mesh of one device: a custom call is
opaque to XLA's SPMD partitioner, which would replicate its operands on every device), and
XLA's product everywhere else (bfloat16, TPU, GPU, a sharded mesh), so a gin file that
chooses the option still runs anywhere. Where the kernels apply but cannot be built or
loaded (no g++, no `mkl`/`tbb` wheels: `pip install "promot-t5x[cpu]"`), tracing raises
RuntimeError naming what is missing.

Nothing is compiled until a traced model first calls one of these functions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from promot_t5x.contrib.cpu_kernels import kernels
from promot_t5x.models import t5

__all__ = ['applies', 'attention', 'blas_attention', 'dot_general', 'kernels']


def applies(*arrays: jax.Array) -> bool:
  """Whether the kernels apply to a computation on `arrays` while it is traced.

  Args:
    arrays: the operands (their dtypes are checked).

  Returns:
    True for float32 operands on the CPU backend in an unpartitioned program.
  """
  mesh = jax.sharding.get_abstract_mesh()
  return (all(jnp.dtype(a.dtype) == jnp.float32 for a in arrays) and jax.default_backend() == 'cpu'
          and (mesh.empty or mesh.size == 1))


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None, **kwargs) -> jax.Array:
  """`jax.lax.dot_general`, with a dense layer's float32 `[m, k] @ [k, n]` on CPU through oneMKL.

  Args:
    lhs, rhs: the operands; the model's Dense passes x `[m, k]` and its kernel `[k, n]`.
    dimension_numbers, precision, preferred_element_type, kwargs: as for
      `jax.lax.dot_general`.

  Returns:
    The product (and, through `kernels.dense`'s custom VJP, both gradients through MKL).
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  plain_matmul = (lhs.ndim == 2 and rhs.ndim == 2 and tuple(lhs_contract) == (1,)
                  and tuple(rhs_contract) == (0,) and not tuple(lhs_batch) and not tuple(rhs_batch)
                  and preferred_element_type in (None, jnp.float32) and not kwargs)
  if plain_matmul and applies(lhs, rhs):
    kernels.load_dense()
    return kernels.dense(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type, **kwargs)


def _blas_products(query, key, value, bias, dtype, dropout: Callable | None):
  """Scores and context through the BLAS kernel; bias, softmax and dropout as XLA ops."""
  logits = kernels.attention_scores(query, key)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
  if dropout is not None:
    weights = dropout(weights)
  return kernels.attention_context(weights, value)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None, *,
              dtype, dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """`t5.dot_product_attention` through the CPU kernels where they apply.

  Without dropout, scores, bias, softmax and context run in one fused kernel call per
  layer (and one for the gradient); with dropout on the probabilities, the scores and the
  context are separate BLAS products around XLA's softmax and dropout.

  Args:
    query: [batch, q_length, heads, head_dim].
    key, value: [batch, kv_length, heads, head_dim].
    bias: [batch or 1, heads or 1, q_length, kv_length] or None.
    dtype: the activations' dtype.
    dropout: applied to the attention probabilities, or None.

  Returns:
    [batch, q_length, heads, head_dim].
  """
  if not applies(query, key, value):
    return t5.dot_product_attention(query, key, value, bias, dtype=dtype, dropout=dropout)
  kernels.load()
  if dropout is None:
    return kernels.attention(query, key, value, bias)
  return _blas_products(query, key, value, bias, dtype, dropout)


def blas_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None, *,
                   dtype, dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """Like `attention`, but always the separate BLAS products (never the fused kernel).

  Args and Returns: as `attention`.
  """
  if not applies(query, key, value):
    return t5.dot_product_attention(query, key, value, bias, dtype=dtype, dropout=dropout)
  kernels.load()
  return _blas_products(query, key, value, bias, dtype, dropout)
