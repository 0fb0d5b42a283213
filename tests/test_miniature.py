"""The README's main command, end to end in its --quick setting (every part, a few steps)."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from promot_t5x_tasks.synthetic import world as world_lib

from promot_t5x import miniature, selection

pytestmark = pytest.mark.skipif(not os.path.isdir(miniature.BASE_MODEL),
                                reason='the committed base model is missing')


def _run(out, env):
  # The first world: every part, conjugate prompting included (its transforms are the first world's).
  return subprocess.run([sys.executable, '-m', 'promot_t5x.miniature', '--quick', '--world=v1',
                         f'--output_dir={out}', '--lr_grid=0.01,0.03', '--dose_response=0,2'],
                        capture_output=True, text=True, env=env, timeout=1500)


@pytest.mark.slow(minutes=4)
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
  assert re.search(r'\[worker rte seeds \[1\]\] \[1/\d+\] finetune seed 1: training', proc.stdout)

  # The paper's table: every variant is a column, the 8 analogues and Norm. Avg. are rows.
  table = json.loads((out / 'rte' / 'table.json').read_text())
  grid_and_dose = {'finetune_lr0.01', 'finetune_lr0.03', 'finetune_random_prompt', 'promot_stage1_2'}
  assert set(table) == {'pretrained', 'prompt_tuning', 'finetune', 'promot', 'promot_1shot', 'finetune_shuffled',
                        'promot_shuffled'} | grid_and_dose
  for variant, seeds in table.items():
    assert len(seeds) == (1 if variant == 'pretrained' else 2), variant
    keys = seeds[0]
    assert any(k.endswith('norm_avg') for k in keys), (variant, sorted(keys))
    assert any('triviaqa' in k for k in keys) and any('wikilingua' in k for k in keys)
  assert (out / 'rte' / 'norm_avg.png').stat().st_size > 0
  # Internal consistency of every run's results: Norm. Avg. is the mean of the 8 scores; the
  # prompt is attached to the fine-tuned task only, never to the suites.
  results = {v: json.loads((out / 'rte' / v / 'seed_0' / 'eval' / 'results.json').read_text())
             for v in set(table) - grid_and_dose}
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

  # The paper's protocol (gin/miniature/protocol.gin): dropout and label smoothing 0.1,
  # validation every 2 steps, the best step kept; stage 2 starts from stage 1's best prompt
  # and ProMoT and prompt tuning are evaluated at their best steps.
  run = out / 'rte' / 'promot' / 'seed_0'
  for stage in ('stage1', 'stage2'):
    config = (run / stage / 'config.gin').read_text()
    assert 'DROPOUT_RATE = 0.1' in config and 'LABEL_SMOOTHING = 0.1' in config
    assert "CHECKPOINT_BEST_METRIC = 'rte/accuracy'" in config and "stage2_from = 'best'" in config
    assert "PROMPT_INIT = 'vocab_sample'" in config
    history = [json.loads(l) for l in (run / stage / 'metrics.jsonl').read_text().splitlines()]
    evals = {r['step']: r['eval/rte/accuracy'] for r in history if 'eval/rte/accuracy' in r}
    assert set(evals) >= {2, 4}, evals
    best = selection.read_best(str(run / stage / 'checkpoints'))
    assert best.metric == 'rte/accuracy'
    # The first step with the highest validation accuracy (ties keep the earlier one).
    assert best.step == min(s for s, v in evals.items() if v == max(evals.values())), (stage, evals)
  stage1_best = selection.read_best(str(run / 'stage1' / 'checkpoints')).step
  assert f'parameters from {run / "stage1"} (best step {stage1_best})' in \
      (out / 'logs' / 'worker_0.log').read_text()
  for variant, stage in (('promot', 'stage2'), ('prompt_tuning', 'stage1')):
    assert results[variant]['step'] == selection.read_best(str(run / stage / 'checkpoints')).step, variant

  # The learning-rate grid: fine-tuning's best validation score per rate, from best.json.
  grid = json.loads((out / 'lr_grid.json').read_text())
  assert "LEARNING_RATE = 0.03" in (out / 'rte' / 'finetune_lr0.03' / 'seed_0' / 'config.gin').read_text()
  for lr in ('0.01', '0.03'):
    values = [selection.read_best(str(out / 'rte' / f'finetune_lr{lr}' / f'seed_{s}' / 'checkpoints')).value
              for s in (0, 1)]
    assert grid['rates'][lr]['rte']['mean'] == pytest.approx(sum(values) / 2)
    assert grid['rates'][lr]['rte']['n'] == 2
  means = {lr: r['mean_over_tasks'] for lr, r in grid['rates'].items()}
  assert grid['chosen'] == float(max(means, key=means.get))
  assert '(chosen)' in (out / 'lr_grid.md').read_text()
  # The stage-1 dose-response (on rte here: enfr is not run): stage 2 from the initial
  # prompt (0 steps, no stage 1: the fixed-random-prompt run) and from stage 1's last step
  # after 2 steps.
  dose = json.loads((out / 'dose_response.json').read_text())['tasks']['rte']
  base = table['pretrained'][0]['fewshot_1shot/norm_avg']
  for n, variant in (('0', 'finetune_random_prompt'), ('2', 'promot_stage1_2')):
    changes = [r['fewshot_1shot/norm_avg'] - base for r in table[variant]]
    assert dose[n]['norm_avg_change']['mean'] == pytest.approx(sum(changes) / 2)
  assert 'prompt_validation_score' not in dose['0']
  assert not (out / 'rte' / 'finetune_random_prompt' / 'seed_0' / 'stage1').exists()
  assert dose['2']['prompt_validation_score']['n'] == 2
  config = (out / 'rte' / 'promot_stage1_2' / 'seed_0' / 'stage2' / 'config.gin').read_text()
  assert "stage2_from = 'latest'" in config and 'STAGE1_STEPS = 2' in config

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
  assert doc['settings']['model_learning_rate'] == miniature.WORLD_RECIPES['v1']['model_learning_rate']
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

  assert json.loads((out / 'summary.json').read_text())['runs_done_before'] == {'runs': 0, 'of': 21}
  # A second invocation re-runs nothing.
  again = _run(out, env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('done before') == 21
  assert 'worker 0' not in again.stdout  # nothing left to do: no workers
  assert 'training' not in again.stdout
  # ... and says that its wall time leaves out the runs done before.
  assert json.loads((out / 'summary.json').read_text())['runs_done_before'] == {'runs': 21, 'of': 21}
  assert '21 of the 21 runs were done before this invocation' in (out / 'summary.md').read_text()


@pytest.mark.slow(minutes=3)
def test_the_default_world_is_the_third_from_its_committed_base_model_with_its_recipe(tmp_path):
  """`make run`'s world (no --world): the third, its committed base model, its recipe, its transforms."""
  out = tmp_path / 'v3'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  proc = subprocess.run([sys.executable, '-m', 'promot_t5x.miniature', '--quick', '--tasks=rte',
                         '--seeds=0', '--only=finetune,promot', '--no_curves', '--workers=1',
                         f'--output_dir={out}'],
                        capture_output=True, text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  stage1 = (out / 'rte' / 'promot' / 'seed_0' / 'stage1' / 'config.gin').read_text()
  assert f"INITIAL_CHECKPOINT_PATH = '{miniature.BASE_MODEL_V3}'" in stage1
  # The world's recipe: stage 1 without the protocol's regularization, the model's rate its grid's.
  assert 'STAGE1_DROPOUT_RATE = 0.0' in stage1 and 'STAGE1_LABEL_SMOOTHING = 0.0' in stage1
  assert 'DROPOUT_RATE = 0.1' in stage1
  doc = json.loads((out / 'claims.json').read_text())
  assert doc['settings']['world'] == 'v3' and doc['settings']['base_model'] == 'tasks/synthetic/data/base_model_v3'
  assert doc['settings']['model_learning_rate'] == miniature.WORLD_RECIPES['v3']['model_learning_rate']
  results = json.loads((out / 'rte' / 'promot' / 'seed_0' / 'eval' / 'results.json').read_text())
  assert results['suites']['target']['tasks']['rte']['task'] == 'mini3_rte'
  assert results['suites']['target']['task_feature_lengths']['targets'] == miniature.EVAL_TARGET_LENGTH['v3']
  # Conjugate prompting under the third world's own transforms, on its own suite.
  conj = json.loads((out / 'conjugate' / 'conjugate_report.json').read_text())
  assert conj['models'] == ['pretrained', 'finetune', 'promot']
  assert {r['transform'] for r in conj['rows']} >= {'toylang_v3', 'cipher_v3'}
  scored = json.loads((out / 'conjugate' / 'promot' / 'seed_0' / 'results.json').read_text())
  tasks = {t['task'] for t in scored['suites']['toylang_v3']['tasks'].values()}
  assert tasks == {f'mini3_{f}_1shot__toylang_v3' for f in world_lib.EVAL_FAMILIES}, tasks
  assert '## Conjugate prompting (mini3_rte models)' in (out / 'summary.md').read_text()


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


@pytest.mark.slow(minutes=1)
def test_multitask_promot_routes_one_prompt_per_task(tmp_path):
  """Multi-task ProMoT: trained once on the mixture with a prompt per task, evaluated per task."""
  from promot_t5x import experiment as experiment_lib

  # (The protocol's validation is tested by the quick run; here it would only cost time.)
  settings = miniature.Settings(**{**miniature.QUICK, 'tasks': ('rte', 'enfr'), 'multitask': True, 'seeds': (0,),
                                   'output_dir': str(tmp_path / 'mini'), 'curves': False, 'protocol': False})
  exps = {t: miniature.experiment(settings, t) for t in settings.tasks}
  for exp in exps.values():
    experiment_lib.run(exp, only=[miniature.MULTITASK, miniature.MULTITASK_FINETUNE])
  rte_run = tmp_path / 'mini' / 'rte' / miniature.MULTITASK / 'seed_0'
  # Trained once, in the first task's folder; the enfr experiment only evaluates it.
  assert (rte_run / 'stage2' / 'config.gin').exists()
  assert not (tmp_path / 'mini' / 'enfr' / miniature.MULTITASK / 'seed_0' / 'stage2').exists()
  config = (rte_run / 'stage1' / 'config.gin').read_text()
  mixture = f"'{settings.prefix}rte_enfr'"  # (the default world's names)
  assert mixture in config and "('rte', 'enfr')" in config
  results = {t: json.loads((tmp_path / 'mini' / t / miniature.MULTITASK / 'seed_0' / 'eval'
                            / 'results.json').read_text()) for t in settings.tasks}
  for task, r in results.items():
    assert r['checkpoint'].endswith(os.path.join('rte', miniature.MULTITASK, 'seed_0', 'stage2'))
    (target,) = r['suites']['target']['tasks'].values()
    assert target['task'] == f'{settings.prefix}{task}' and target['prompt'] == task
    assert all(t['prompt'] is None for t in r['suites']['fewshot_1shot']['tasks'].values())
  # Its baseline: the plain model fine-tuned on the same mixture, also trained once, no prompt.
  assert mixture in (tmp_path / 'mini' / 'rte' / miniature.MULTITASK_FINETUNE / 'seed_0'
                               / 'config.gin').read_text()
  for task in settings.tasks:
    r = json.loads((tmp_path / 'mini' / task / miniature.MULTITASK_FINETUNE / 'seed_0' / 'eval'
                    / 'results.json').read_text())
    assert r['checkpoint'].endswith(os.path.join('rte', miniature.MULTITASK_FINETUNE, 'seed_0'))
    (target,) = r['suites']['target']['tasks'].values()
    assert target['task'] == f'{settings.prefix}{task}' and target['prompt'] is None
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


def test_model_learning_rate_flag_reaches_the_settings(monkeypatch, tmp_path, capsys):
  ran = []
  monkeypatch.setattr(miniature, 'run', ran.append)
  assert miniature.main([f'--output_dir={tmp_path}', '--model_learning_rate=0.01']) == 0
  (settings,) = ran
  assert settings.model_learning_rate == 0.01 and settings.prompt_learning_rate == 0.2
  assert miniature.main([f'--output_dir={tmp_path}', '--model_learning_rate=0']) == 2
  assert 'model_learning_rate must be > 0, got 0.0' in capsys.readouterr().err
  assert len(ran) == 1


def test_stage1_steps_flag_reaches_stage1_only(monkeypatch, tmp_path, capsys):
  ran = []
  monkeypatch.setattr(miniature, 'run', ran.append)
  assert miniature.main([f'--output_dir={tmp_path}', '--stage1_steps=750']) == 0
  (settings,) = ran
  assert (settings.stage1_steps, settings.stage2_steps) == (750, miniature.Settings().stage2_steps)
  promot = next(v for v in miniature.experiment(settings, 'rte').variants if v.name == 'promot')
  assert 'STAGE1_STEPS = 750' in promot.overrides
  assert f'STAGE2_STEPS = {settings.stage2_steps}' in promot.overrides
  assert miniature.main([f'--output_dir={tmp_path}', '--stage1_steps=0']) == 2
  assert 'stage1_steps must be >= 1, got 0' in capsys.readouterr().err
  assert len(ran) == 1


def test_stage1_unregularized_drops_dropout_and_label_smoothing_in_stage1_only(monkeypatch, tmp_path):
  # Through the real entry point: the model each stage's trainer receives (a gin binding
  # that never reaches the model, as a scoped %MODEL macro did not, must fail here).
  import gin
  from promot_t5x import experiment as experiment_lib
  from promot_t5x import gin_utils, trainer

  ran = []
  monkeypatch.setattr(miniature, 'run', ran.append)
  assert miniature.main([f'--output_dir={tmp_path}', '--stage1_unregularized']) == 0
  (settings,) = ran
  assert settings.stage1_unregularized and not miniature.Settings(world='v1').stage1_unregularized

  class Built(Exception):
    """Raised once the trainer has its model: the test needs nothing more of the run."""

  models = []

  def record(self, model, *args, **kwargs):
    models.append((model.label_smoothing, model.module.config.dropout_rate))
    raise Built()

  monkeypatch.setattr(trainer.Trainer, '__init__', record)
  for flag in (False, True):
    exp = miniature.experiment(dataclasses.replace(settings, stage1_unregularized=flag), 'rte')
    promot = next(v for v in exp.variants if v.name == 'promot')
    finetune = next(v for v in exp.variants if v.name == 'finetune')
    assert not any('STAGE1_' in o for o in finetune.overrides)
    gin_utils.parse(exp.model_gin_files + exp.gin_files + promot.gin_files,
                    experiment_lib.variant_bindings(exp, promot, 0) + ["MODEL_DIR = 'unused'"],
                    exp.gin_search_paths)
    seen = {}
    for stage in ('stage1', 'stage2'):
      with pytest.raises(Built):
        gin.query_parameter(f'train.promot.{stage}').scoped_configurable_fn(
            model_dir=str(tmp_path / f'{flag}_{stage}'))
      seen[stage] = models.pop()
    assert seen == {'stage1': (0.0, 0.0) if flag else (0.1, 0.1), 'stage2': (0.1, 0.1)}, flag
  gin.clear_config()


def test_stage1_stops_at_the_validation_ceiling_except_where_stage2_takes_its_latest_prompt(tmp_path):
  # Through the gins each variant trains with: the protocol stops stage 1 once its best reaches
  # 100 (no later prompt could be chosen); the dose-response's stage 2 starts from stage 1's
  # latest prompt (step n), so its stage 1 must train all n steps.
  import gin
  from promot_t5x import experiment as experiment_lib
  from promot_t5x import gin_utils

  settings = miniature.Settings(world='v2', tasks=('enfr',), dose_steps=(30,), output_dir=str(tmp_path))
  exp = miniature.experiment(settings, 'enfr')
  seen = {}
  for name in ('promot', miniature.dose_variant(30)):
    variant = next(v for v in exp.variants if v.name == name)
    gin_utils.parse(exp.model_gin_files + exp.gin_files + variant.gin_files,
                    experiment_lib.variant_bindings(exp, variant, 0) + ["MODEL_DIR = 'unused'"],
                    exp.gin_search_paths)
    binding = gin.query_parameter('stage1/train.train.stop_at_best')
    assert binding.scoped_selector == 'STAGE1_STOP_AT_BEST/gin.macro'  # a macro reference
    seen[name] = (gin.query_parameter('STAGE1_STOP_AT_BEST/macro.value'),
                  gin.query_parameter('train.promot.stage2_from'))
    gin.clear_config()
  assert seen == {'promot': (100.0, 'best'), miniature.dose_variant(30): (None, 'latest')}


@pytest.mark.parametrize('world, folder', [('v3', ''), ('v2', 'world_v2'), ('v1', 'world_v1')])
def test_each_worlds_model_learning_rate_is_its_grids_choice(world, folder):
  """A world's recipe takes the model learning rate its committed grid chose (lr_grid.json)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  grid = json.loads(open(os.path.join(root, 'docs', 'miniature', folder, 'lr_grid.json')).read())
  means = {float(lr): row['mean_over_tasks'] for lr, row in grid['rates'].items()}
  assert grid['chosen'] == max(means, key=means.get)
  assert miniature.Settings(world=world).model_learning_rate == grid['chosen']
  assert set(grid['rates']) == {'0.001', '0.003', '0.01', '0.03'} and len(grid['seeds']) >= 3


def test_each_world_takes_its_recipe_unless_told_otherwise(monkeypatch, tmp_path):
  v1, v2 = miniature.Settings(world='v1'), miniature.Settings(world='v2')
  assert (v1.stage1_steps, v1.stage1_unregularized) == (150, False)
  # The second world's stage 1: the paper's 5:1 ratio to stage 2, unregularized, as its gate's probe.
  from promot_t5x import base_model_check
  assert v2.stage1_steps == base_model_check.CheckSettings.prompt_steps_ratio * v2.stage2_steps
  assert v2.stage1_unregularized
  ran = []
  monkeypatch.setattr(miniature, 'run', ran.append)
  assert miniature.main([f'--output_dir={tmp_path}', '--world=v2', '--no-stage1_unregularized',
                         '--stage1_steps=30', '--model_learning_rate=0.003']) == 0
  assert (ran[0].stage1_unregularized, ran[0].stage1_steps, ran[0].model_learning_rate) == (False, 30, 0.003)
  assert miniature.main([f'--output_dir={tmp_path}', '--world=v2']) == 0
  assert ran[1] == dataclasses.replace(v2, output_dir=str(tmp_path), workers=None)

def test_a_worker_ends_when_its_parent_is_gone():
  """Killing promot-miniature must not leave its workers training: they watch their parent."""
  import threading

  ended = threading.Event()
  # Not our parent: as if we had been re-parented after the parent's death.
  thread = miniature.watch_parent(os.getppid() + 1, period=0.01, exit_fn=ended.set)
  assert ended.wait(5)
  thread.join(1)
  assert not thread.is_alive()
  stays = threading.Event()
  thread = miniature.watch_parent(os.getppid(), period=0.01, exit_fn=stays.set)
  assert not stays.wait(0.2) and thread.is_alive()


def test_a_missing_base_model_is_named_with_the_fix(tmp_path, capsys):
  missing = tmp_path / 'no_such_model'
  assert miniature.main([f'--output_dir={tmp_path / "out"}', f'--base_model={missing}']) != 0
  err = capsys.readouterr().err
  assert f'No base model at {missing}' in err
  assert 'base_model_check --world=<world>' in err and '--base_model' in err
  assert not (tmp_path / 'out').exists()  # nothing written before the check


def test_help_states_every_worlds_recipe(capsys):
  with pytest.raises(SystemExit):
    miniature.main(['--help'])
  text = ' '.join(capsys.readouterr().out.split())
  for world, recipe in miniature.WORLD_RECIPES.items():
    assert f'{world} {recipe["stage1_steps"]}' in text
    assert f'{world} {"yes" if recipe["stage1_unregularized"] else "no"}' in text
    assert f'{world} {recipe["model_learning_rate"]}' in text
    assert f'{world} {miniature.WORLDS[world][0]}rte' in text


def test_curve_examples_flag_sizes_the_curves_qa_set(monkeypatch, tmp_path, capsys):
  ran = []
  monkeypatch.setattr(miniature, 'run', ran.append)
  assert miniature.main([f'--output_dir={tmp_path}', '--curve_examples=128']) == 0
  (settings,) = ran
  assert settings.curve_max_examples == 128
  finetune = next(v for v in miniature.experiment(settings, 'rte').variants if v.name == 'finetune')
  assert 'CURVE_MAX_EXAMPLES = 128' in finetune.overrides
  assert miniature.main([f'--output_dir={tmp_path}', '--curve_examples=0']) == 2
  assert 'curve_max_examples must be >= 1, got 0' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    miniature.main(['--help'])
  assert "of each QA analogue (format specialization, C4 and C5) and of the task's validation split" in ' '.join(
      capsys.readouterr().out.split())
