r"""Micro-benchmarks behind the model and optimizer choices in bench/README.md.

  python bench/micro.py [--repeats=15]

Each line times two formulations of the same computation, interleaved call
by call in one process (this machine drifts over minutes), and prints both
medians:
  mlp:      the gated-GELU MLP's forward + backward (the bench's shapes,
            16 x 128 tokens, 512 -> 1024 -> 512) with the dense layers as
            3-D `dot_general`s vs as 2-D matmuls over the flattened tokens
            (what `promot_t5x.models.t5.Dense` does);
  col_mean: Adafactor's column statistic of the [512, 32128] logits kernel,
            `jnp.mean(g2, axis=0)` vs `ones @ g2 / 512`
            (`promot_t5x.optimizers._mean_over`);
  attention: an encoder self-attention core (queries, keys, values
            [16, 128, 8 heads, 64] -> scores + position bias + mask, softmax,
            context), forward + backward to the four inputs: ours (the
            einsums of `promot_t5x.models.t5.MultiHeadAttention` and the
            encoder's `_add_position_bias`, jitted `jax.grad`) vs torch
            (Hugging Face T5's transposes and `matmul`s, autograd);
  bmm:      one of its batched products alone, 128 x ([128, 64] @ [64, 128]):
            `jnp.matmul` vs `torch.bmm`;
  attention_blas, bmm_blas: the same with the products through BLAS on XLA's
            threads (`promot_t5x.contrib.cpu_kernels`, what the model runs on CPU
            with gin/options/cpu_kernels.gin) vs torch;
  xla_blas: the attention core, XLA's einsums vs `cpu_kernels`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _interleaved(fns: dict, args: tuple, repeats: int) -> dict[str, float]:
  import jax

  for f in fns.values():
    jax.block_until_ready(f(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--repeats', type=int, default=15)
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp

  from promot_t5x import host_memory, optimizers

  host_memory.configure()
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  b, l, d, f, v = 16, 128, 512, 1024, 32128

  x = jax.random.normal(keys[0], (b, l, d))
  dy = jax.random.normal(keys[1], (b, l, d))
  w = {n: jax.random.normal(k, s) * 0.03 for n, k, s in
       (('wi_0', keys[2], (d, f)), ('wi_1', keys[3], (d, f)), ('wo', keys[4], (f, d)))}

  def dot3(a, k):
    return jax.lax.dot_general(a, k, (((a.ndim - 1,), (0,)), ((), ())))

  def dot2(a, k):
    return (a.reshape(-1, a.shape[-1]) @ k).reshape(*a.shape[:-1], k.shape[-1])

  def mlp_grad(dot):
    def loss(w, x):
      h = jax.nn.gelu(dot(x, w['wi_0'])) * dot(x, w['wi_1'])
      return jnp.sum(dot(h, w['wo']) * dy)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  rows = [('mlp', '3-D dot_general', '2-D matmul',
           _interleaved({'a': mlp_grad(dot3), 'b': mlp_grad(dot2)}, (w, x), args.repeats))]

  g2 = jnp.square(jax.random.normal(keys[5], (d, v)))
  rows.append(('col_mean', 'jnp.mean(axis=0)', 'ones @ x',
               _interleaved({'a': jax.jit(lambda g: jnp.mean(g, axis=0)),
                             'b': jax.jit(lambda g: optimizers._mean_over(g, 0))},
                            (g2,), args.repeats)))

  rows += _attention_rows(args.repeats)

  print(f'median of {args.repeats} interleaved calls, ms')
  for name, a_name, b_name, ms in rows:
    print(f'{name:14s} {a_name:>18s} {ms["a"]:8.1f}   {b_name:>12s} {ms["b"]:8.1f}   '
          f'({ms["a"] / ms["b"]:.2f}x)')
  return 0


def _attention_rows(repeats: int) -> list[tuple[str, str, str, dict[str, float]]]:
  import common  # bench/ is not a package
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels
  from promot_t5x.models import t5

  torch.set_num_threads(common.usable_cores())
  b, l, h, hd = 16, 128, 8, 64
  rng = np.random.default_rng(0)
  q, k, v, dout = (rng.standard_normal((b, l, h, hd), dtype=np.float32) * 0.3 for _ in range(4))
  bias = rng.standard_normal((1, h, l, l), dtype=np.float32)
  mask = np.zeros((b, 1, 1, l), np.float32)
  mask[:, :, :, -8:] = -1e10  # a few padded keys

  def core(scores, context):  # Encoder's bias + MultiHeadAttention, mode 'full'
    def loss(q, k, v, bias):
      logits = scores(q, k) + t5._add_position_bias(bias, mask)
      weights = jax.nn.softmax(logits, axis=-1)
      return jnp.sum(context(weights, v) * dout)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))

  ours_grad = core(lambda q, k: jnp.einsum('bqhd,bkhd->bhqk', q, k),
                   lambda w, v: jnp.einsum('bhqk,bkhd->bqhd', w, v))
  blas_grad = core(cpu_kernels.attention_scores, cpu_kernels.attention_context)
  jargs = tuple(jnp.asarray(x) for x in (q, k, v, bias))
  tq, tk, tv, tbias = (torch.from_numpy(x).requires_grad_() for x in (q, k, v, bias))
  tmask, tdout = torch.from_numpy(mask), torch.from_numpy(dout)

  def peer():  # transformers' T5Attention: heads moved next to the batch
    for t in (tq, tk, tv, tbias):
      t.grad = None
    scores = torch.matmul(tq.transpose(1, 2), tk.transpose(1, 2).transpose(3, 2)) + tbias + tmask
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights, tv.transpose(1, 2)).transpose(1, 2).contiguous()
    (out * tdout).sum().backward()

  rows = [('attention', 'ours (XLA:CPU)', 'torch',
           _interleaved({'a': lambda: ours_grad(*jargs), 'b': peer}, (), repeats))]
  rows.append(('attention_blas', 'ours (BLAS)', 'torch',
               _interleaved({'a': lambda: blas_grad(*jargs), 'b': peer}, (), repeats)))
  rows.append(('xla_blas', 'ours (XLA:CPU)', 'ours (BLAS)',
               _interleaved({'a': lambda: ours_grad(*jargs), 'b': lambda: blas_grad(*jargs)}, (),
                            repeats)))
  x = rng.standard_normal((b * h, l, hd), dtype=np.float32)
  y = rng.standard_normal((b * h, hd, l), dtype=np.float32)
  jx, jy, tx, ty = jnp.asarray(x), jnp.asarray(y), torch.from_numpy(x), torch.from_numpy(y)
  bmm = jax.jit(jnp.matmul)
  rows.append(('bmm', 'jnp.matmul', 'torch.bmm',
               _interleaved({'a': lambda: bmm(jx, jy), 'b': lambda: torch.bmm(tx, ty)}, (),
                            repeats)))
  # The same product as the kernel computes the context: [b, h, q, k] x [b, k, h, d].
  w4 = jnp.asarray(rng.standard_normal((b, h, l, l), dtype=np.float32))
  v4 = jnp.asarray(rng.standard_normal((b, l, h, hd), dtype=np.float32))
  tw4 = torch.from_numpy(np.array(w4))
  tv4 = torch.from_numpy(np.array(v4)).transpose(1, 2)
  context = jax.jit(cpu_kernels.attention_context)
  rows.append(('bmm_blas', 'cpu_kernels', 'torch.matmul',
               _interleaved({'a': lambda: context(w4, v4), 'b': lambda: torch.matmul(tw4, tv4)},
                            (), repeats)))
  return rows


if __name__ == '__main__':
  sys.exit(main())
