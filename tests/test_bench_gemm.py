"""bench/gemm.py: the train steps' weight matmuls, ours against torch's, and run_all's table of them."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))

import common  # noqa: E402
import gemm  # noqa: E402
import run_all  # noqa: E402

TINY = common.BenchConfig(vocab_size=96, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=24,
                          num_encoder_layers=2, num_decoder_layers=3, batch_size=2,
                          input_length=5, target_length=3, prompt_length=2)


@pytest.mark.parametrize('cfg', [common.BenchConfig(), TINY])
@pytest.mark.parametrize('stage', common.STAGES)
def test_dense_gemms_count_the_weight_flops_of_train_flops(cfg, stage):
  f = common.forward_flops(cfg, common.uses_prompt(stage))
  if stage == 'prompt_tuning':
    want = 2 * f['weights'] - f['dec0_self_weights'] - f['dec0_cross_query']
  else:
    want = 3 * f['weights']
  got = sum(2 * g['m'] * g['k'] * g['n'] * g['count'] * len(g['passes'])
            for g in common.dense_gemms(cfg, stage))
  assert got == want
  passes = {g['passes'] for g in common.dense_gemms(cfg, stage)}
  assert passes == ({('fwd', 'dx'), ('fwd',)} if stage == 'prompt_tuning' else {('fwd', 'dx', 'dw')})


def test_step_seconds_weigh_each_pass_by_its_flops():
  cfg = TINY
  rates = [{'m': m, 'k': k, 'n': n, 'pass': p,
            'ours': [1e9, 3e9, 2e9],                          # median 2e9
            'peer': [4e9 if p == 'dw' else 1e9]}              # the peer: 4x faster on dw only
           for m, k, n in gemm.shapes(cfg) for p in gemm.PASSES]
  steps = gemm.step_seconds(cfg, rates)
  for stage in common.STAGES:
    flops = sum(2 * g['m'] * g['k'] * g['n'] * g['count'] * len(g['passes'])
                for g in common.dense_gemms(cfg, stage))
    assert steps[stage]['flops'] == flops
    assert steps[stage]['ours'] == pytest.approx(flops / 2e9)
  # Stage 1 has no dw: the peer runs everything at 1e9, half our rate.
  assert steps['prompt_tuning']['ours_over_peer_rate'] == pytest.approx(2.0)
  # Fine-tuning: a third of the FLOPs at 4e9 on the peer's side.
  ft = steps['finetune']
  assert ft['peer'] == pytest.approx(ft['flops'] * (2 / 3 / 1e9 + 1 / 3 / 4e9))


def test_gemm_measures_every_shape_and_pass_of_both_sides():
  pytest.importorskip('torch')
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'bench' / 'gemm.py'), '--rounds=1', '--calls=2',
       f'--config={json.dumps(dataclasses.asdict(TINY))}'],
      capture_output=True, text=True, timeout=600, check=False,
      env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu', 'HOME': str(ROOT)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  measured = {(e['m'], e['k'], e['n'], e['pass']) for e in out['rates']}
  assert measured == {(m, k, n, p) for m, k, n in gemm.shapes(TINY) for p in gemm.PASSES}
  # Both prompt lengths' encoder shapes (stages 1-2 and fine-tuning) are there.
  assert {m for m, *_ in measured} == {2 * 7, 2 * 5, 2 * 3}
  for e in out['rates']:
    assert len(e['ours']) == len(e['peer']) == 1 and e['ours'][0] > 0 and e['peer'][0] > 0
  assert set(out['steps']) == set(common.STAGES)
  assert out['steps']['finetune'] == gemm.step_seconds(TINY, out['rates'])['finetune']
  # Ours are timed as the model's Dense runs them: through oneMKL where it loads.
  from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels
  assert out['dense_kernel'] == ('mkl' if cpu_kernels.dense_available() else 'xla')


def test_run_all_reports_the_matmuls_and_the_rest_of_each_step():
  import test_bench_summary as tbs

  steps = {stage: [2.0] for stage in common.STAGES}
  raw = tbs._raw(steps, {k: [3.0] for k in common.STAGES}, {k: [2.5] for k in common.STAGES})
  raw['gemm'] = {'dense_kernel': 'mkl',
                 'steps': {stage: {'flops': 3e11, 'ours': 1.5, 'peer': 1.2,
                                   'ours_over_peer_rate': 0.8} for stage in common.STAGES}}
  s = run_all.summarize(common.BenchConfig(), raw)
  m = s['weight_matmuls']['finetune']
  assert m['ours_rest_seconds'] == pytest.approx(0.5)      # 2.0 - 1.5
  assert m['peer_rest_seconds'] == pytest.approx(1.3)      # the faster peer: 2.5 - 1.2
  report = {'summary': s, 'config': common.BenchConfig().__dict__, 'rounds': 1, 'date': 'd',
            'command': 'c', 'machine': {'cpu': 'x', 'cores': 2},
            'load': {'quiet_at_start': True, 'at_start': 0.1, 'max_during': 0.2}, 'raw': raw}
  text = run_all.markdown(report)
  assert '| fine-tuning | 300 | 1.50 / 0.50 | 1.20 / 1.30 | 0.80 |' in text
  assert 'as each model runs them (ours: oneMKL)' in text
  # An earlier run's JSON without the matmul measurement still renders.
  del raw['gemm']
  report['summary'] = run_all.summarize(common.BenchConfig(), raw)
  assert 'weight-matmul GFLOP' not in run_all.markdown(report)
