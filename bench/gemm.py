r"""The train step's weight matmuls alone: ours against torch (the peer), in one process.

  python bench/gemm.py [--rounds=3] [--config=JSON]

For every distinct shape of `common.dense_gemms` (the bench model's
projections, MLP and logits, for all three stages) and each of its passes,
times the matmul as each side's model computes it, in its own weight layout:

  pass   ours: `Dense`, kernel [in, out]     peer: `nn.Linear`, weight [out, in]
  fwd    x @ W                               F.linear(x, W)   (x @ W^T)
  dx     dy @ W^T                            dy @ W
  dw     x^T @ dy                            dy^T @ x

jitted products as our `Dense` runs them (oneMKL's sgemm through
`cpu_kernels.dense_product` (the optional kernels' dense product) where it loads,
else `jnp.dot` on XLA:CPU) against torch's, call by call in one process (this
machine's speed drifts over minutes; a ratio taken side by side holds), the
median of `--calls` calls per round and the median over rounds. Both sides
get the same two threads and our malloc settings. From the rates it sums, per
stage, the seconds these matmuls take at each side's rate: how much of the
gap between the two train steps the matmul kernels alone explain (run_all.py
reports it beside the step times). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import common  # noqa: E402

PASSES = ('fwd', 'dx', 'dw')


def shapes(cfg: common.BenchConfig) -> list[tuple[int, int, int]]:
  """Distinct (m, k, n) over the three stages, in first-seen order."""
  seen: dict[tuple[int, int, int], None] = {}
  for stage in common.STAGES:
    for g in common.dense_gemms(cfg, stage):
      seen.setdefault((g['m'], g['k'], g['n']), None)
  return list(seen)


def _median_seconds(fn, calls: int) -> float:
  fn()  # warm: compilation (ours), the other side's threads settle
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return common.median(times)


def _products(m: int, k: int, n: int, seed: int) -> dict[str, dict[str, Any]]:
  """{pass: {'ours': fn, 'peer': fn}}, each fn running one product to completion."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels

  rng = np.random.default_rng(seed)
  x = rng.standard_normal((m, k), dtype=np.float32)
  dy = rng.standard_normal((m, n), dtype=np.float32)
  w = rng.standard_normal((k, n), dtype=np.float32)
  jx, jdy, jw = jnp.asarray(x), jnp.asarray(dy), jnp.asarray(w)
  tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
  tw = torch.from_numpy(np.ascontiguousarray(w.T))  # nn.Linear's [out, in]
  if cpu_kernels.dense_available():  # what the model's Dense does with gin/options/cpu_kernels.gin
    fwd = jax.jit(cpu_kernels.dense_product)
    dx = jax.jit(lambda a, b: cpu_kernels.dense_product(a, b, trans_b=True))
    dw = jax.jit(lambda a, b: cpu_kernels.dense_product(a, b, trans_a=True))
  else:
    fwd = jax.jit(lambda a, b: jnp.dot(a, b))
    dx = jax.jit(lambda a, b: jnp.dot(a, b.T))
    dw = jax.jit(lambda a, b: jnp.dot(a.T, b))
  return {
      'fwd': {'ours': lambda: fwd(jx, jw).block_until_ready(),
              'peer': lambda: torch.nn.functional.linear(tx, tw)},
      'dx': {'ours': lambda: dx(jdy, jw).block_until_ready(),
             'peer': lambda: torch.mm(tdy, tw)},
      'dw': {'ours': lambda: dw(jx, jdy).block_until_ready(),
             'peer': lambda: torch.mm(tdy.t(), tx)},
  }


def measure(cfg: common.BenchConfig, rounds: int, calls: int, log=None) -> dict[str, Any]:
  """{'rates': [{m, k, n, pass, ours: [FLOP/s per round], peer: [...]}, ...]}."""
  import torch

  torch.set_num_threads(common.usable_cores())
  entries = []
  products = {}
  for i, (m, k, n) in enumerate(shapes(cfg)):
    products[(m, k, n)] = _products(m, k, n, seed=i)
    for p in PASSES:
      entries.append({'m': m, 'k': k, 'n': n, 'pass': p, 'ours': [], 'peer': []})
  for r in range(rounds):
    if log:
      log(f'round {r + 1}/{rounds}')
    for e in entries:
      flops = 2.0 * e['m'] * e['k'] * e['n']
      with torch.no_grad():
        for side in ('ours', 'peer'):
          fn = products[(e['m'], e['k'], e['n'])][e['pass']][side]
          e[side].append(flops / _median_seconds(fn, calls))
  return {'rates': entries}


def step_seconds(cfg: common.BenchConfig, rates: list[dict[str, Any]]) -> dict[str, Any]:
  """Per stage and side: seconds of the step's weight matmuls at the median measured rates."""
  rate = {(e['m'], e['k'], e['n'], e['pass']): {side: common.median(e[side])
                                                for side in ('ours', 'peer')}
          for e in rates}
  out = {}
  for stage in common.STAGES:
    seconds = {'ours': 0.0, 'peer': 0.0}
    flops = 0.0
    for g in common.dense_gemms(cfg, stage):
      f = 2.0 * g['m'] * g['k'] * g['n'] * g['count']
      for p in g['passes']:
        flops += f
        for side in seconds:
          seconds[side] += f / rate[(g['m'], g['k'], g['n'], p)][side]
    out[stage] = dict(seconds, flops=flops, ours_over_peer_rate=seconds['peer'] / seconds['ours'])
  return out


def main(argv=None) -> int:
  from promot_t5x import host_memory

  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--calls', type=int, default=7, help='timed calls per product and round')
  p.add_argument('--config', default=None, help='BenchConfig as JSON')
  args = p.parse_args(argv)
  host_memory.configure()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  cfg = common.BenchConfig.from_json(args.config) if args.config else common.BenchConfig()
  raw = measure(cfg, args.rounds, args.calls,
                log=lambda msg: print(msg, file=sys.stderr, flush=True))
  from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels

  common.emit({'side': 'both', 'kind': 'gemm', 'rounds': args.rounds, 'calls': args.calls,
               'dense_kernel': 'mkl' if cpu_kernels.dense_available() else 'xla',
               **raw, 'steps': step_seconds(cfg, raw['rates'])})
  return 0


if __name__ == '__main__':
  sys.exit(main())
