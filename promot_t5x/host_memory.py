"""Host-memory allocator settings for XLA:CPU training steps (CPU only, opt-in).

XLA:CPU allocates every step's temporary buffers anew. With glibc's default
malloc, buffers that large are served by fresh `mmap`s and handed back on free,
so every step touches its temporaries' pages anew and the kernel zeroes each one
on first touch. `configure()` can tell glibc to keep freed memory for reuse
instead:

- `M_MMAP_MAX = 0`: large blocks come from the heap, not from `mmap`;
- `M_TRIM_THRESHOLD = -1` (the largest size): freed heap memory is never
  returned to the system, so the next step's blocks need no new pages;
- `M_ARENA_MAX = 1`: XLA's worker threads share one arena, so a buffer freed by
  one thread is reused by the next step's allocation on another.

The heap then keeps its peak, so what sets the peak matters: with JAX's
asynchronous CPU dispatch, the next step starts allocating while the last
one's temporaries are still being released, and the heap can grow by a whole
step's temporaries that glibc never gives back. `configure()` therefore also runs
single-device CPU computations inline (`jax_cpu_enable_async_dispatch=False`)
unless `inline_cpu_dispatch=False` (the miniature: its steps are short and
overlapping the host's work with them pays). bench/README.md has the measurements.

Because the process never returns freed memory, this is opt-in and for the CPU
backend only: set `PROMOT_T5X_MALLOC=reuse` (default `default`: glibc's own
settings and JAX's dispatch). It is skipped, with a log line, unless JAX will run
on the CPU (`JAX_PLATFORMS=cpu`, or no TPU/GPU plugin installed), and is a no-op
where the C library is not glibc. It must run before JAX creates its CPU backend
(the promot-* commands call it first thing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os

ENV_VAR = 'PROMOT_T5X_MALLOC'

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# M_TRIM_THRESHOLD = -1 reaches glibc as SIZE_MAX: never trim.
SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1))
# The same settings for a process started from outside (glibc reads this
# environment variable at start-up); the bench gives it to the torch peer.
GLIBC_TUNABLES = ('glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:'
                  'glibc.malloc.arena_max=1')

_configured: bool | None = None
# Modules whose presence means JAX may pick an accelerator (TPU, NVIDIA or AMD GPU).
_ACCELERATOR_PLUGINS = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                        'jax_rocm7_plugin')


def cpu_only() -> bool:
  """Whether JAX will run on the CPU backend, decided without starting JAX.

  Returns:
    True when JAX_PLATFORMS (or jax_platforms) names only 'cpu', or, with no platform
    named, when no TPU/GPU plugin is installed.
  """
  platforms = os.environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms == 'cpu'
  return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _glibc() -> ctypes.CDLL | None:
  name = ctypes.util.find_library('c')
  if not name:
    return None
  try:
    libc = ctypes.CDLL(name)
    if not (hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'mallopt')):
      return None  # not glibc (musl, macOS)
  except OSError:
    return None
  return libc


def configure(inline_cpu_dispatch: bool = True) -> bool:
  """Applies `SETTINGS` once per process where `PROMOT_T5X_MALLOC=reuse` asks for them.

  Args:
    inline_cpu_dispatch: where the settings take effect, also run JAX's
      single-device CPU computations inline (see the module docstring).

  Returns:
    True if the settings are in effect; False by default, where JAX will not run on
    the CPU, and where the C library is not glibc. Call this before the first JAX
    computation; later calls change nothing.

  Raises:
    ValueError: PROMOT_T5X_MALLOC is neither 'reuse' nor 'default'.
  """
  global _configured
  if _configured is not None:
    return _configured
  setting = os.environ.get(ENV_VAR, 'default').strip().lower()
  if setting not in ('reuse', 'default'):
    raise ValueError(f'{ENV_VAR}={setting!r}: use "reuse" (CPU only: keep freed memory for the '
                     'next step) or "default" (glibc\'s own settings, the default)')
  if setting == 'reuse' and not cpu_only():
    logging.info('%s=reuse ignored: JAX may run on a TPU or GPU here (set JAX_PLATFORMS=cpu for '
                 'a CPU run).', ENV_VAR)
    setting = 'default'
  libc = _glibc() if setting == 'reuse' else None
  if libc is None:
    _configured = False
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  _configured = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
  if _configured and inline_cpu_dispatch:
    import jax

    jax.config.update('jax_cpu_enable_async_dispatch', False)
  return _configured
