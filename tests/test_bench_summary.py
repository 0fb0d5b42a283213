"""bench/run_all.py: medians over rounds, the faster peer process, the goals."""

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))

import common  # noqa: E402
import run_all  # noqa: E402


def _train(step, faults=0.0):
  return {'step_seconds': step, 'tokens_per_step': 1000, 'model_flops_per_step': 1e11,
          'peak_rss_bytes': 2 ** 30, 'first_step_seconds': 9.0,
          'minor_faults_per_step': faults, 'cpu_seconds_per_step': 2 * step}


def _raw(ours, torch, torch_same):
  """Per stage: lists of per-round step seconds for the three sides."""
  decode = {'seconds': 1.0, 'new_tokens': 100, 'tokens_head': [1, 2]}
  return {
      'peak': {'ours': {'flops_per_second': 1e11}, 'torch': {'flops_per_second': 2e11}},
      'train': {stage: {'ours': [_train(x) for x in ours[stage]],
                        'torch': [_train(x, 3e5) for x in torch[stage]],
                        'torch_same_allocator': [_train(x) for x in torch_same[stage]]}
                for stage in common.STAGES},
      'decode': {d: {'ours': dict(decode, seconds=0.5), 'torch': dict(decode)}
                 for d in ('greedy', 'beam')},
  }


def test_rows_use_the_median_round_and_the_faster_peer():
  ours = {'prompt_tuning': [1.0, 1.2, 0.9], 'promot_stage2': [2.0, 2.4, 2.2],
          'finetune': [2.0, 2.1, 1.9]}
  torch = {'prompt_tuning': [1.5, 1.4, 1.6], 'promot_stage2': [3.0, 3.0, 3.0],
           'finetune': [2.5, 2.6, 2.4]}
  same = {'prompt_tuning': [1.3, 1.3, 1.3], 'promot_stage2': [3.1, 3.2, 3.3],
          'finetune': [1.8, 1.8, 1.8]}   # the allocator settings make the peer faster here
  s = run_all.summarize(common.BenchConfig(), _raw(ours, torch, same))
  ft = s['train']['finetune']
  assert ft['ours']['step_seconds'] == 2.0 and ft['ours']['step_seconds_per_round'] == [2.0, 2.1, 1.9]
  assert ft['peer_best']['step_seconds'] == 1.8              # torch with our malloc settings
  assert s['train']['promot_stage2']['peer_best']['step_seconds'] == 3.0   # torch as installed
  assert abs(s['speedup_over_peer']['train/finetune'] - 1.8 / 2.0) < 1e-9
  assert abs(s['speedup_over_peer']['train/prompt_tuning'] - 1.3 / 1.0) < 1e-9
  assert not s['goals']['ahead_of_peer_on_every_row']       # fine-tuning is behind the best peer
  assert abs(ft['ours']['mfu'] - 1e11 / 2.0 / 2e11) < 1e-9   # against the higher measured peak
  assert ft['torch']['minor_faults_per_step'] == 3e5

  report = {'summary': s, 'config': common.BenchConfig().__dict__, 'rounds': 3, 'date': 'd',
            'command': 'c', 'machine': {'cpu': 'x', 'cores': 2},
            'load': {'quiet_at_start': True, 'at_start': 0.1, 'max_during': 0.2},
            'raw': _raw(ours, torch, same)}
  text = run_all.markdown(report)
  assert 'median over 3 rounds' in text
  assert ('| train fine-tuning: tokens/s | 500 (2.000 s/step) | 400 (2.500 s/step) '
          '(556; 1.800 s/step) | 0.90x | 0.90, 0.86, 0.95 |') in text
  assert 'ahead of the peer on every throughput row: no' in text
  assert 'training rows ahead in every round: no' in text


def test_per_round_ratios_pair_each_round_with_its_faster_peer_process():
  ours = {k: [1.0, 2.0, 1.0] for k in common.STAGES}
  torch = {k: [1.2, 1.9, 1.5] for k in common.STAGES}
  same = {k: [1.1, 2.5, 1.4] for k in common.STAGES}
  s = run_all.summarize(common.BenchConfig(), _raw(ours, torch, same))
  # Round 2 is slow for us (the machine drifted): its ratio is < 1 although the medians favour us.
  np.testing.assert_allclose(s['train']['finetune']['ours_over_peer_per_round'], [1.1, 0.95, 1.4])
  assert s['goals']['ahead_of_peer_on_every_row']
  assert not s['goals']['ahead_on_every_training_row_in_every_round']
  faster = {k: [1.5, 2.5, 1.5] for k in common.STAGES}
  s = run_all.summarize(common.BenchConfig(), _raw(ours, faster, faster))
  assert s['goals']['ahead_on_every_training_row_in_every_round']


def test_rounds_alternate_which_side_runs_first(monkeypatch):
  calls = []

  def fake_child(script, args, cfg, timeout=1800, env_extra=None):
    calls.append((script, tuple(args), bool(env_extra)))
    if args[:1] == ['peak']:
      return {'flops_per_second': 1e11}
    return {'step_seconds': 1.0}

  monkeypatch.setattr(run_all, 'run_child', fake_child)
  run_all.measure(common.BenchConfig(), rounds=2, log=lambda m: None)
  stage1 = [(script, env) for script, args, env in calls if '--stage=prompt_tuning' in args]
  assert stage1 == [('bench_jax.py', False), ('bench_torch.py', False), ('bench_torch.py', True),
                    ('bench_torch.py', True), ('bench_torch.py', False), ('bench_jax.py', False)]


def test_ahead_when_every_row_beats_both_peer_processes():
  ours = {k: [1.0, 1.0] for k in common.STAGES}
  slower = {k: [1.5, 1.5] for k in common.STAGES}
  s = run_all.summarize(common.BenchConfig(), _raw(ours, slower, slower))
  assert s['goals']['ahead_of_peer_on_every_row']


def test_mfu_uses_the_best_peak_of_the_start_and_the_end_of_the_run():
  steps = {stage: [2.0] for stage in common.STAGES}
  raw = _raw(steps, steps, steps)
  raw['peak_end'] = {'ours': {'flops_per_second': 4e11}, 'torch': {'flops_per_second': 1e11}}
  s = run_all.summarize(common.BenchConfig(), raw)
  assert s['machine_peak_flops_per_second'] == 4e11
  assert abs(s['train']['finetune']['ours']['mfu'] - 1e11 / 2.0 / 4e11) < 1e-9
  report = {'summary': s, 'config': common.BenchConfig().__dict__, 'rounds': 1, 'date': 'd',
            'command': 'c', 'machine': {'cpu': 'x', 'cores': 2},
            'load': {'quiet_at_start': True, 'at_start': 0.1, 'max_during': 0.2}, 'raw': raw}
  assert ('at the start and the end of the run): 400.0 GFLOP/s (start: jnp.dot 100.0, '
          'torch.mm 200.0; end: jnp.dot 400.0, torch.mm 100.0)') in run_all.markdown(report)


def test_the_kernels_auto_picked_are_named_in_the_report():
  steps = {stage: [2.0] for stage in common.STAGES}
  raw = _raw(steps, steps, steps)
  for sides in raw['train'].values():
    for run in sides['ours']:
      run.update(attention_kernel='blas', dense_kernel='mkl')
  note = run_all._kernel_note({'raw': raw})
  assert 'attention\'s batched products through BLAS' in note
  assert 'dense layers\' products through oneMKL' in note
  for sides in raw['train'].values():
    for run in sides['ours']:
      run['attention_kernel'] = 'fused'
  assert 'attention in one fused kernel per layer' in run_all._kernel_note({'raw': raw})
  raw['train']['finetune']['ours'][0]['dense_kernel'] = 'xla'   # mixed runs: not claimed
  assert 'oneMKL' not in run_all._kernel_note({'raw': raw})
  assert run_all._kernel_note({'raw': {}}) == ''
