"""The README's main command, end to end in its --quick setting (every part, a few steps)."""

import json
import os
import subprocess
import sys

import pytest

from promot_t5x import miniature

pytestmark = pytest.mark.skipif(not os.path.isdir(miniature.BASE_MODEL),
                                reason='the committed base model is missing')


def _run(out, env):
  return subprocess.run([sys.executable, '-m', 'promot_t5x.miniature', '--quick',
                         f'--output_dir={out}'], capture_output=True, text=True, env=env,
                        timeout=1500)


def test_quick_miniature_runs_every_part_and_resumes(tmp_path):
  out = tmp_path / 'mini'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  proc = _run(out, env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f'results: {out}/summary.md' in proc.stdout
  # The two seeds ran in two worker processes (one CPU each), logging to files; their
  # milestones reached the console.
  for i in (0, 1):
    assert f'worker {i}: rte seeds [{i}]' in proc.stdout
    assert 'training' in (out / 'logs' / f'worker_{i}.log').read_text()
  assert '[worker rte seeds [1]] [1/6] finetune seed 1: training' in proc.stdout

  # The paper's table: every variant is a column, the 8 analogues and Norm. Avg. are rows.
  table = json.loads((out / 'rte' / 'table.json').read_text())
  assert set(table) == {'pretrained', 'prompt_tuning', 'finetune', 'promot', 'promot_1shot', 'finetune_shuffled',
                        'promot_shuffled'}
  for variant, seeds in table.items():
    assert len(seeds) == (1 if variant == 'pretrained' else 2), variant
    keys = seeds[0]
    assert any(k.endswith('norm_avg') for k in keys), (variant, sorted(keys))
    assert any('triviaqa' in k for k in keys) and any('wikilingua' in k for k in keys)
  assert (out / 'rte' / 'norm_avg.png').stat().st_size > 0
  # Internal consistency of every run's results: Norm. Avg. is the mean of the 8 scores; the
  # prompt is attached to the fine-tuned task only, never to the suites.
  results = {v: json.loads((out / 'rte' / v / 'seed_0' / 'eval' / 'results.json').read_text())
             for v in table}
  for variant, r in results.items():
    assert set(r['suites']) == {'target', 'fewshot_1shot'}  # 4-shot only with --four_shot
    assert r['suites']['target']['tasks']['rte']['num_examples'] == 6  # task_examples, not max_examples
    assert {t['num_examples'] for t in r['suites']['fewshot_1shot']['tasks'].values()} == {4}
    for name in ('fewshot_1shot',):
      suite = r['suites'][name]
      scores = [t['score'] for t in suite['tasks'].values()]
      assert len(scores) == 8
      assert suite['norm_avg'] == pytest.approx(sum(scores) / 8)
      assert all(t['prompt'] is None for t in suite['tasks'].values())
    (target,) = r['suites']['target']['tasks'].values()
    has_prompt = variant in ('prompt_tuning', 'promot', 'promot_1shot', 'promot_shuffled')
    assert target['prompt'] == ('task' if has_prompt else None), variant
  # Prompt tuning leaves the model frozen, so without its prompt it *is* the pretrained
  # model: identical suite predictions prove the prompt was removed.
  for name in ('fewshot_1shot',):
    for task in results['pretrained']['suites'][name]['tasks']:
      pre = (out / 'rte' / 'pretrained' / 'seed_0' / 'eval' / 'predictions' / name / f'{task}.jsonl')
      pt = (out / 'rte' / 'prompt_tuning' / 'seed_0' / 'eval' / 'predictions' / name / f'{task}.jsonl')
      assert [json.loads(l)['prediction'] for l in pre.read_text().splitlines()] == \
          [json.loads(l)['prediction'] for l in pt.read_text().splitlines()], (name, task)

  # ProMoT's model folder holds both stages; its evaluation used stage 2 with the prompt.
  promot = out / 'rte' / 'promot' / 'seed_0'
  results = json.loads((promot / 'eval' / 'results.json').read_text())
  assert results['checkpoint'].endswith(os.path.join('promot', 'seed_0', 'stage2'))
  assert (promot / 'stage1' / 'model-info.txt').exists()

  # Curves: evaluated before training and every 2 steps, for both kinds.
  curves = json.loads((out / 'curves.json').read_text())
  for kind in ('finetune', 'promot_stage2'):
    assert len(curves[kind]) == 2
    for seed in curves[kind]:
      for metric in miniature.CURVE_METRICS:
        assert sorted(int(s) for s in seed[metric]) == [0, 2, 4], (kind, metric, seed[metric])
      assert all(-1.0 <= v <= 1.0 for v in seed['grad_alignment'].values())
  assert (out / 'curves.png').stat().st_size > 0

  conj = json.loads((out / 'conjugate' / 'conjugate_report.json').read_text())
  assert conj['models'] == ['pretrained', 'finetune', 'promot']
  assert {r['transform'] for r in conj['rows']} >= {'toylang', 'cipher'}
  summary = (out / 'summary.md').read_text()
  for heading in ('## mini_rte', '## Format specialization', '## Conjugate prompting'):
    assert heading in summary

  # The paper's claims: one entry each, verdicts computed from the intervals over the seeds.
  from promot_t5x import claims
  doc = json.loads((out / 'claims.json').read_text())
  assert claims.check_claims_file(doc) == []
  assert doc['settings']['seeds'] == [0, 1] and doc['settings']['world'] == 'v1'
  assert doc['settings']['task_test_examples'] == 6 and doc['settings']['eval_examples_per_task'] == 4
  assert doc['settings']['examples_scored']['task'] == {'rte': 6}
  assert not os.path.isabs(doc['settings']['base_model'])
  ids = {c['id'] for c in doc['claims']}
  assert {'C1-rte', 'C2-rte', 'C3-rte', 'C4', 'C5', 'C6-rte', 'C9', 'C10'} <= ids, ids
  for c in doc['claims']:
    assert c['verdict'] in (claims.SUPPORTED, claims.NOT_SUPPORTED, claims.INCONCLUSIVE)
    assert c['tested']['n'] == 2 and len(c['tested']['ci95']) == 2, c
    assert c['reading'].endswith(f'{c["verdict"]}.')
  # The paired difference is computed from the two runs' own numbers.
  c2 = next(c for c in doc['claims'] if c['id'] == 'C2-rte')
  assert c2['tested']['mean'] == pytest.approx(c2['groups']['promot']['mean'] - c2['groups']['finetune']['mean'])
  assert (out / 'claims.md').read_text().count('| C') == len(doc['claims'])
  # The controls trained on shuffled labels and were scored on the real ones.
  for run, config in (('finetune_shuffled', 'config.gin'), ('promot_shuffled', 'stage1/config.gin'),
                      ('promot_shuffled', 'stage2/config.gin')):
    assert "'mini_rte_shuffled'" in (out / 'rte' / run / 'seed_0' / config).read_text(), (run, config)
    shuffled_eval = json.loads((out / 'rte' / run / 'seed_0' / 'eval' / 'results.json').read_text())
    assert next(iter(shuffled_eval['suites']['target']['tasks'].values()))['task'] == 'mini_rte'

  # A second invocation re-runs nothing.
  again = _run(out, env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('done before') == 13
  assert 'worker 0' not in again.stdout  # nothing left to do: no workers
  assert 'training' not in again.stdout


def test_worker_shares_balance_task_seed_units():
  settings = miniature.Settings(seeds=(0, 1, 2, 3, 4), workers=2)
  assert miniature.worker_shares(settings) == [
      (('rte', 0), ('rte', 2), ('rte', 4), ('enfr', 1), ('enfr', 3)),
      (('rte', 1), ('rte', 3), ('enfr', 0), ('enfr', 2), ('enfr', 4))]
  # Multi-task runs train in rte's experiment and are evaluated from enfr's: seeds stay whole.
  settings = miniature.Settings(seeds=(0, 1, 2), workers=2, multitask=True)
  assert miniature.worker_shares(settings) == [
      (('rte', 0), ('rte', 2), ('enfr', 0), ('enfr', 2)), (('rte', 1), ('enfr', 1))]
  assert miniature.worker_shares(miniature.Settings(seeds=(0,), tasks=('rte',), workers=2)) == [(('rte', 0),)]


def test_multitask_promot_routes_one_prompt_per_task(tmp_path):
  """Multi-task ProMoT: trained once on the mixture with a prompt per task, evaluated per task."""
  from promot_t5x import experiment as experiment_lib

  settings = miniature.Settings(**{**miniature.QUICK, 'tasks': ('rte', 'enfr'), 'multitask': True, 'seeds': (0,),
                                   'output_dir': str(tmp_path / 'mini'), 'curves': False})
  exps = {t: miniature.experiment(settings, t) for t in settings.tasks}
  for exp in exps.values():
    experiment_lib.run(exp, only=[miniature.MULTITASK, miniature.MULTITASK_FINETUNE])
  rte_run = tmp_path / 'mini' / 'rte' / miniature.MULTITASK / 'seed_0'
  # Trained once, in the first task's folder; the enfr experiment only evaluates it.
  assert (rte_run / 'stage2' / 'config.gin').exists()
  assert not (tmp_path / 'mini' / 'enfr' / miniature.MULTITASK / 'seed_0' / 'stage2').exists()
  config = (rte_run / 'stage1' / 'config.gin').read_text()
  assert "'mini_rte_enfr'" in config and "('rte', 'enfr')" in config
  results = {t: json.loads((tmp_path / 'mini' / t / miniature.MULTITASK / 'seed_0' / 'eval'
                            / 'results.json').read_text()) for t in settings.tasks}
  for task, r in results.items():
    assert r['checkpoint'].endswith(os.path.join('rte', miniature.MULTITASK, 'seed_0', 'stage2'))
    (target,) = r['suites']['target']['tasks'].values()
    assert target['task'] == f'mini_{task}' and target['prompt'] == task
    assert all(t['prompt'] is None for t in r['suites']['fewshot_1shot']['tasks'].values())
  # Its baseline: the plain model fine-tuned on the same mixture, also trained once, no prompt.
  assert "'mini_rte_enfr'" in (tmp_path / 'mini' / 'rte' / miniature.MULTITASK_FINETUNE / 'seed_0'
                               / 'config.gin').read_text()
  for task in settings.tasks:
    r = json.loads((tmp_path / 'mini' / task / miniature.MULTITASK_FINETUNE / 'seed_0' / 'eval'
                    / 'results.json').read_text())
    assert r['checkpoint'].endswith(os.path.join('rte', miniature.MULTITASK_FINETUNE, 'seed_0'))
    (target,) = r['suites']['target']['tasks'].values()
    assert target['task'] == f'mini_{task}' and target['prompt'] is None
  # Same checkpoint, prompt removed: the two evaluations' suite scores are the same numbers.
  assert results['rte']['suites']['fewshot_1shot']['norm_avg'] == \
      results['enfr']['suites']['fewshot_1shot']['norm_avg']
  # Stage 1 trained both prompts (each from its own task's examples), stage 2 kept them.
  from promot_t5x.checkpoints import manager
  stage1 = manager.load_run_params(str(rte_run / 'stage1'), 'latest')
  stage2 = manager.load_run_params(str(rte_run / 'stage2'), 'latest')
  for name in ('rte', 'enfr'):
    assert stage1['prompt'][name].shape == (settings.prompt_length, 128)
    assert (stage1['prompt'][name] == stage2['prompt'][name]).all()


def test_multitask_needs_two_tasks():
  with pytest.raises(ValueError, match='two fine-tuning tasks'):
    miniature.Settings(tasks=('rte',), multitask=True)
