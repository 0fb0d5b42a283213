r"""Where a train step's time goes on XLA:CPU: the ops of one step, by time.

  python bench/profile_step.py --stage=finetune [--top=25] [--config=JSON]
  python bench/profile_step.py --decode=greedy     # one predict_batch call instead

Runs the project's jitted train step (bench_jax.py's setup: the `Trainer`,
Adafactor, the bench's T5 configuration) under `jax.profiler`, reads the
trace's per-op durations, looks each op up in the optimized HLO (dumped to a
temporary folder) and prints the costliest ops with what they compute (their
dots' shapes, or their elementwise/transpose content), then the time per op
kind. Durations are summed over XLA:CPU's threads (so the total can exceed
the step's wall time) and averaged over the profiled steps.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (bench/ is not a package)

_DOT = re.compile(r'= (\S+) dot\([^)]*\), (lhs_batch_dims=\{[^}]*\}, )?'
                  r'lhs_contracting_dims=(\{[^}]*\}), (?:rhs_batch_dims=\{[^}]*\}, )?'
                  r'rhs_contracting_dims=(\{[^}]*\})')


def _dots(text: str) -> str:
  """'dot f32[m,n] contracting {..} x {..}; ...' for the dot instructions in `text`, or ''."""
  dots = _DOT.findall(text)
  return ('dot ' + '; '.join(f'{d[0].split("{")[0]} contracting {d[2]} x {d[3]}' for d in dots)
          if dots else '')


_SHAPE = r'(\([^)]*\)|\S+)'  # an array shape, or a tuple of them (multi-output ops)


def _shape(text: str) -> str:
  return re.sub(r'\{[^}]*\}', '', text)  # without layouts


def _op_descriptions(hlo_text: str) -> dict[str, str]:
  """{op name: a one-line description} for every op of an optimized HLO module."""
  bodies = {m.group(1).lstrip('%'): m.group(2)
            for m in re.finditer(r'\n(%?[\w.\-]+) \([^\n]*\) -> [^\n]*\{\n(.*?)\n\}', hlo_text, re.S)}
  out = {}
  for m in re.finditer(r'%([\w.\-]+) = ' + _SHAPE + r' fusion\(.*?calls=%([\w.\-]+)', hlo_text):
    body = bodies.get(m.group(3), '')
    ops = collections.Counter(o for _, o in re.findall(r'= ' + _SHAPE + r' ([\w-]+)\(', body)
                              if o not in ('parameter', 'constant', 'bitcast'))
    what = _dots(body) or ', '.join(f'{k} x{v}' for k, v in ops.most_common(4))
    out[m.group(1)] = f'-> {_shape(m.group(2))}: {what}'
  # Ops XLA left unfused (dot.N, copy.N, ...) are ops of their own in the trace.
  for m in re.finditer(r'%([\w.\-]+) = ' + _SHAPE + r' ([\w-]+)\([^\n]*', hlo_text):
    out.setdefault(m.group(1), f'-> {_shape(m.group(2))}: '
                               f'{_dots(m.group(0)) or _custom_call(m.group(0)) or m.group(3)}')
  return out


def _custom_call(text: str) -> str:
  """'promot_dense_gemm f32[32,64] x f32[64,512] (trans_b)' for a custom call, or ''."""
  target = re.search(r'custom_call_target="([^"]+)"', text)
  if not target:
    return ''
  operands = re.search(r'operand_layout_constraints=\{(.*?)\}, [a-z_]+=', text)
  shapes = ' x '.join(re.findall(r'\w+\[[\d,]*\]', operands.group(1))) if operands else ''
  flags = [f for f in ('trans_a', 'trans_b') if re.search(rf'\b{f} = true', text)]
  return ' '.join(x for x in (target.group(1), shapes, f'({", ".join(flags)})' if flags else '') if x)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--stage', choices=common.STAGES, default='finetune')
  p.add_argument('--decode', choices=('greedy', 'beam'), default=None,
                 help='profile one decoding call (bench_jax.py decode) instead of a train step')
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--steps', type=int, default=2, help='profiled steps (after 2 warm-up steps)')
  p.add_argument('--config', default=None, help='BenchConfig as JSON')
  p.add_argument('--products', choices=('xla', 'cpu_kernels'), default='cpu_kernels',
                 help='train: the model\'s products (the optional CPU kernels, or XLA\'s)')
  args = p.parse_args(argv)
  dump = tempfile.mkdtemp(prefix='profile_step_')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' --xla_dump_to={dump}/hlo '
                             '--xla_dump_hlo_as_text --xla_dump_hlo_pass_re=NONE')
  import bench_jax

  from promot_t5x import host_memory

  os.environ.setdefault(host_memory.ENV_VAR, 'reuse')  # as bench_jax.py: the bench opts in
  host_memory.configure()
  import jax

  cfg = common.BenchConfig.from_json(args.config) if args.config else common.BenchConfig()
  if args.decode:
    step, module_re, label = bench_jax.decode_fn(cfg, args.decode), 'jit_run', args.decode
  else:
    (step, _), module_re, label = bench_jax.train_step_fn(
        cfg, args.stage, **bench_jax.products(args.products)), 'train_step', args.stage
  for _ in range(2):
    step()
  jax.profiler.start_trace(f'{dump}/trace', create_perfetto_trace=True)
  for _ in range(args.steps):
    step()
  jax.profiler.stop_trace()

  (trace,) = glob.glob(f'{dump}/trace/**/*perfetto_trace.json.gz', recursive=True)
  with gzip.open(trace) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  per_op: collections.Counter = collections.Counter()
  for e in events:
    a = e.get('args', {})
    if e.get('ph') == 'X' and 'hlo_op' in a and module_re in a.get('hlo_module', ''):
      per_op[e['name']] += e.get('dur', 0) / 1e3 / args.steps
  modules = sorted(glob.glob(f'{dump}/hlo/*{module_re}*after_optimizations.txt'),
                   key=os.path.getsize)
  contents = _op_descriptions(pathlib.Path(modules[-1]).read_text()) if modules else {}
  total = sum(per_op.values())
  print(f'{label}: {total:.0f} ms of op time per step (summed over threads), {len(per_op)} ops')
  for name, ms in per_op.most_common(args.top):
    print(f'{ms:8.1f} ms  {name:28s} {contents.get(name, "")}')
  kinds: collections.Counter = collections.Counter()
  for name, ms in per_op.items():
    kinds[re.sub(r'[.\d]+$', '', name)] += ms
  print('by kind:', ', '.join(f'{k} {v:.0f} ms' for k, v in kinds.most_common(8)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
