"""Attention's batched products on XLA:CPU through BLAS, as an XLA FFI custom call.

XLA:CPU runs a batched matrix product (the attention scores `bqhd,bkhd->bhqk`
and the context `bhqk,bkhd->bqhd`, and their gradients) on one thread: on a
2-core machine the other core idles while it runs (bench/README.md, "One core
against two"). `native/gemm.cc` computes the same products as one single-
threaded BLAS sgemm (a private copy of numpy's bundled OpenBLAS, loaded with
one thread, so numpy's own keeps its threads) per (batch, head) matrix,
reading q/k/v where they lie in their [batch, length, heads, head_dim]
buffers, and shares the matrices out over XLA's own intra-op thread pool.
In the bench's train steps this took 7-19 % off the step
(bench/README.md, "Attention through BLAS").

`attention_scores(q, k)` and `attention_context(probs, v)` are the two
products with their gradients (`jax.custom_vjp`; each backward product is
the same kernel with other transposes and strides). The model picks them with
`T5Config.attention_kernel`; `use_blas(setting, dtype)` resolves 'auto'.

The kernel is compiled with the machine's C++ compiler (`$CXX`, else g++)
against JAX's FFI headers on first use, once per source and JAX version, into
`$PROMOT_T5X_CACHE/native` (default `~/.cache/promot_t5x/native`).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

TARGET = 'promot_attention_gemm'
SOURCE = pathlib.Path(__file__).resolve().parent / 'native' / 'gemm.cc'
KERNELS = ('auto', 'xla', 'blas')

_lock = threading.Lock()
_state: dict[str, object] = {}  # 'lib', 'blas' once loaded; 'error' if loading failed


def cache_dir() -> pathlib.Path:
  root = os.environ.get('PROMOT_T5X_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'promot_t5x')
  return pathlib.Path(root) / 'native'


def _build() -> pathlib.Path:
  include = jax.ffi.include_dir()
  key = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode()
                       + include.encode()).hexdigest()[:16]
  out = cache_dir() / f'promot_gemm-{key}.so'
  if out.exists():
    return out
  compiler = os.environ.get('CXX') or 'g++'
  if shutil.which(compiler) is None:
    raise RuntimeError(f'no C++ compiler {compiler!r} on PATH to build {SOURCE.name}; '
                       'install g++ or set CXX, or set T5Config.attention_kernel="xla"')
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
  os.close(fd)
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{include}',
         str(SOURCE), '-o', tmp]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f'building {SOURCE.name} failed: {" ".join(cmd)}\n{result.stderr[-2000:]}')
  os.replace(tmp, out)  # atomic: processes building at once each write their own file
  return out


def _openblas() -> ctypes.CDLL:
  """A private, single-threaded instance of numpy's bundled OpenBLAS.

  OpenBLAS's thread count is one setting per loaded library (its "local"
  setter is process-wide in pthread builds), so the kernel loads its own copy
  of the file, started with OPENBLAS_NUM_THREADS=1, and numpy's instance keeps
  its threads.
  """
  pattern = os.path.join(os.path.dirname(np.__file__) + '.libs', 'libscipy_openblas64_*.so')
  found = sorted(glob.glob(pattern))
  if not found:
    raise RuntimeError(f'numpy\'s bundled OpenBLAS not found ({pattern}); '
                       'set T5Config.attention_kernel="xla"')
  source = pathlib.Path(found[0])
  stat = source.stat()
  copy = cache_dir() / f'{source.stem}-{stat.st_size}-{int(stat.st_mtime)}-private.so'
  if not copy.exists():
    copy.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=copy.parent)
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, copy)
  saved = os.environ.get('OPENBLAS_NUM_THREADS')
  os.environ['OPENBLAS_NUM_THREADS'] = '1'  # read by the library as it loads
  try:
    blas = ctypes.CDLL(str(copy), mode=ctypes.RTLD_LOCAL)
  finally:
    if saved is None:
      del os.environ['OPENBLAS_NUM_THREADS']
    else:
      os.environ['OPENBLAS_NUM_THREADS'] = saved
  blas.scipy_openblas_set_num_threads64_.argtypes = [ctypes.c_int]
  blas.scipy_openblas_set_num_threads64_(1)
  return blas


def load() -> None:
  """Builds (if needed) and registers the kernel; raises RuntimeError saying why it cannot."""
  with _lock:
    if 'lib' in _state:
      return
    lib = ctypes.CDLL(str(_build()))
    blas = _openblas()
    lib.promot_set_blas.argtypes = [ctypes.c_void_p]
    lib.promot_set_blas(ctypes.cast(blas.scipy_cblas_sgemm64_, ctypes.c_void_p))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PromotGemm), platform='cpu')
    _state.update(lib=lib, blas=blas)


def available() -> bool:
  """Whether the kernel loads here (tried once; the reason is logged)."""
  if 'lib' in _state:
    return True
  if 'error' not in _state:
    try:
      load()
      return True
    except (OSError, RuntimeError, AttributeError) as e:
      _state['error'] = str(e)
      logging.warning('attention through BLAS unavailable, using XLA\'s products: %s', e)
  return False


def use_blas(setting: str, dtype) -> bool:
  """Resolves `T5Config.attention_kernel` while tracing.

  'xla': never. 'blas': always (float32 only; raises if the kernel cannot be
  built). 'auto': when the computation is float32 on the CPU backend and not
  partitioned (no mesh, or a mesh of one device), and the kernel builds here.
  A custom call is opaque to XLA's SPMD partitioner, which would replicate
  its operands on every device of a larger mesh.
  """
  if setting not in KERNELS:
    raise ValueError(f'T5Config.attention_kernel={setting!r}; use one of {KERNELS}.')
  if setting == 'xla':
    return False
  float32 = jnp.dtype(dtype) == jnp.float32
  if setting == 'blas':
    if not float32:
      raise ValueError(f'T5Config.attention_kernel="blas" computes in float32; the model\'s '
                       f'dtype is {jnp.dtype(dtype).name}: use "auto" or "xla".')
    load()
    return True
  mesh = jax.sharding.get_abstract_mesh()
  return (float32 and jax.default_backend() == 'cpu' and (mesh.empty or mesh.size == 1)
          and available())


def _call(a, b, *, batch, m, n, k, trans_a, trans_b, lda, ldb, ldc, a_strides, b_strides,
          c_strides, out_shape, min_rows=64):
  """C[i, j] = op(A[i, j]) @ op(B[i, j]) over a batch grid `batch` = (nb0, nb1), row-major."""
  load()
  i64 = np.int64
  # Under vmap: one call per mapped element (correct; the kernel's own grid is the batch).
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method='sequential')(
      a, b, nb0=i64(batch[0]), nb1=i64(batch[1]), m=i64(m), n=i64(n), k=i64(k),
      trans_a=bool(trans_a), trans_b=bool(trans_b), lda=i64(lda), ldb=i64(ldb), ldc=i64(ldc),
      a_s0=i64(a_strides[0]), a_s1=i64(a_strides[1]), b_s0=i64(b_strides[0]),
      b_s1=i64(b_strides[1]), c_s0=i64(c_strides[0]), c_s1=i64(c_strides[1]),
      min_rows=i64(min_rows))


def _per_head(x):
  """A [batch, length, heads, dim] array as batch x heads matrices [length, dim]:
  (leading dimension, batch stride, head stride)."""
  _, length, heads, dim = x.shape
  return heads * dim, length * heads * dim, dim


def _rows_dot_rows(x, y):
  """[b, p, h, d] x [b, r, h, d] -> [b, h, p, r]: x_bh @ y_bh^T."""
  b, p, h, d = x.shape
  r = y.shape[1]
  ldx, x0, x1 = _per_head(x)
  ldy, y0, y1 = _per_head(y)
  return _call(x, y, batch=(b, h), m=p, n=r, k=d, trans_a=False, trans_b=True, lda=ldx,
               ldb=ldy, ldc=r, a_strides=(x0, x1), b_strides=(y0, y1),
               c_strides=(h * p * r, p * r), out_shape=(b, h, p, r))


def _probs_dot_rows(w, y, transpose_w: bool):
  """[b, h, p, r] (per head, or its transpose) x [b, ., h, d] -> [b, p or r, h, d]."""
  b, h, p, r = w.shape
  m, k = (r, p) if transpose_w else (p, r)
  d = y.shape[3]
  ldy, y0, y1 = _per_head(y)
  return _call(w, y, batch=(b, h), m=m, n=d, k=k, trans_a=transpose_w, trans_b=False,
               lda=r, ldb=ldy, ldc=h * d, a_strides=(h * p * r, p * r), b_strides=(y0, y1),
               c_strides=(m * h * d, d), out_shape=(b, m, h, d))


def _check(name, x, y, x_axis, y_axis):
  for a in (x, y):
    if a.ndim != 4 or a.dtype != jnp.float32:
      raise ValueError(f'{name}: float32 operands of rank 4 expected, got {a.dtype}{a.shape}')
  if x.shape[0] != y.shape[0] or x.shape[x_axis] != y.shape[y_axis]:
    raise ValueError(f'{name}: operand shapes {x.shape} and {y.shape} do not match')


def _operands_as_residuals(grads):
  """Decorator: a two-operand product as a `jax.custom_vjp` that keeps its operands for
  the backward pass, where `grads(x, y, g)` gives both operands' cotangents."""
  def wrap(impl):
    op = jax.custom_vjp(impl)
    op.defvjp(lambda x, y: (impl(x, y), (x, y)), lambda res, g: grads(*res, g))
    return op
  return wrap


@_operands_as_residuals(lambda q, k, g: (_probs_dot_rows(g, k, transpose_w=False),
                                         _probs_dot_rows(g, q, transpose_w=True)))
def attention_scores(q, k):
  """`jnp.einsum('bqhd,bkhd->bhqk', q, k)` in float32."""
  _check('attention_scores', q, k, 2, 2)
  if q.shape[3] != k.shape[3]:
    raise ValueError(f'attention_scores: head dims differ, {q.shape} and {k.shape}')
  return _rows_dot_rows(q, k)


@_operands_as_residuals(lambda probs, v, g: (_rows_dot_rows(g, v),
                                             _probs_dot_rows(probs, g, transpose_w=True)))
def attention_context(probs, v):
  """`jnp.einsum('bhqk,bkhd->bqhd', probs, v)` in float32."""
  _check('attention_context', probs, v, 1, 2)
  if probs.shape[3] != v.shape[1]:
    raise ValueError(f'attention_context: key lengths differ, {probs.shape} and {v.shape}')
  return _probs_dot_rows(probs, v, transpose_w=False)
