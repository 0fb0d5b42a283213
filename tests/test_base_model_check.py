"""The base model's gate: its criteria computed from experiment tables, and what it trains."""

import pytest

from promot_t5x import base_model_check as check

HEADROOM_FAMILIES = {'cb': 'accuracy', 'wic': 'accuracy', 'triviaqa': 'exact_match',
                     'webqa': 'exact_match', 'ende': 'bleu', 'enro': 'bleu', 'xsum': 'rouge2',
                     'wikilingua': 'rouge2'}


def _pretrained(yes_no: float, scores: dict[str, float]) -> dict[str, float]:
  flat = {'probes_1shot/rte_yn/accuracy': yes_no, 'probes_1shot/enfr_alt_1shot/bleu': 40.0,
          'rte/accuracy': 50.0, 'enfr/bleu': 5.0}
  flat.update({f'fewshot_1shot/{f}/{HEADROOM_FAMILIES[f]}': v for f, v in scores.items()})
  return flat


def _tables(yes_no: float, scores: dict[str, float], rte: tuple[float, float],
            enfr: tuple[float, float]) -> dict:
  pre = _pretrained(yes_no, scores)
  return {'rte': {'pretrained': [pre], 'prompt_tuning': [{'rte/accuracy': rte[0]}],
                  'prompt_tuning_equal_steps': [{'rte/accuracy': rte[0] / 2}],
                  'finetune': [{'rte/accuracy': rte[1]}]},
          'enfr': {'pretrained': [pre], 'prompt_tuning': [{'enfr/bleu': enfr[0]}],
                   'finetune': [{'enfr/bleu': enfr[1]}]}}


INSIDE = {f: 50.0 for f in HEADROOM_FAMILIES}
SETTINGS = check.CheckSettings(base_model='unused')


def test_a_candidate_with_the_skill_and_the_probe_passes():
  out = check.criteria(_tables(85.0, INSIDE, (60.0, 65.0), (60.0, 62.0)), SETTINGS)
  assert out['latent_skills']['rte_yn_1shot_accuracy'] == 85.0 and out['latent_skills']['passed']
  assert out['latent_skills']['enfr_alt_1shot_bleu'] == 40.0
  assert out['headroom']['passed'] and out['headroom']['outside'] == []
  assert out['probe']['tasks']['rte']['ratio'] == pytest.approx(60 / 65)
  assert out['probe']['tasks']['enfr']['pretrained'] == 5.0
  # Prompt tuning at fine-tuning's own steps is reported beside the gate, not gated.
  assert out['probe']['tasks']['rte']['equal_steps'] == {'prompt_tuning': 30.0, 'ratio': pytest.approx(30 / 65)}
  assert 'equal_steps' not in out['probe']['tasks']['enfr']
  assert out['probe']['steps'] == {'prompt_tuning': 1500, 'finetune': 300}
  assert out['probe']['passed'] and out['passed']


def test_each_criterion_fails_on_its_own_number():
  # The skill below 80 %: the gate fails though the probe passes.
  out = check.criteria(_tables(79.9, INSIDE, (60.0, 65.0), (60.0, 62.0)), SETTINGS)
  assert not out['latent_skills']['passed'] and out['probe']['passed'] and not out['passed']
  # Prompt tuning below 0.85 of fine-tuning on one task.
  out = check.criteria(_tables(90.0, INSIDE, (50.0, 65.0), (60.0, 62.0)), SETTINGS)
  assert not out['probe']['tasks']['rte']['passed'] and out['probe']['tasks']['enfr']['passed']
  assert not out['probe']['passed'] and not out['passed']
  # Fine-tuning at 0: no ratio, not passed.
  out = check.criteria(_tables(90.0, INSIDE, (10.0, 65.0), (3.0, 0.0)), SETTINGS)
  assert out['probe']['tasks']['enfr']['ratio'] is None and not out['probe']['tasks']['enfr']['passed']


def test_headroom_names_the_tasks_outside_its_bounds_and_is_reported_beside_the_gate():
  scores = dict(INSIDE, triviaqa=96.9, xsum=29.0)
  out = check.criteria(_tables(85.0, scores, (60.0, 65.0), (60.0, 62.0)), SETTINGS)
  assert out['headroom']['outside'] == ['triviaqa', 'xsum'] and not out['headroom']['passed']
  assert out['headroom']['bounds'] == [30.0, 90.0]
  assert out['passed']  # the gate is the skills and the probe


def test_the_third_worlds_gate_holds_its_candidate_to_the_headroom_bounds():
  gated = check.CheckSettings(base_model='unused', world='v3', gate_headroom=True)
  out = check.criteria(_tables(85.0, dict(INSIDE, ende=99.0), (60.0, 65.0), (60.0, 62.0)), gated)
  assert out['latent_skills']['passed'] and out['probe']['passed']
  assert out['headroom']['gated'] and out['headroom']['outside'] == ['ende'] and not out['passed']
  assert check.criteria(_tables(85.0, INSIDE, (60.0, 65.0), (60.0, 62.0)), gated)['passed']


def test_the_check_trains_and_evaluates_the_worlds_own_tasks(tmp_path):
  exp = check.experiment(check.CheckSettings(base_model='c', output_dir=str(tmp_path), world='v3'), 'enfr')
  assert "MIXTURE_OR_TASK_NAME = 'mini3_enfr'" in exp.overrides
  assert "MIXTURE_OR_TASK_MODULE = 'promot_t5x_tasks.synthetic.tasks_v3'" in exp.overrides
  assert "EVAL_SUITE = ['mini3_eval_1shot', 'mini3_probes_1shot']" in exp.eval_overrides
  with pytest.raises(ValueError, match="Unknown world 'v9'.*'v2', 'v3'"):
    check.experiment(check.CheckSettings(base_model='c', world='v9'), 'rte')


def test_the_command_line_gates_headroom_for_the_third_world_only(tmp_path, monkeypatch):
  seen = []

  def fake_run(settings, tasks):
    seen.append((settings.world, settings.gate_headroom, tasks))
    return {'latent_skills': {}, 'probe': {}, 'passed': False}

  monkeypatch.setattr(check, 'run', fake_run)
  for world in ('v2', 'v3'):
    assert check.main(['--base_model=c', f'--world={world}', f'--output={tmp_path}/{world}.json']) == 0
  assert seen == [('v2', False, ('rte', 'enfr')), ('v3', True, ('rte', 'enfr'))]


def test_a_missing_score_names_what_the_results_have():
  tables = _tables(85.0, INSIDE, (60.0, 65.0), (60.0, 62.0))
  del tables['rte']['pretrained'][0]['fewshot_1shot/wic/accuracy']
  with pytest.raises(KeyError, match='fewshot_1shot/wic/accuracy'):
    check.criteria(tables, SETTINGS)


def test_the_probe_trains_prompt_tuning_and_fine_tuning_from_the_candidate(tmp_path):
  settings = check.CheckSettings(base_model='runs/candidate', output_dir=str(tmp_path), steps=7)
  exp = check.experiment(settings, 'rte')
  assert [v.name for v in exp.variants] == ['pretrained', 'prompt_tuning', 'prompt_tuning_equal_steps', 'finetune']
  assert not exp.variants[0].train
  assert "INITIAL_CHECKPOINT_PATH = 'runs/candidate'" in exp.overrides
  assert 'TRAIN_STEPS = 7' in exp.overrides and "MIXTURE_OR_TASK_NAME = 'mini2_rte'" in exp.overrides
  # Prompt tuning trains 5x fine-tuning's steps (the paper's stage 1 : fine-tuning), the
  # variant's binding after the experiment's; the equal-steps variant keeps the 7.
  from promot_t5x import experiment as experiment_lib
  steps = {v.name: [b for b in experiment_lib.variant_bindings(exp, v, 0) if b.startswith('TRAIN_STEPS')][-1]
           for v in exp.variants}
  assert steps == {'pretrained': 'TRAIN_STEPS = 7', 'prompt_tuning': 'TRAIN_STEPS = 35',
                   'prompt_tuning_equal_steps': 'TRAIN_STEPS = 7', 'finetune': 'TRAIN_STEPS = 7'}
  assert 'LEARNING_RATE = 0.2' in exp.variants[1].overrides and 'LEARNING_RATE = 0.2' in exp.variants[2].overrides
  assert 'LEARNING_RATE = 0.001' in exp.variants[3].overrides
  assert not any('DROPOUT' in o or 'LABEL_SMOOTHING' in o for o in exp.overrides + exp.variants[1].overrides)
  assert any('mini2_probes_1shot' in o for o in exp.eval_overrides)
  assert exp.output_dir == str(tmp_path / 'rte')


def test_the_fingerprint_follows_every_value_of_the_parameters(tmp_path):
  import numpy as np

  from promot_t5x import checkpoints, miniature
  from promot_t5x.checkpoints import manager

  params = manager.load_run_params(miniature.BASE_MODEL, 'latest')
  checkpoints.save_params(str(tmp_path / 'same'), params)
  assert check.params_fingerprint(str(tmp_path / 'same')) == check.params_fingerprint(miniature.BASE_MODEL)
  leaf = params['decoder']['decoder_norm']['scale']
  params['decoder']['decoder_norm']['scale'] = np.where(np.arange(leaf.size) == 3, leaf + 1e-3, leaf).astype(leaf.dtype)
  checkpoints.save_params(str(tmp_path / 'changed'), params)
  assert check.params_fingerprint(str(tmp_path / 'changed')) != check.params_fingerprint(miniature.BASE_MODEL)


@pytest.mark.parametrize('world, folder', [('v3', ''), ('v2', 'world_v2')])
def test_each_committed_base_model_is_the_one_that_passed_its_gate(world, folder):
  import json
  import os

  from promot_t5x import miniature

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  doc = json.loads(open(os.path.join(root, 'docs', 'miniature', folder, 'base_model_check.json')).read())
  assert doc['passed'], 'the committed gate record did not pass'
  assert doc['settings'].get('world', 'v2') == world
  assert doc['params_fingerprint'] == check.params_fingerprint(miniature.WORLDS[world][2])
  if world == 'v3':  # the third world's gate holds its candidate to the headroom bounds
    assert doc['settings']['gate_headroom'] and doc['headroom']['passed']


def test_the_check_records_the_candidates_fingerprint_and_the_runs_it_found_done(tmp_path, monkeypatch):
  import json
  import os

  from promot_t5x import experiment as experiment_lib
  from promot_t5x import miniature

  settings = check.CheckSettings(base_model=miniature.BASE_MODEL, output_dir=str(tmp_path), steps=2)
  table = _tables(85.0, INSIDE, (60.0, 65.0), (60.0, 62.0))
  ran = []

  def fake_run(exp):  # the runner's training is tested elsewhere; here only the check's bookkeeping
    ran.append(exp.name)
    os.makedirs(exp.output_dir, exist_ok=True)
    with open(os.path.join(exp.output_dir, 'table.json'), 'w') as f:
      json.dump(table['rte' if 'rte' in exp.name else 'enfr'], f)

  monkeypatch.setattr(experiment_lib, 'run', fake_run)
  exp = check.experiment(settings, 'rte')
  finished = exp.results_path(exp.variants[3], 0)
  os.makedirs(os.path.dirname(finished))
  open(finished, 'w').write('{}')
  doc = check.run(settings)
  assert ran == ['base model check: mini2_rte', 'base model check: mini2_enfr']
  assert doc['runs_done_before'] == 1 and doc['passed']
  assert doc['params_fingerprint'] == check.params_fingerprint(miniature.BASE_MODEL)
  assert len(doc['params_fingerprint']) == 64 and 'output_dir' not in doc['settings']
