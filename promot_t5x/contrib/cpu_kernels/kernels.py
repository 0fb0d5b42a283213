"""The CPU kernels: attention's batched products and the dense layers' products through BLAS.

XLA:CPU runs a batched matrix product (the attention scores `bqhd,bkhd->bhqk`
and the context `bhqk,bkhd->bqhd`, and their gradients) on one thread.
`native/gemm.cc` computes the same products as one single-threaded BLAS sgemm
(a private copy of numpy's bundled OpenBLAS, loaded with one thread, so numpy's
own keeps its threads) per (batch, head) matrix, reading q/k/v where they lie in
their [batch, length, heads, head_dim] buffers, and shares the matrices out over
XLA's own intra-op thread pool.

`attention_scores(q, k)` and `attention_context(probs, v)` are the two
products with their gradients (`jax.custom_vjp`; each backward product is
the same kernel with other transposes and strides). `attention(q, k, v,
bias)` is attention's whole inner part in one call per layer: for each
(batch, head) on XLA's pool, the scores, the bias, a vectorized softmax (a
polynomial exp) and the context, with the scores kept in the cache between
them (and one call for the gradient, which writes the bias's gradient only
where the bias is trained: not for a frozen model's relative positions in
prompt tuning).

The dense layers' products (projections, MLP, logits: forward, and both
gradients) go whole to oneMKL's threaded sgemm (`dense(x, kernel)`, the
`PromotDense` call of `native/gemm.cc`, which makes every MKL call from one
dedicated thread). MKL comes from the `mkl` wheel (the `cpu` extra, x86-64
Linux), run on oneTBB's threads (see `_mkl` for why not OpenMP's).

The numerics differ from XLA's (other summation orders, the polynomial exp):
results agree to float32 rounding, not bit for bit. What the kernels buy, measured,
is in docs/cpu_kernels.md. The model uses them only through the injected functions
of `promot_t5x.contrib.cpu_kernels` (gin/options/cpu_kernels.gin).

The kernels are compiled with the machine's C++ compiler (`$CXX`, else g++)
against JAX's FFI headers on first use, once per source and JAX version, into
`$PROMOT_T5X_CACHE/native` (default `~/.cache/promot_t5x/native`). Each new
build (and each new private OpenBLAS copy) removes the cache's files of its
kind that are older than `STALE_DAYS`: builds of other sources or JAX
versions would otherwise pile up.
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
ATTENTION_FWD_TARGET = 'promot_attention_fwd'
ATTENTION_BWD_TARGET = 'promot_attention_bwd'
DENSE_TARGET = 'promot_dense_gemm'
SOURCE = pathlib.Path(__file__).resolve().parent / 'native' / 'gemm.cc'
STALE_DAYS = 30

_lock = threading.Lock()
# 'lib' (the built kernels), 'blas' (attention's OpenBLAS), 'mkl' once loaded;
# 'error' / 'dense_error' when the attention / dense kernel could not load.
_state: dict[str, object] = {}


def cache_dir() -> pathlib.Path:
  root = os.environ.get('PROMOT_T5X_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'promot_t5x')
  return pathlib.Path(root) / 'native'


def _prune(directory: pathlib.Path, pattern: str, keep: pathlib.Path,
           max_age_days: float = STALE_DAYS) -> list[pathlib.Path]:
  """Removes `directory`'s files matching `pattern`, other than `keep`, last modified more
  than `max_age_days` ago; returns them. (A process that still has one loaded keeps its
  mapping: unlinking does not unmap.)"""
  import time

  cutoff = time.time() - max_age_days * 86400
  removed = []
  for path in directory.glob(pattern):
    try:
      if path != keep and path.stat().st_mtime < cutoff:
        path.unlink()
        removed.append(path)
    except FileNotFoundError:
      pass  # another process pruned it first
  return removed


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
                       'install g++ or set CXX, or drop gin/options/cpu_kernels.gin (XLA\'s products)')
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
  os.close(fd)
  cmd = [compiler, '-O3', '-fno-trapping-math', '-fno-math-errno', '-std=c++17', '-shared',
         '-fPIC', '-w', f'-I{include}', str(SOURCE), '-o', tmp]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f'building {SOURCE.name} failed: {" ".join(cmd)}\n{result.stderr[-2000:]}')
  os.replace(tmp, out)  # atomic: processes building at once each write their own file
  _prune(out.parent, 'promot_gemm-*.so', out)
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
                       'drop gin/options/cpu_kernels.gin (XLA\'s products)')
  source = pathlib.Path(found[0])
  stat = source.stat()
  copy = cache_dir() / f'{source.stem}-{stat.st_size}-{int(stat.st_mtime)}-private.so'
  if not copy.exists():
    copy.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=copy.parent)
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, copy)
    _prune(copy.parent, '*-private.so', copy)
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


def _library() -> ctypes.CDLL:
  """The built kernels' library (built once per source); call with `_lock` held."""
  if 'lib' not in _state:
    _state['lib'] = ctypes.CDLL(str(_build()))
  return _state['lib']


def _register(key: str, open_blas, sgemm: str, setter: str,
              handlers: tuple[tuple[str, str], ...]) -> None:
  """Once per process: builds the kernels, opens a BLAS (`open_blas()`), binds its `sgemm`
  through the library's `setter`, registers each (FFI target, handler) of `handlers`;
  `_state[key]` = BLAS."""
  with _lock:
    if key in _state:
      return
    lib = _library()
    blas = open_blas()
    bind = getattr(lib, setter)
    bind.argtypes = [ctypes.c_void_p]
    bind(ctypes.cast(getattr(blas, sgemm), ctypes.c_void_p))
    for target, handler in handlers:
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, handler)),
                                  platform='cpu')
    _state[key] = blas


def load() -> None:
  """Builds (if needed) and registers the kernel; raises RuntimeError saying why it cannot."""
  _register('blas', _openblas, 'scipy_cblas_sgemm64_', 'promot_set_blas',
            ((TARGET, 'PromotGemm'), (ATTENTION_FWD_TARGET, 'PromotAttentionFwd'),
             (ATTENTION_BWD_TARGET, 'PromotAttentionBwd')))


def _loads(done: str, error: str, load_fn, what: str) -> bool:
  """Whether `load_fn` succeeds here (tried once; why not is logged once)."""
  if done in _state:
    return True
  if error not in _state:
    try:
      load_fn()
      return True
    except (OSError, RuntimeError, AttributeError) as e:
      _state[error] = str(e)
      logging.warning('%s unavailable, using XLA\'s products: %s', what, e)
  return False


def available() -> bool:
  """Whether the attention kernel loads here (tried once; the reason is logged)."""
  return _loads('blas', 'error', load, 'attention through BLAS')


def _installed_file(distribution: str, prefix: str) -> pathlib.Path:
  """The file of an installed wheel whose name starts with `prefix` (e.g. libmkl_rt.so)."""
  import importlib.metadata

  try:
    files = importlib.metadata.files(distribution) or []
  except importlib.metadata.PackageNotFoundError:
    files = []
  found = sorted(pathlib.Path(f.locate()).resolve() for f in files if f.name.startswith(prefix))
  if not found:
    raise RuntimeError(f'{prefix}* not found: the {distribution!r} wheel is not installed '
                       '(pip install "promot-t5x[cpu]" installs oneMKL on x86-64 Linux); or drop '
                       'gin/options/cpu_kernels.gin (XLA\'s products)')
  return found[0]


MKL_THREADING_TBB = 4  # mkl_service.h


def _mkl() -> ctypes.CDLL:
  """oneMKL's runtime library, threaded with oneTBB.

  Not with OpenMP: MKL's OpenMP layer looks its OpenMP functions up in the
  process's global scope, and where torch (or anything else loaded with GNU
  OpenMP global) came first, it finds libgomp's, under which every MKL thread
  believes it is thread 0: whole row blocks of a product were left unwritten
  (tests/test_mkl_dense.py). oneTBB shares no symbols with OpenMP runtimes.
  The TBB library is loaded first, by path (MKL's own lookup by name then
  finds this copy). TBB runs as many threads as the CPUs this process may use
  (its affinity mask, as XLA:CPU sizes its pool; `taskset` narrows both);
  MKL_NUM_THREADS does not apply on this layer.
  """
  ctypes.CDLL(str(_installed_file('tbb', 'libtbb.so.12')), mode=ctypes.RTLD_GLOBAL)
  mkl = ctypes.CDLL(str(_installed_file('mkl', 'libmkl_rt.so')), mode=ctypes.RTLD_LOCAL)
  mkl.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
  layer = mkl.MKL_Set_Threading_Layer(MKL_THREADING_TBB)
  if layer != MKL_THREADING_TBB:
    raise RuntimeError(f'oneMKL did not take its TBB threading layer (it reports layer '
                       f'{layer}); drop gin/options/cpu_kernels.gin (XLA\'s products)')
  return mkl


def load_dense() -> None:
  """Builds (if needed) and registers the dense kernel on oneMKL; raises RuntimeError why not."""
  _register('mkl', _mkl, 'cblas_sgemm_64', 'promot_set_dense_blas',
            ((DENSE_TARGET, 'PromotDense'),))


def dense_available() -> bool:
  """Whether the dense kernel loads here (tried once; the reason is logged)."""
  return _loads('mkl', 'dense_error', load_dense, 'dense layers through oneMKL')


def dense_product(a, b, *, trans_a=False, trans_b=False):
  """op(a) @ op(b) for float32 matrices (op: transposed or not), one threaded MKL sgemm."""
  load_dense()
  m, k = a.shape[::-1] if trans_a else a.shape
  k2, n = b.shape[::-1] if trans_b else b.shape
  if k != k2:
    raise ValueError(f'dense product: inner dimensions differ, {a.shape} and {b.shape} '
                     f'(trans_a={trans_a}, trans_b={trans_b})')
  i64 = np.int64
  return jax.ffi.ffi_call(DENSE_TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32),
                          vmap_method='sequential')(
      a, b, m=i64(m), n=i64(n), k=i64(k), trans_a=bool(trans_a), trans_b=bool(trans_b))


@jax.custom_vjp
def _dense(x, kernel):
  return dense_product(x, kernel)


_dense.defvjp(lambda x, kernel: (dense_product(x, kernel), (x, kernel)),
              lambda res, g: (dense_product(g, res[1], trans_b=True),
                              dense_product(res[0], g, trans_a=True)))


def dense(x, kernel):
  """`jnp.dot(x, kernel)` for float32 x [m, k] and kernel [k, n], through oneMKL (both
  gradients too)."""
  for a in (x, kernel):
    if a.ndim != 2 or a.dtype != jnp.float32:
      raise ValueError(f'dense: float32 matrices expected, got {a.dtype}{a.shape}')
  if x.shape[1] != kernel.shape[0]:
    raise ValueError(f'dense: shapes {x.shape} and {kernel.shape} do not line up')
  return _dense(x, kernel)


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


def _attention_call(q, k, v, bias):
  """(out, probabilities) of the fused forward kernel; `bias` [bb, hb, lq, lk] or None."""
  load()
  b, lq, h, d = q.shape
  lk = k.shape[1]
  i64 = np.int64
  if bias is None:
    bias, stride_b, stride_h = jnp.zeros((0,), jnp.float32), 0, 0
  else:
    bb, hb = bias.shape[:2]
    stride_b = hb * lq * lk if bb != 1 else 0
    stride_h = lq * lk if hb != 1 else 0
  out_types = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
               jax.ShapeDtypeStruct((b, h, lq, lk), jnp.float32))
  return jax.ffi.ffi_call(ATTENTION_FWD_TARGET, out_types, vmap_method='sequential')(
      q, k, v, bias, b=i64(b), lq=i64(lq), lk=i64(lk), h=i64(h), d=i64(d),
      bias_b=i64(stride_b), bias_h=i64(stride_h), has_bias=bool(bias.size))


def _attention_grads(q, k, v, probs, g, with_ds: bool):
  """(d_q, d_k, d_v, d_scores or None) of the fused backward kernel."""
  b, lq, h, d = q.shape
  lk = k.shape[1]
  i64 = np.int64
  ds_shape = (b, h, lq, lk) if with_ds else (0,)
  out_types = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
               jax.ShapeDtypeStruct(k.shape, jnp.float32),
               jax.ShapeDtypeStruct(v.shape, jnp.float32),
               jax.ShapeDtypeStruct(ds_shape, jnp.float32))
  dq, dk, dv, ds = jax.ffi.ffi_call(ATTENTION_BWD_TARGET, out_types, vmap_method='sequential')(
      q, k, v, probs, g, b=i64(b), lq=i64(lq), lk=i64(lk), h=i64(h), d=i64(d),
      with_ds=bool(with_ds))
  return dq, dk, dv, (ds if with_ds else None)


def _cotangent(g, like):
  from jax.custom_derivatives import SymbolicZero

  return jnp.zeros(like.shape, like.dtype) if isinstance(g, SymbolicZero) else g


@jax.custom_vjp
def _attention_biased(q, k, v, bias):
  return _attention_call(q, k, v, bias)[0]


def _attention_biased_fwd(q, k, v, bias):
  # symbolic_zeros: each primal says whether it is `perturbed` (has a gradient to
  # compute); the bias of a frozen model (prompt tuning) has none, and then the
  # backward kernel does not write the scores' gradient at all.
  out, probs = _attention_call(q.value, k.value, v.value, bias.value)
  # The bias's shape rides along as an empty array's (a pytree leaf, not a Python value);
  # None when the bias needs no gradient.
  bias_shape = jnp.zeros(bias.value.shape[:2] + (0,), jnp.float32) if bias.perturbed else None
  return out, (q.value, k.value, v.value, probs, bias_shape)


def _attention_biased_bwd(res, g):
  q, k, v, probs, bias_shape = res
  g = _cotangent(g, q)
  dq, dk, dv, ds = _attention_grads(q, k, v, probs, g, with_ds=bias_shape is not None)
  if ds is None:
    return dq, dk, dv, None
  axes = tuple(i for i in (0, 1) if bias_shape.shape[i] == 1 and ds.shape[i] != 1)
  return dq, dk, dv, jnp.sum(ds, axis=axes, keepdims=True)


_attention_biased.defvjp(_attention_biased_fwd, _attention_biased_bwd, symbolic_zeros=True)


@jax.custom_vjp
def _attention_plain(q, k, v):
  return _attention_call(q, k, v, None)[0]


def _attention_plain_fwd(q, k, v):
  out, probs = _attention_call(q, k, v, None)
  return out, (q, k, v, probs)


def _attention_plain_bwd(res, g):
  q, k, v, probs = res
  return _attention_grads(q, k, v, probs, g, with_ds=False)[:3]


_attention_plain.defvjp(_attention_plain_fwd, _attention_plain_bwd)


def attention(q, k, v, bias=None):
  """softmax(q k^T + bias) v per (batch, head), whole in one kernel (and its gradient).

  q [batch, q_length, heads, head_dim], k and v [batch, k_length, heads, head_dim];
  `bias` (optional) [batch or 1, heads or 1, q_length, k_length], added to the scores
  before the softmax (relative positions, masks: about -1e10 where a key is hidden).
  Returns [batch, q_length, heads, head_dim]: the same function as
  `attention_context(softmax(attention_scores(q, k) + bias), v)` in float32, and its
  gradients for q, k, v and the bias (summed over the dimensions it broadcasts).
  No dropout on the probabilities: a model with active dropout uses the separate
  products.
  """
  _check('attention', q, k, 2, 2)
  _check('attention', k, v, 1, 1)
  if q.shape[3] != k.shape[3] or k.shape != v.shape:
    raise ValueError(f'attention: q {q.shape}, k {k.shape} and v {v.shape} do not line up')
  if bias is None:
    return _attention_plain(q, k, v)
  b, lq, h, _ = q.shape
  lk = k.shape[1]
  if (bias.ndim != 4 or bias.shape[2:] != (lq, lk) or bias.shape[0] not in (1, b)
      or bias.shape[1] not in (1, h)):
    raise ValueError(f'attention: bias {bias.shape} does not broadcast to {(b, h, lq, lk)}')
  return _attention_biased(q, k, v, bias.astype(jnp.float32))
