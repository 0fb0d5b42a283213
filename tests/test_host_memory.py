"""promot_t5x.host_memory: freed host buffers are reused, not re-faulted."""

import os
import subprocess
import sys

import pytest

from promot_t5x import host_memory

# Allocates, writes and frees a 256 MiB block five times (XLA:CPU does this
# with a step's temporaries) and prints the minor page faults of the last
# four. glibc's default serves such blocks with fresh mmaps (every page faults
# again); configured, the freed block is reused.
_PROBE = r'''
import ctypes, resource
from promot_t5x import host_memory
print(host_memory.configure())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 1 << 28

def cycle():
  ptr = libc.malloc(size)
  ctypes.memset(ptr, 1, size)
  libc.free(ptr)

cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _probe(setting):
  env = dict(os.environ, **{host_memory.ENV_VAR: setting})
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == 'True', int(out[1])


@pytest.mark.skipif(host_memory._glibc() is None, reason='glibc only')
def test_reuse_avoids_refaulting_freed_buffers():
  configured, faults = _probe('reuse')
  default_configured, default_faults = _probe('default')
  assert configured and not default_configured
  pages = 4 * (1 << 28) // 4096   # four 256 MiB blocks in 4 KiB pages
  assert default_faults > pages // 2, default_faults   # glibc's default: fresh mmaps
  assert faults < pages // 100, faults                 # the freed block, reused


def test_bad_setting_names_the_variable(monkeypatch):
  monkeypatch.setattr(host_memory, '_configured', None)
  monkeypatch.setenv(host_memory.ENV_VAR, 'fast')
  with pytest.raises(ValueError, match='PROMOT_T5X_MALLOC'):
    host_memory.configure()


# A ~0.1-0.5 s computation: dispatched asynchronously its result is not ready
# when the call returns; run inline it is.
_DISPATCH_PROBE = r'''
import sys
from promot_t5x import host_memory
print(host_memory.configure(inline_cpu_dispatch=sys.argv[1] == 'inline'))
import jax, jax.numpy as jnp
x = jnp.ones((2048, 2048), jnp.float32)
f = jax.jit(lambda a: jnp.tanh(a @ a @ a @ a).sum())
f(x).block_until_ready()
print(all(f(x).is_ready() for _ in range(3)))
'''


def _dispatch_probe(setting, dispatch):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **{host_memory.ENV_VAR: setting})
  out = subprocess.run([sys.executable, '-c', _DISPATCH_PROBE, dispatch], env=env,
                       capture_output=True, text=True, check=True).stdout.split()
  return out[0] == 'True', out[1] == 'True'


@pytest.mark.skipif(host_memory._glibc() is None, reason='glibc only')
def test_configured_cpu_computations_run_inline():
  # The reused heap keeps its peak; inline dispatch keeps one step's
  # temporaries alive at a time (module docstring).
  assert _dispatch_probe('reuse', 'inline') == (True, True)
  # Kept asynchronous on request (the miniature) and with glibc's defaults.
  assert _dispatch_probe('reuse', 'async') == (True, False)
  assert _dispatch_probe('default', 'inline') == (False, False)


def _configured_in_a_fresh_process(**env):
  base = {k: v for k, v in os.environ.items() if k not in (host_memory.ENV_VAR, 'JAX_PLATFORMS')}
  out = subprocess.run([sys.executable, '-c', 'from promot_t5x import host_memory; print(host_memory.configure())'],
                       env={**base, **env}, capture_output=True, text=True, check=True)
  return out.stdout.split()[-1] == 'True'


@pytest.mark.skipif(host_memory._glibc() is None, reason='glibc only')
def test_opt_in_and_cpu_only():
  # Off unless asked for: a process that never returns freed memory is the user's choice.
  assert not _configured_in_a_fresh_process(JAX_PLATFORMS='cpu')
  assert _configured_in_a_fresh_process(JAX_PLATFORMS='cpu', **{host_memory.ENV_VAR: 'reuse'})
  # Never where JAX will run on an accelerator.
  for platforms in ('tpu', 'cuda', 'cuda,cpu'):
    assert not _configured_in_a_fresh_process(JAX_PLATFORMS=platforms, **{host_memory.ENV_VAR: 'reuse'})
