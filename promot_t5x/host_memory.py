"""Host-memory allocator settings that make XLA:CPU steps cheaper.

XLA:CPU allocates every step's temporary buffers anew (about 1.2 GB for the
bench's d_model 512 fine-tuning step). With glibc's default malloc, buffers
that large are served by fresh `mmap`s and handed back on free, so every step
touches ~300,000 new pages: the kernel zeroes each one on first touch, which
cost 0.8 s of system time per 3 s step on this 2-core machine
(bench/README.md, "Host allocator"). `configure()` tells glibc to keep freed
memory for reuse instead:

- `M_MMAP_MAX = 0`: large blocks come from the heap, not from `mmap`;
- `M_TRIM_THRESHOLD = -1` (the largest size): freed heap memory is never
  returned to the system, so the next step's blocks need no new pages;
- `M_ARENA_MAX = 1`: XLA's worker threads share one arena, so a buffer freed by
  one thread is reused by the next step's allocation on another.

Measured on the bench's train steps (`python bench/bench_jax.py train
--stage=...`): 0 minor page faults per step after the first (glibc's default:
~240,000-310,000) and ~0 s of system time (default 0.6-0.8 s per step).

The heap keeps its peak, so what sets the peak matters: with JAX's
asynchronous CPU dispatch, the next step starts allocating while the last
one's temporaries are still being released, the heap grows by a whole step's
temporaries each time that happens (at random steps), and glibc never gives
the memory back: peak RSS 3.7-4.7 GiB instead of 1.9 on the bench's stage 1,
with a slow, page-faulting step at each growth (bench/README.md, "Host
allocator"). `configure()` therefore also runs single-device CPU computations
inline (`jax_cpu_enable_async_dispatch=False`: a call returns when its result
and its temporaries are done), which keeps the heap at one step's peak:
1.9 GiB (stage 1), 2.1 (fine-tuning), 2.3 (stage 2), against 1.85 and 2.19
with glibc's defaults. It must run before JAX creates its CPU backend (the
promot-* commands call it first thing); `inline_cpu_dispatch=False` keeps
asynchronous dispatch (the miniature does: its steps take milliseconds, so
overlapping the host's work with them pays, and its heap is small).

Set `PROMOT_T5X_MALLOC=default` to keep glibc's defaults and JAX's dispatch.
`configure()` is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
  """Applies `SETTINGS` once per process; True if they are in effect.

  False where the C library is not glibc or `PROMOT_T5X_MALLOC=default`.
  Where they are in effect and `inline_cpu_dispatch`, JAX's single-device CPU
  computations also run inline (see the module docstring); call this before
  the first JAX computation. Later calls change nothing.
  """
  global _configured
  if _configured is not None:
    return _configured
  setting = os.environ.get(ENV_VAR, 'reuse').strip().lower()
  if setting not in ('reuse', 'default'):
    raise ValueError(f'{ENV_VAR}={setting!r}: use "reuse" (keep freed memory for the next '
                     'step, the default) or "default" (glibc\'s own settings)')
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
