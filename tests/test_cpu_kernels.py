"""Attention through BLAS (promot_t5x.contrib.cpu_kernels: the batched products, the fused
kernel) against XLA's einsums and softmax, alone and injected into the model.

Skipped, with the reason, where the kernels cannot be built here (no C++ compiler).
"""

import os
import shutil
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import partitioning
from promot_t5x.contrib import cpu_kernels as option
from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels
from promot_t5x.models import t5

COMPILER = os.environ.get('CXX') or 'g++'
if shutil.which(COMPILER) is None:
  pytest.skip(f'no C++ compiler {COMPILER!r} on PATH: the optional CPU kernels cannot be built here '
              '(install g++ to test them)', allow_module_level=True)

HIGHEST = jax.lax.Precision.HIGHEST


def _einsum_attention(q, k, v):
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=HIGHEST)
  return jnp.einsum('bhqk,bkhd->bqhd', jnp.tanh(scores), v, precision=HIGHEST)


def _blas_attention(q, k, v):
  return cpu_kernels.attention_context(jnp.tanh(cpu_kernels.attention_scores(q, k)), v)


def _close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize('b, lq, lk, h, d', [
    (2, 5, 7, 3, 4),     # many small matrices: shared out whole
    (4, 16, 24, 2, 8),   # cross-attention-like: queries and keys of other lengths
    (1, 300, 260, 1, 16),  # one matrix: shared out as row blocks (of op(A) transposed too)
])
def test_products_and_their_gradients_equal_einsum(b, lq, lk, h, d):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((b, lq, h, d), dtype=np.float32)
  k = rng.standard_normal((b, lk, h, d), dtype=np.float32)
  v = rng.standard_normal((b, lk, h, d), dtype=np.float32)
  _close(jax.jit(cpu_kernels.attention_scores)(q, k),
         jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=HIGHEST))
  _close(jax.jit(_blas_attention)(q, k, v), _einsum_attention(q, k, v))
  g = rng.standard_normal((b, lq, h, d), dtype=np.float32)
  got = jax.jit(lambda *x: jax.vjp(_blas_attention, *x)[1](g))(q, k, v)
  want = jax.vjp(_einsum_attention, q, k, v)[1](g)
  for name, x, y in zip('qkv', got, want):
    assert not np.allclose(np.asarray(x), 0), name
    _close(x, y)


def test_vmapped_products_and_gradients_equal_einsum():
  rng = np.random.default_rng(2)
  q, k, v = (rng.standard_normal((3, 2, 5, 2, 4), dtype=np.float32) for _ in range(3))
  _close(jax.jit(jax.vmap(_blas_attention))(q, k, v), jax.vmap(_einsum_attention)(q, k, v))
  loss = lambda f: (lambda *x: jnp.sum(jax.vmap(f)(*x) ** 2))
  for got, want in zip(jax.grad(loss(_blas_attention), argnums=(0, 1, 2))(q, k, v),
                       jax.grad(loss(_einsum_attention), argnums=(0, 1, 2))(q, k, v)):
    _close(got, want)


def test_operands_are_checked():
  x = jnp.zeros((2, 3, 4, 5), jnp.float32)
  with pytest.raises(ValueError, match='head dims differ'):
    cpu_kernels.attention_scores(x, jnp.zeros((2, 3, 4, 6), jnp.float32))
  with pytest.raises(ValueError, match='float32 operands of rank 4'):
    cpu_kernels.attention_scores(x.astype(jnp.bfloat16), x)
  with pytest.raises(ValueError, match='key lengths differ'):
    cpu_kernels.attention_context(jnp.zeros((2, 4, 3, 3), jnp.float32),
                                  jnp.zeros((2, 5, 4, 5), jnp.float32))


def _xla_attention(q, k, v, bias):
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=HIGHEST)
  probs = jax.nn.softmax(scores if bias is None else scores + bias, axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v, precision=HIGHEST)


@pytest.mark.parametrize('b, lq, lk, h, d, bias_shape', [
    (2, 5, 7, 3, 4, 'full'),       # rows shorter than the kernel's 16 lanes
    (3, 37, 41, 2, 8, 'heads'),    # [1, h, q, k]: a position bias shared by the batch
    (2, 33, 20, 4, 8, 'batch'),    # [b, 1, q, k]: a mask shared by the heads
    (1, 48, 48, 1, 16, 'one'),     # [1, 1, q, k]; one unit of work
    (2, 6, 9, 2, 4, None),         # no bias
])
def test_fused_attention_and_its_gradients_equal_xla(b, lq, lk, h, d, bias_shape):
  rng = np.random.default_rng(3)
  # Scores over a wide range (|s| up to ~60), so that exp sees large and tiny arguments.
  q = 3 * rng.standard_normal((b, lq, h, d), dtype=np.float32)
  k = rng.standard_normal((b, lk, h, d), dtype=np.float32)
  v = rng.standard_normal((b, lk, h, d), dtype=np.float32)
  bias = None
  if bias_shape is not None:
    shape = {'full': (b, h), 'heads': (1, h), 'batch': (b, 1), 'one': (1, 1)}[bias_shape]
    bias = rng.standard_normal(shape + (lq, lk), dtype=np.float32)
    bias[..., lk - 2:] = -1e10  # hidden keys, as the model's masks write them
    bias[..., 0, :] = -1e10     # a query that sees no key: uniform, as XLA's softmax
  _close(jax.jit(cpu_kernels.attention)(q, k, v, bias), _xla_attention(q, k, v, bias))
  g = rng.standard_normal((b, lq, h, d), dtype=np.float32)
  args = (q, k, v) if bias is None else (q, k, v, bias)
  got = jax.jit(lambda *x: jax.vjp(cpu_kernels.attention, *x)[1](g))(*args)
  want = jax.vjp(lambda *x: _xla_attention(*x, *([None] if bias is None else [])), *args)[1](g)
  for name, x, y in zip(('q', 'k', 'v', 'bias'), got, want):
    assert np.asarray(x).shape == np.asarray(y).shape, name
    assert not np.allclose(np.asarray(x), 0), name
    _close(x, y)


def test_fused_attention_computes_the_bias_gradient_only_when_it_is_needed():
  rng = np.random.default_rng(4)
  q, k, v = (rng.standard_normal((2, 6, 2, 4), dtype=np.float32) for _ in range(3))
  bias = rng.standard_normal((1, 2, 6, 6), dtype=np.float32)
  loss = lambda q, k, v, bias: jnp.sum(cpu_kernels.attention(q, k, v, bias) ** 2)
  frozen_bias = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v, bias).as_text()
  trained_bias = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(q, k, v, bias).as_text()
  for text in (frozen_bias, trained_bias):
    assert cpu_kernels.ATTENTION_BWD_TARGET in text
  assert 'with_ds = false' in frozen_bias and 'with_ds = true' not in frozen_bias
  assert 'with_ds = true' in trained_bias


def test_fused_attention_operands_are_checked():
  q = jnp.zeros((2, 3, 4, 5), jnp.float32)
  with pytest.raises(ValueError, match='do not line up'):
    cpu_kernels.attention(q, q, jnp.zeros((2, 3, 4, 6), jnp.float32))
  with pytest.raises(ValueError, match=r'does not broadcast to \(2, 4, 3, 3\)'):
    cpu_kernels.attention(q, q, q, jnp.zeros((2, 2, 3, 3), jnp.float32))
  with pytest.raises(ValueError, match='float32 operands of rank 4'):
    cpu_kernels.attention(q.astype(jnp.bfloat16), q, q)


# The attention functions the model can be given, by the names the tests use.
ATTENTION_FNS = {'xla': None, 'blas': option.blas_attention, 'fused': option.attention}


def _model(kernel, **kw):
  return t5.Transformer(t5.T5Config(
      vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
      num_decoder_layers=2, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, attention_fn=ATTENTION_FNS[kernel], **kw))


def _loss_fn(module):
  rng = np.random.default_rng(1)
  enc = rng.integers(1, 64, (3, 9)).astype(np.int32)
  enc[1, 6:] = 0  # padding: the mask bias reaches the products' inputs
  dec = rng.integers(1, 64, (3, 5)).astype(np.int32)

  def loss(params):
    logits = module.apply({'params': params}, enc, dec, dec, enable_dropout=False)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  return loss


def _same_loss_and_gradients(reference, module):
  """Asserts `module`'s loss (rtol 1e-5) and every gradient (`_close`) equal `reference`'s on
  the same parameters; returns `module`'s gradients."""
  params = nn.unbox(t5.init_params(reference, jax.random.PRNGKey(0)))
  want_loss, want_grads = jax.jit(jax.value_and_grad(_loss_fn(reference)))(params)
  got_loss, got_grads = jax.jit(jax.value_and_grad(_loss_fn(module)))(params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got_grads))
  for path, want in jax.tree_util.tree_leaves_with_path(want_grads):
    _close(flat_got[path], want)
  return got_grads


@pytest.mark.parametrize('kernel', ['blas', 'fused'])
def test_the_model_computes_the_same_loss_and_gradients_with_either_kernel(kernel):
  got_grads = _same_loss_and_gradients(_model('xla'), _model(kernel))
  # The gradients reach the attention parameters and the relative position
  # biases (trained: the fused kernel's bias gradient) through the kernels.
  for stack in ('encoder', 'decoder'):
    assert np.abs(np.asarray(got_grads[stack]['layers_0']['attention' if stack == 'encoder'
                                                          else 'self_attention']['query']['kernel'])).max() > 0
    assert np.abs(np.asarray(got_grads[stack]['relpos_bias']['rel_embedding'])).max() > 0


def _lowered_text(module, mesh=None):
  """The lowered gradient program of `module`'s loss (under `mesh`'s partitioner if given)."""
  params = nn.unbox(t5.init_params(module, jax.random.PRNGKey(0)))
  loss = jax.grad(_loss_fn(module))
  if mesh is None:
    return jax.jit(loss).lower(params).as_text()
  with mesh.activate():
    return jax.jit(loss).lower(params).as_text()


def test_the_kernels_run_only_where_the_program_is_float32_on_one_cpu_device():
  assert jax.default_backend() == 'cpu'
  # The option's attention: the fused kernel for full sequences; decoding's per-step
  # products stay XLA's either way.
  assert cpu_kernels.ATTENTION_FWD_TARGET in _lowered_text(_model('fused'))
  assert cpu_kernels.ATTENTION_FWD_TARGET not in _lowered_text(_model('blas'))
  assert cpu_kernels.TARGET in _lowered_text(_model('blas'))
  assert cpu_kernels.ATTENTION_FWD_TARGET in _lowered_text(
      _model('fused'), partitioning.Partitioner(partitioning.make_mesh(1, 1, jax.devices()[:1])))
  # Partitioned over a mesh of several devices: the products stay XLA's, so the
  # SPMD partitioner can split them; so do bfloat16 and the default model.
  for text in (_lowered_text(_model('fused'), partitioning.Partitioner(
                   partitioning.make_mesh(2, 1, jax.devices()[:2]))),
               _lowered_text(_model('fused', dtype='bfloat16')), _lowered_text(_model('xla'))):
    assert 'promot_attention' not in text


def test_attention_with_active_dropout_uses_the_separate_products():
  module = _model('fused', dropout_rate=0.1)
  params = nn.unbox(t5.init_params(module, jax.random.PRNGKey(0)))
  enc = np.ones((2, 6), np.int32)
  dec = np.ones((2, 4), np.int32)

  def loss(params, enable_dropout):
    logits = module.apply({'params': params}, enc, dec, dec, enable_dropout=enable_dropout,
                          rngs={'dropout': jax.random.PRNGKey(1)})
    return jnp.mean(logits)

  training = jax.jit(jax.grad(lambda p: loss(p, True))).lower(params).as_text()
  evaluating = jax.jit(jax.grad(lambda p: loss(p, False))).lower(params).as_text()
  assert cpu_kernels.TARGET in training and cpu_kernels.ATTENTION_FWD_TARGET not in training
  assert cpu_kernels.ATTENTION_FWD_TARGET in evaluating


def test_a_bad_function_is_named():
  with pytest.raises(ValueError, match='T5Config.attention_fn must be a function'):
    t5.T5Config(attention_fn='fused')


def test_without_a_compiler_the_chosen_option_says_why(tmp_path):
  code = (
      'import jax, jax.numpy as jnp\n'
      'from promot_t5x.contrib import cpu_kernels\n'
      'q = jnp.ones((1, 3, 2, 4), jnp.float32)\n'
      'assert cpu_kernels.attention(q.astype(jnp.bfloat16), q, q, None, dtype=jnp.bfloat16).shape == q.shape\n'
      'try:\n'
      '  jax.jit(lambda q: cpu_kernels.attention(q, q, q, None, dtype=jnp.float32))(q)\n'
      'except RuntimeError as e:\n'
      '  print("ERROR:", e)\n')
  env = dict(os.environ, PROMOT_T5X_CACHE=str(tmp_path), CXX='no-such-compiler-x')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert "ERROR: no C++ compiler 'no-such-compiler-x' on PATH" in out.stdout
  assert 'drop gin/options/cpu_kernels.gin' in out.stdout
  assert not list(tmp_path.rglob('*.so'))


def _aged(path, days):
  path.write_bytes(b'x')
  t = time.time() - days * 86400
  os.utime(path, (t, t))
  return path


def test_the_kernel_is_built_once_per_source_into_the_cache(tmp_path):
  # A new build removes builds of other sources / JAX versions older than STALE_DAYS.
  native = tmp_path / 'native'
  native.mkdir()
  stale = _aged(native / 'promot_gemm-0000000000000000.so', cpu_kernels.STALE_DAYS + 1)
  recent = _aged(native / 'promot_gemm-1111111111111111.so', 1)
  other = _aged(native / 'unrelated.so', 400)
  code = ('from promot_t5x.contrib.cpu_kernels import kernels\n'
          'print(kernels._build())\n')
  env = dict(os.environ, PROMOT_T5X_CACHE=str(tmp_path))
  runs = [subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=300) for _ in range(2)]
  assert all(r.returncode == 0 for r in runs), runs[0].stderr
  paths = {r.stdout.strip() for r in runs}
  assert len(paths) == 1
  built = set(native.glob('promot_gemm-*.so')) - {recent}
  assert [str(p) for p in built] == list(paths)
  assert not stale.exists() and recent.exists() and other.exists()


def test_pruning_keeps_the_file_in_use_and_recent_ones(tmp_path):
  keep = _aged(tmp_path / 'libscipy_openblas64_-a-1-2-private.so', 90)  # in use, however old
  old = _aged(tmp_path / 'libscipy_openblas64_-b-3-4-private.so', 90)
  new = _aged(tmp_path / 'libscipy_openblas64_-c-5-6-private.so', 2)
  removed = cpu_kernels._prune(tmp_path, '*-private.so', keep)
  assert removed == [old]
  assert keep.exists() and new.exists() and not old.exists()


def test_numpys_openblas_keeps_its_threads():
  # The kernel's BLAS is a private single-threaded instance; numpy's own (which
  # the commands' host-side numpy uses) keeps its thread count.
  code = (
      'import ctypes, glob, os\n'
      'import numpy as np\n'
      'lib = ctypes.CDLL(glob.glob(os.path.dirname(np.__file__) + ".libs/libscipy_openblas64_*.so")[0])\n'
      'get = lib.scipy_openblas_get_num_threads64_\n'
      'get.restype = ctypes.c_int\n'
      'lib.scipy_openblas_set_num_threads64_(2)\n'
      'from promot_t5x import host_memory\n'
      'host_memory.configure()\n'
      'import jax, jax.numpy as jnp\n'
      'from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels\n'
      'x = jnp.ones((1, 512, 1, 8), jnp.float32)\n'
      'for _ in range(5):\n'
      '  jax.block_until_ready(jax.jit(cpu_kernels.attention_scores)(x, x))\n'
      'mine = cpu_kernels._state["blas"].scipy_openblas_get_num_threads64_\n'
      'mine.restype = ctypes.c_int\n'
      'print("NUMPY", get(), "KERNEL", mine())\n')
  env = dict(os.environ, XLA_FLAGS='')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert 'NUMPY 2 KERNEL 1' in out.stdout, out.stdout
