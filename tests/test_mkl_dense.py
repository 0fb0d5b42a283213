"""The dense layers' products through oneMKL (promot_t5x.contrib.cpu_kernels) against XLA's.

Skipped, with the reason, where the `cpu` extra (the mkl and tbb wheels) or a C++ compiler
is missing.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import partitioning
from promot_t5x.models import t5


def _missing() -> str | None:
  for wheel in ('mkl', 'tbb'):
    try:
      importlib.metadata.distribution(wheel)
    except importlib.metadata.PackageNotFoundError:
      return f'the {wheel!r} wheel is not installed (pip install "promot-t5x[cpu]")'
  compiler = os.environ.get('CXX') or 'g++'
  if shutil.which(compiler) is None:
    return f'no C++ compiler {compiler!r} on PATH (install g++)'
  return None


if _missing():
  pytest.skip(f'the optional oneMKL dense kernel cannot run here: {_missing()}', allow_module_level=True)

from test_cpu_kernels import _lowered_text, _same_loss_and_gradients  # noqa: E402  same model

from promot_t5x.contrib import cpu_kernels as option  # noqa: E402
from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels  # noqa: E402


def _close(got, want, rtol=1e-5):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


def _xla_loss(x, w, c):
  return jnp.sum(jnp.tanh(jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)) * c)


def _mkl_loss(x, w, c):
  return jnp.sum(jnp.tanh(cpu_kernels.dense(x, w)) * c)


@pytest.mark.parametrize('m, k, n', [
    (1, 7, 5),       # one row (a decoding step)
    (300, 70, 45),   # shapes no kernel blocks evenly
    (64, 512, 3),    # long inner dimension, narrow output
    (5, 3, 700),     # short inner dimension, wide output (the logits' shape)
])
def test_product_and_both_gradients_equal_float64_numpy(m, k, n):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((m, k), dtype=np.float32)
  w = rng.standard_normal((k, n), dtype=np.float32)
  c = rng.standard_normal((m, n), dtype=np.float32)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  _close(jax.jit(cpu_kernels.dense)(x, w), x64 @ w64)
  # d/dx sum(tanh(xw) c) = (c (1 - tanh^2)) w^T; d/dw = x^T (c (1 - tanh^2)).
  g = c * (1.0 - np.tanh(x64 @ w64) ** 2)
  dx, dw = jax.jit(jax.grad(_mkl_loss, argnums=(0, 1)))(x, w, c)
  _close(dx, g @ w64.T, rtol=1e-4)
  _close(dw, x64.T @ g, rtol=1e-4)
  assert np.abs(np.asarray(dw)).max() > 0


def test_vmapped_product_and_gradients_equal_xla():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 20, 8), dtype=np.float32)
  w = rng.standard_normal((3, 8, 6), dtype=np.float32)
  c = rng.standard_normal((3, 20, 6), dtype=np.float32)
  _close(jax.jit(jax.vmap(cpu_kernels.dense))(x, w),
         jax.vmap(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))(x, w))
  for got, want in zip(jax.grad(lambda *a: jnp.sum(jax.vmap(_mkl_loss)(*a)), (0, 1))(x, w, c),
                       jax.grad(lambda *a: jnp.sum(jax.vmap(_xla_loss)(*a)), (0, 1))(x, w, c)):
    _close(got, want, rtol=1e-4)


def test_the_same_product_twice_is_bitwise_the_same():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2048, 512), dtype=np.float32)
  w = rng.standard_normal((512, 512), dtype=np.float32)
  f = jax.jit(cpu_kernels.dense)
  first = np.asarray(f(x, w))
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(f(x, w)), first)


def test_operands_are_checked():
  x = jnp.zeros((4, 3), jnp.float32)
  with pytest.raises(ValueError, match='do not line up'):
    cpu_kernels.dense(x, jnp.zeros((4, 3), jnp.float32))
  with pytest.raises(ValueError, match='float32 matrices expected'):
    cpu_kernels.dense(x.astype(jnp.bfloat16), jnp.zeros((3, 2), jnp.float32))
  with pytest.raises(ValueError, match='float32 matrices expected'):
    cpu_kernels.dense(jnp.zeros((2, 4, 3), jnp.float32), jnp.zeros((3, 2), jnp.float32))


def _model(dense_kernel, **kw):
  return t5.Transformer(t5.T5Config(
      vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
      num_decoder_layers=2, relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      dot_general={'xla': None, 'mkl': option.dot_general}[dense_kernel], **kw))


def test_the_model_computes_the_same_loss_and_gradients_with_either_kernel():
  got_grads = _same_loss_and_gradients(_model('xla'), _model('mkl'))
  for layer in (got_grads['decoder']['logits_dense'],
                got_grads['encoder']['layers_1']['mlp']['wo'],
                got_grads['decoder']['layers_0']['encoder_decoder_attention']['key']):
    assert np.abs(np.asarray(layer['kernel'])).max() > 0


def test_mkl_runs_only_where_the_program_is_float32_on_one_cpu_device():
  assert jax.default_backend() == 'cpu'
  text = _lowered_text(_model('mkl'))
  # Every dense layer, forward and both gradients: 2 encoder layers x 7 (query, key, value,
  # out, wi_0, wi_1, wo), 2 decoder layers x 11 (two attentions), the logits; three calls each.
  assert text.count(cpu_kernels.DENSE_TARGET) == 3 * (2 * 7 + 2 * 11 + 1)
  assert cpu_kernels.DENSE_TARGET in _lowered_text(
      _model('mkl'), partitioning.Partitioner(partitioning.make_mesh(1, 1, jax.devices()[:1])))
  assert cpu_kernels.DENSE_TARGET not in _lowered_text(
      _model('mkl'), partitioning.Partitioner(partitioning.make_mesh(2, 1, jax.devices()[:2])))
  # A bfloat16 model: only the logits, which T5 computes in float32.
  assert _lowered_text(_model('mkl', dtype='bfloat16')).count(cpu_kernels.DENSE_TARGET) == 3
  assert cpu_kernels.DENSE_TARGET not in _lowered_text(_model('xla'))


def test_other_products_fall_back_to_xla():
  x = jnp.ones((2, 3, 4), jnp.float32)
  w = jnp.ones((4, 5), jnp.float32)
  dims = (((2,), (0,)), ((), ()))
  text = jax.jit(lambda x, w: option.dot_general(x, w, dims)).lower(x, w).as_text()
  assert cpu_kernels.DENSE_TARGET not in text
  np.testing.assert_array_equal(option.dot_general(x, w, dims), jax.lax.dot_general(x, w, dims))


def _run(code, **env):
  out = subprocess.run([sys.executable, '-c', code], env={**os.environ, 'XLA_FLAGS': '', **env},
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return out


def test_without_the_mkl_wheel_the_chosen_option_says_how_to_install_it():
  # A machine without the wheel: its metadata is not found.
  code = (
      'import importlib.metadata as md\n'
      'real = md.files\n'
      'def files(name):\n'
      '  if name == "mkl":\n'
      '    raise md.PackageNotFoundError(name)\n'
      '  return real(name)\n'
      'md.files = files\n'
      'import jax, jax.numpy as jnp\n'
      'from promot_t5x.contrib import cpu_kernels\n'
      'x = jnp.ones((3, 4), jnp.float32)\n'
      'dims = (((1,), (0,)), ((), ()))\n'
      'try:\n'
      '  jax.jit(lambda x: cpu_kernels.dot_general(x, x.T, dims))(x)\n'
      'except RuntimeError as e:\n'
      '  print("ERROR:", e)\n')
  out = _run(code)
  assert "ERROR: libmkl_rt.so* not found: the 'mkl' wheel is not installed" in out.stdout
  assert 'promot-t5x[cpu]' in out.stdout and 'drop gin/options/cpu_kernels.gin' in out.stdout


def test_products_stay_right_with_torchs_gnu_openmp_loaded_first():
  # torch puts GNU OpenMP in the process's global scope; MKL's OpenMP layer then
  # ran every thread as thread 0 and left row blocks unwritten. On TBB it is right.
  pytest.importorskip('torch')
  code = (
      'import torch\n'
      'import numpy as np, jax\n'
      'from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels\n'
      'rng = np.random.default_rng(2)\n'
      'x = rng.standard_normal((2048, 512), dtype=np.float32)\n'
      'w = rng.standard_normal((512, 512), dtype=np.float32)\n'
      'want = x.astype(np.float64) @ w.astype(np.float64)\n'
      'f = jax.jit(cpu_kernels.dense)\n'
      'print("WRONG", sum(int((np.abs(np.asarray(f(x, w)) - want) > 1e-2).sum()) '
      'for _ in range(5)))\n'
      'print("TORCH", float((torch.ones(300, 200) @ torch.ones(200, 100)).sum()))\n')
  out = _run(code).stdout
  assert 'WRONG 0\n' in out, out
  assert 'TORCH 6000000.0' in out, out
