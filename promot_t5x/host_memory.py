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

The price is memory: the heap keeps its peak and fragments, so peak resident
memory grew from 1.85 to 2.84-3.74 GiB (stage 1, two runs) and from 2.19
to 3.23 GiB (fine-tuning) on the bench model. Set `PROMOT_T5X_MALLOC=default` to keep
glibc's defaults. The promot-* commands call `configure()` at start-up; it is
a no-op where the C library is not glibc.
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


def configure() -> bool:
  """Applies `SETTINGS` once per process; True if they are in effect.

  False where the C library is not glibc or `PROMOT_T5X_MALLOC=default`.
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
  return _configured
