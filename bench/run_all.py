r"""All benchmarks in one run: ours (JAX) beside the peer (HF transformers + PEFT, torch).

  python bench/run_all.py                       # the measurement (make bench)
  python bench/run_all.py --wait_for_quiet=90   # first wait (<= 90 min) for a quiet CPU
  python bench/run_all.py --quick               # a small smoke run (results/quick.*)
  python bench/run_all.py --from_json=bench/results/latest.json   # re-derive the tables

Every measurement runs in a fresh subprocess (bench_jax.py / bench_torch.py / gemm.py),
one at a time, so each has the machine to itself and reports its own peak RSS.
Results: bench/results/latest.json and a markdown summary latest.md.

What is measured (same T5 configuration, batch and lengths on both sides;
see common.BenchConfig):
  a. training throughput, tokens/s (inputs + targets per step / median step
     time) for stage 1, stage 2 and standard fine-tuning;
  b. model FLOPs utilization: analytic model FLOPs per step (common.train_flops)
     / step time / this machine's float32 matmul peak, measured here (at the
     start and again at the end; the best counts) with a
     4096^3 matmul (the better of jnp.dot and torch.mm);
  c. decoding throughput (new tokens/s), greedy and beam 4, with a cache;
  d. the stage-1 step time over a full-training step (stage 2: same inputs and
     prompt; and plain fine-tuning);
  e. peak RSS of the stage-1 and stage-2 training processes;
  f. the training steps' weight matmuls alone, ours and torch's in one
     process (gemm.py): how much of each step they take at each side's rate.
The CPU's 1-minute load average is recorded before every measurement: numbers
taken while other work shares the CPU are not comparable.

Training runs in `--rounds` rounds (default 3): each round measures every
stage on every side back to back (ours first in odd rounds, last in even
ones, so a steady drift does not favour one side), and a row reports the
median over rounds of each process's median step (this shared machine
drifts by +-15 % over minutes; adjacent measurements are comparable). Each
row also gives the round-by-round ratios (ours / the faster peer process of
the same round), which show whether a lead holds in every round or lies
within the drift. The peer runs twice per
round: as installed, and with the glibc malloc settings our commands apply
(`promot_t5x/host_memory.py`, passed to torch as GLIBC_TUNABLES), so the
comparison does not hinge on the allocator. "Ahead of the peer" is judged
against the faster of the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

from promot_t5x import host_memory  # noqa: E402

GOALS = {'mfu_finetune': 0.35, 'stage1_over_full_step': 0.7}


def load1() -> float:
  return os.getloadavg()[0]


def wait_for_quiet(max_load: float, minutes: float, poll_seconds: float = 120) -> dict:
  """Polls the 1-minute load until it is below `max_load` or `minutes` pass."""
  t0 = time.time()
  samples = []
  while True:
    now = load1()
    samples.append(round(now, 2))
    if now < max_load:
      return {'quiet': True, 'waited_minutes': round((time.time() - t0) / 60, 1),
              'load_samples': samples}
    if time.time() - t0 > minutes * 60:
      return {'quiet': False, 'waited_minutes': round((time.time() - t0) / 60, 1),
              'load_samples': samples}
    print(f'  load {now:.2f} >= {max_load}; waiting ({(time.time() - t0) / 60:.0f} of '
          f'{minutes:.0f} min)', flush=True)
    time.sleep(poll_seconds)


# The peer's process with the allocator settings our side applies with mallopt.
SAME_ALLOCATOR_ENV = {'GLIBC_TUNABLES': host_memory.GLIBC_TUNABLES}
TRAIN_SIDES = ('ours', 'torch', 'torch_same_allocator')


def run_child(script: str, args: list[str], cfg: common.BenchConfig, timeout: float = 1800,
              env_extra: dict[str, str] | None = None) -> dict[str, Any]:
  """Runs one measurement in a fresh process; returns its JSON line plus the load."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', **(env_extra or {}))
  env.pop('XLA_FLAGS', None)  # one CPU device, no fake devices
  before = load1()
  cmd = [sys.executable, str(HERE / script), *args, f'--config={cfg.to_json()}']
  t0 = time.time()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f'{script} {" ".join(args)} failed:\n{proc.stderr[-3000:]}')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result.update(load_before=round(before, 2), load_after=round(load1(), 2),
                wall_seconds=round(time.time() - t0, 1))
  return result


def versions() -> dict[str, str]:
  from importlib import metadata

  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'torch', 'transformers', 'peft'):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = 'missing'
  return out


def cpu_model() -> str:
  cpuinfo = pathlib.Path('/proc/cpuinfo')
  lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
  for line in lines:
    if line.startswith('model name'):
      return line.split(':', 1)[1].strip()
  return platform.processor() or 'unknown'  # no /proc (macOS, ...)


def measure(cfg: common.BenchConfig, rounds: int = 3, log=print) -> dict[str, Any]:
  """Raw results; `train[stage][side]` is a list with one result per round."""
  results: dict[str, Any] = {'peak': {}, 'train': {}, 'decode': {}}
  with tempfile.TemporaryDirectory() as weights:
    run_child('bench_jax.py', ['export', f'--out={weights}'], cfg)
    for side, script in (('ours', 'bench_jax.py'), ('torch', 'bench_torch.py')):
      log(f'peak matmul ({side})')
      results['peak'][side] = run_child(script, ['peak'], cfg)
    log('weight matmuls alone, both sides in one process (gemm.py)')
    results['gemm'] = run_child('gemm.py', [], cfg)
    sides = {'ours': ('bench_jax.py', [], None),
             'torch': ('bench_torch.py', [f'--weights={weights}'], None),
             'torch_same_allocator': ('bench_torch.py', [f'--weights={weights}'],
                                      SAME_ALLOCATOR_ENV)}
    for r in range(rounds):
      for stage in common.STAGES:
        for side in (TRAIN_SIDES if r % 2 == 0 else TRAIN_SIDES[::-1]):
          script, extra, env = sides[side]
          log(f'round {r + 1}/{rounds}: train {stage} ({side})')
          results['train'].setdefault(stage, {}).setdefault(side, []).append(run_child(
              script, ['train', f'--stage={stage}', *extra], cfg, env_extra=env))
    for decoder in ('greedy', 'beam'):
      for side, script, extra in (('ours', 'bench_jax.py', []),
                                  ('torch', 'bench_torch.py', [f'--weights={weights}'])):
        log(f'decode {decoder} ({side})')
        results['decode'].setdefault(decoder, {})[side] = run_child(
            script, ['decode', f'--decoder={decoder}', *extra], cfg)
    # The machine drifts over minutes: the peak is measured again at the end
    # and MFU uses the best of all four measurements.
    for side, script in (('ours', 'bench_jax.py'), ('torch', 'bench_torch.py')):
      log(f'peak matmul again ({side})')
      results.setdefault('peak_end', {})[side] = run_child(script, ['peak'], cfg)
  return results


def _peaks(raw: dict[str, Any]) -> list[float]:
  return [r['flops_per_second'] for key in ('peak', 'peak_end')
          for r in raw.get(key, {}).values()]


def _per_round_ratios(sides: dict[str, list[dict[str, Any]]]) -> list[float]:
  """Per round: our throughput over the faster peer process's of that round."""
  peers = [sides[k] for k in TRAIN_SIDES[1:] if k in sides]
  rounds = min(len(x) for x in [sides['ours'], *peers])
  return [min(p[i]['step_seconds'] for p in peers) / sides['ours'][i]['step_seconds']
          for i in range(rounds)]


def summarize(cfg: common.BenchConfig, raw: dict[str, Any]) -> dict[str, Any]:
  """Derived numbers and the goals."""
  peak = max(_peaks(raw))
  train = {}
  for stage, sides in raw['train'].items():
    train[stage] = {}
    for side, rounds in sides.items():
      step = common.median([r['step_seconds'] for r in rounds])
      r = rounds[0]
      train[stage][side] = {
          'step_seconds': step,
          'step_seconds_per_round': [x['step_seconds'] for x in rounds],
          'tokens_per_second': r['tokens_per_step'] / step,
          'model_tflops_per_step': r['model_flops_per_step'] / 1e12,
          'mfu': r['model_flops_per_step'] / step / peak,
          'peak_rss_gib': max(x['peak_rss_bytes'] for x in rounds) / 2 ** 30,
          'first_step_seconds': r['first_step_seconds'],
          'minor_faults_per_step': common.median([x['minor_faults_per_step'] for x in rounds]),
          'cpu_seconds_per_step': common.median([x['cpu_seconds_per_step'] for x in rounds]),
      }
    # The faster of the peer's two processes is the one to beat.
    train[stage]['peer_best'] = min((train[stage][k] for k in TRAIN_SIDES[1:] if k in train[stage]),
                                    key=lambda t: t['step_seconds'])
    train[stage]['ours_over_peer_per_round'] = _per_round_ratios(sides)
  decode = {}
  for decoder, sides in raw['decode'].items():
    decode[decoder] = {side: {'seconds': r['seconds'],
                              'tokens_per_second': r['new_tokens'] / r['seconds'],
                              'tokens_head': r['tokens_head']}
                       for side, r in sides.items()}
  ratios = {}
  for side in ('ours', 'torch'):
    s1 = train['prompt_tuning'][side]['step_seconds']
    ratios[side] = {'stage1_over_stage2': s1 / train['promot_stage2'][side]['step_seconds'],
                    'stage1_over_finetune': s1 / train['finetune'][side]['step_seconds']}
  speedups = {f'train/{stage}': train[stage]['ours']['tokens_per_second']
              / train[stage]['peer_best']['tokens_per_second'] for stage in train}
  speedups.update({f'decode/{d}': decode[d]['ours']['tokens_per_second']
                   / decode[d]['torch']['tokens_per_second'] for d in decode})
  train_ratios = [train[stage]['ours_over_peer_per_round'] for stage in train]
  goals = {
      'ahead_of_peer_on_every_row': all(v > 1 for v in speedups.values()),
      'ahead_on_every_training_row_in_every_round': all(r > 1 for x in train_ratios for r in x),
      'mfu_finetune': train['finetune']['ours']['mfu'],
      'mfu_finetune_goal_met': train['finetune']['ours']['mfu'] >= GOALS['mfu_finetune'],
      'stage1_over_full_step': ratios['ours']['stage1_over_stage2'],
      'stage1_goal_met': ratios['ours']['stage1_over_stage2'] <= GOALS['stage1_over_full_step'],
  }
  matmuls = {}
  if 'gemm' in raw:
    # The step's weight matmuls at each side's measured rate, and what is left
    # of the step (attention, elementwise work, the optimizer, overheads).
    for stage, g in raw['gemm']['steps'].items():
      ours, peer = train[stage]['ours'], train[stage]['peer_best']
      matmuls[stage] = {'gflop': g['flops'] / 1e9,
                        'ours_seconds': g['ours'], 'peer_seconds': g['peer'],
                        'ours_over_peer_rate': g['ours_over_peer_rate'],
                        'ours_rest_seconds': ours['step_seconds'] - g['ours'],
                        'peer_rest_seconds': peer['step_seconds'] - g['peer']}
  return {'machine_peak_flops_per_second': peak, 'train': train, 'decode': decode,
          'weight_matmuls': matmuls,
          'stage1_ratios': ratios, 'speedup_over_peer': speedups, 'goals': goals,
          'greedy_outputs_agree': (decode['greedy']['ours']['tokens_head']
                                   == decode['greedy']['torch']['tokens_head'])}


def _kernel_note(report: dict[str, Any]) -> str:
  """Which products our train runs used (bench_jax.py --products), as a parenthesis."""
  runs = [run for sides in report['raw'].get('train', {}).values() for run in sides.get('ours', [])]
  attention = {run.get('attention_kernel') for run in runs}
  dense = {run.get('dense_kernel') for run in runs}
  parts = []
  if attention == {'fused'}:
    parts.append('attention in one fused kernel per layer (scores, bias, softmax, context) '
                 'on XLA:CPU\'s threads (gin/options/cpu_kernels.gin)')
  elif attention == {'blas'}:
    parts.append('attention\'s batched products through BLAS on XLA:CPU\'s threads '
                 '(gin/options/cpu_kernels.gin)')
  elif attention == {'xla'}:
    parts.append('attention\'s products as XLA:CPU einsums')
  if dense == {'mkl'}:
    parts.append('the dense layers\' products through oneMKL\'s threaded sgemm '
                 '(gin/options/cpu_kernels.gin)')
  elif dense == {'xla'}:
    parts.append('the dense layers\' products as XLA:CPU dots')
  return f' (ours: {"; ".join(parts)})' if parts else ''


def markdown(report: dict[str, Any]) -> str:
  s, cfg = report['summary'], report['config']
  quiet = report['load']['quiet_at_start']
  lines = [
      f'Benchmarks ({report["date"]}, {report["machine"]["cpu"]}, '
      f'{report["machine"]["cores"]} cores; load average before the run '
      f'{report["load"]["at_start"]:.2f}, max during {report["load"]["max_during"]:.2f}'
      + ('' if quiet else ' — NOT a quiet machine: preliminary numbers') + ').',
      '',
      f'Model and shapes: {common.BenchConfig(**cfg).describe()}. float32, no dropout, '
      f'one CPU device{_kernel_note(report)}; steady-state median of '
      f'{cfg["train_steps"]} steps after {cfg["warmup_steps"]} warm-up steps.',
      'Machine float32 matmul peak (4096^3, best of jnp.dot / torch.mm'
      + (', at the start and the end of the run' if 'peak_end' in report['raw'] else '')
      + f'): {s["machine_peak_flops_per_second"] / 1e9:.1f} GFLOP/s ('
      + '; '.join(f'{when}: jnp.dot {report["raw"][key]["ours"]["flops_per_second"] / 1e9:.1f}, '
                  f'torch.mm {report["raw"][key]["torch"]["flops_per_second"] / 1e9:.1f}'
                  for key, when in (('peak', 'start'), ('peak_end', 'end'))
                  if key in report['raw']) + ').',
      '',
      f'Training rows: median over {report.get("rounds", 1)} rounds (each the median step of '
      'one process); the peer as installed and, in parentheses, with our malloc settings '
      '(GLIBC_TUNABLES); "ours / peer" is against the faster of the two; "per round": the '
      'same ratio within each round (ours against the faster peer process of that round).',
      '',
      '| row | ours (promot-t5x, JAX) | peer (HF transformers + PEFT, torch) | ours / peer '
      '| per round |',
      '|---|---|---|---|---|',
  ]
  for stage in common.STAGES:
    row = s['train'][stage]
    o, t, best = row['ours'], row['torch'], row['peer_best']
    same = row.get('torch_same_allocator')
    peer = f'{t["tokens_per_second"]:,.0f} ({t["step_seconds"]:.3f} s/step)'
    if same:
      peer += f' ({same["tokens_per_second"]:,.0f}; {same["step_seconds"]:.3f} s/step)'
    lines.append(f'| train {common.STAGE_LABELS[stage]}: tokens/s | '
                 f'{o["tokens_per_second"]:,.0f} ({o["step_seconds"]:.3f} s/step) | {peer} | '
                 f'{o["tokens_per_second"] / best["tokens_per_second"]:.2f}x | '
                 + ', '.join(f'{x:.2f}' for x in row.get('ours_over_peer_per_round', [])) + ' |')
  for stage in common.STAGES:
    o, t = s['train'][stage]['ours'], s['train'][stage]['peer_best']
    lines.append(f'| MFU {common.STAGE_LABELS[stage]} ({o["model_tflops_per_step"] * 1e3:.0f} '
                 f'GFLOP/step) | {o["mfu"]:.1%} | {t["mfu"]:.1%} | | |')
  for decoder in ('greedy', 'beam'):
    o, t = s['decode'][decoder]['ours'], s['decode'][decoder]['torch']
    name = 'greedy' if decoder == 'greedy' else f'beam {cfg["num_beams"]}'
    lines.append(f'| decode {name}, cached: new tokens/s | {o["tokens_per_second"]:,.1f} | '
                 f'{t["tokens_per_second"]:,.1f} | '
                 f'{o["tokens_per_second"] / t["tokens_per_second"]:.2f}x | |')
  lines.append('| CPU seconds (user + system) per fine-tuning step; minor page faults | '
               + ' | '.join(f'{s["train"]["finetune"][k]["cpu_seconds_per_step"]:.2f}; '
                            f'{s["train"]["finetune"][k]["minor_faults_per_step"]:,.0f}'
                            for k in ('ours', 'torch')) + ' | | |')
  r = s['stage1_ratios']
  lines.append(f'| stage-1 step / stage-2 step (same inputs + prompt) | '
               f'{r["ours"]["stage1_over_stage2"]:.2f} | '
               f'{r["torch"]["stage1_over_stage2"]:.2f} | | |')
  lines.append(f'| stage-1 step / fine-tuning step (no prompt) | '
               f'{r["ours"]["stage1_over_finetune"]:.2f} | '
               f'{r["torch"]["stage1_over_finetune"]:.2f} | | |')
  for stage in ('prompt_tuning', 'promot_stage2'):
    o, t = s['train'][stage]['ours'], s['train'][stage]['torch']
    lines.append(f'| peak RSS {common.STAGE_LABELS[stage]} (GiB) | {o["peak_rss_gib"]:.2f} | '
                 f'{t["peak_rss_gib"]:.2f} | | |')
  if s.get('weight_matmuls'):
    our_matmul = ('oneMKL' if report['raw']['gemm'].get('dense_kernel') == 'mkl'
                  else 'jitted `jnp` on XLA:CPU')
    lines += [
        '',
        'The steps\' weight matmuls alone (`bench/gemm.py`: projections, MLP and logits, '
        'each pass in its model\'s weight layout, as each model runs them '
        f'(ours: {our_matmul}), interleaved with torch\'s in one '
        'process): seconds per step at each side\'s measured rates, and the rest of the step '
        '(its time minus those seconds: attention, elementwise work, the optimizer); the peer '
        'is the faster process above.',
        '',
        '| stage | weight-matmul GFLOP | ours: matmuls / rest (s) | peer: matmuls / rest (s) '
        '| our rate / torch rate |',
        '|---|---|---|---|---|',
    ]
    for stage in common.STAGES:
      m = s['weight_matmuls'][stage]
      lines.append(f'| {common.STAGE_LABELS[stage]} | {m["gflop"]:.0f} | '
                   f'{m["ours_seconds"]:.2f} / {m["ours_rest_seconds"]:.2f} | '
                   f'{m["peer_seconds"]:.2f} / {m["peer_rest_seconds"]:.2f} | '
                   f'{m["ours_over_peer_rate"]:.2f} |')
  g = s['goals']
  lines += [
      '',
      'Goals: ahead of the peer on every throughput row: '
      f'{"yes" if g["ahead_of_peer_on_every_row"] else "no"} (training rows ahead in every '
      f'round: {"yes" if g["ahead_on_every_training_row_in_every_round"] else "no"}); '
      'fine-tuning MFU '
      f'{g["mfu_finetune"]:.1%} (goal >= {GOALS["mfu_finetune"]:.0%}: '
      f'{"met" if g["mfu_finetune_goal_met"] else "missed"}); stage-1 / full step '
      f'{g["stage1_over_full_step"]:.2f} (goal <= {GOALS["stage1_over_full_step"]}: '
      f'{"met" if g["stage1_goal_met"] else "missed"}).',
      f'Greedy outputs of both sides agree on the first tokens: '
      f'{"yes" if s["greedy_outputs_agree"] else "no"} (same weights).',
      '',
      f'Command: `{report["command"]}`',
  ]
  return '\n'.join(lines) + '\n'


QUICK = dict(num_encoder_layers=2, num_decoder_layers=2, batch_size=4, input_length=32,
             target_length=8, prompt_length=4, decode_batch=2, decode_length=4,
             train_steps=2, warmup_steps=1, decode_repeats=1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='small smoke run (results/quick.*)')
  p.add_argument('--wait_for_quiet', type=float, default=0,
                 help='minutes to wait for the 1-min load average to drop below --max_load')
  p.add_argument('--max_load', type=float, default=2.5)
  p.add_argument('--rounds', type=int, default=3, help='training measurements per side and stage')
  p.add_argument('--out', default=str(HERE / 'results'))
  p.add_argument('--from_json', default=None,
                 help='re-derive the summary and markdown of an earlier run\'s JSON (no measuring)')
  args = p.parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      report = json.load(f)
    report['summary'] = summarize(common.BenchConfig(**report['config']), report['raw'])
    return _write(report, os.path.dirname(os.path.abspath(args.from_json)),
                  pathlib.Path(args.from_json).stem)
  cfg = common.BenchConfig(**QUICK) if args.quick else common.BenchConfig()
  wait = {'quiet': load1() < args.max_load, 'waited_minutes': 0, 'load_samples': []}
  if args.wait_for_quiet > 0:
    wait = wait_for_quiet(args.max_load, args.wait_for_quiet)
  start_load = load1()
  print(f'benchmarks: {cfg.describe()}\nload average {start_load:.2f}', flush=True)
  t0 = time.time()
  raw = measure(cfg, rounds=args.rounds, log=lambda m: print(f'  {m}', flush=True))
  results = ([r for sides in raw['train'].values() for rounds in sides.values() for r in rounds]
             + [r for sides in raw['decode'].values() for r in sides.values()])
  loads = [start_load] + [r[k] for r in results for k in ('load_before', 'load_after')]
  report = {
      'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
      'command': 'python bench/run_all.py' + (' ' + ' '.join(sys.argv[1:]) if argv is None
                                               and sys.argv[1:] else ''),
      'machine': {'cpu': cpu_model(), 'cores': os.cpu_count(), 'versions': versions()},
      'load': {'at_start': start_load, 'max_during': max(loads), 'max_allowed': args.max_load,
               'quiet_at_start': start_load < args.max_load,
               'quiet_throughout': max(loads) < args.max_load, 'wait': wait},
      'config': dataclasses.asdict(cfg),
      'rounds': args.rounds,
      'raw': raw,
      'seconds': round(time.time() - t0, 1),
  }
  report['summary'] = summarize(cfg, raw)
  return _write(report, args.out, 'quick' if args.quick else 'latest')


def _write(report: dict[str, Any], out: str, stem: str) -> int:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{stem}.json'), 'w') as f:
    json.dump(report, f, indent=1)
  text = markdown(report)
  with open(os.path.join(out, f'{stem}.md'), 'w') as f:
    f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
