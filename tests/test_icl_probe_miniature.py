"""The official probe in the miniature's vocabulary: registration, promot-eval, the report.

The tasks `mini_icl_probe_official*` must render the mT5 tasks' prompts
exactly and tokenize them with the synthetic world's vocabulary; promot-eval
runs them on the committed base model, and `promot_t5x.miniature_probe`
writes the report from it (pretrained column; the fine-tuned and ProMoT runs
are not committed).
"""

import json

import pytest
import seqio
from promot_t5x_tasks import conjugate as nl
from promot_t5x_tasks import icl_probe, icl_probe_miniature
from promot_t5x_tasks.synthetic import vocabulary as mini_vocabulary

from promot_t5x import eval as eval_script
from promot_t5x import miniature, miniature_probe, reports


def _first_inputs(name):
  source = seqio.get_mixture_or_task(name).source
  return next(iter(source.get_dataset(icl_probe.SPLIT).take(1).as_numpy_iterator()))


def test_miniature_registration_matches_the_mt5_tasks():
  assert icl_probe_miniature.PREFIX == 'mini'
  for rendering in nl.PROBE_RENDERINGS:
    assert icl_probe.mixture_name(rendering, 'mini') in seqio.MixtureRegistry.names()
  for icl_task, kind in icl_probe.TASK_PAIRS:
    for rendering in ('english', 'french', 'leetspeak'):
      mini = seqio.get_mixture_or_task(icl_probe.task_name(icl_task, kind, rendering, 'mini'))
      assert mini.output_features['inputs'].vocabulary is mini_vocabulary.get_vocabulary()
      assert mini.output_features['targets'].vocabulary is mini_vocabulary.get_vocabulary()
      mt5 = icl_probe.task_name(icl_task, kind, rendering)
      assert (seqio.get_mixture_or_task(mt5).output_features['inputs'].vocabulary
              is not mini_vocabulary.get_vocabulary())
      assert _first_inputs(mini.name) == _first_inputs(mt5)
  english = _first_inputs('mini_icl_probe_official_capitalize_math')
  assert english['inputs'].decode().endswith('Input: What is 9 minus 7?\nOutput:')


def test_unknown_pieces():
  counts = icl_probe_miniature.unknown_piece_counts()
  assert set(counts) == set(nl.PROBE_RENDERINGS)
  # No digits or underscores in the world: every query holds an unknown piece;
  # the blanks' answers (underscores) always, "What" never.
  assert counts['english'] == (400, 200, 400)
  assert counts['leetspeak'] == (400, 400, 400)


@pytest.mark.slow
def test_promot_eval_and_report_on_the_base_model(tmp_path):
  out = tmp_path / 'eval'
  assert eval_script.main([
      '--gin_file=miniature/model.gin', '--gin_file=eval/icl_probe_official_miniature.gin',
      f"--gin.CHECKPOINT_PATH='{miniature.BASE_MODEL}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
      "--gin.EVAL_SUITE=['mini_icl_probe_official']", "--gin.EVAL_SUITE_NAMES=['english']",
      '--gin.MAX_EXAMPLES=2']) == 0
  result = reports.read_results(str(out / 'results.json'))
  suite = result.suites['english']
  assert list(suite.tasks) == ['capitalize_math', 'repeat_math', 'capitalize_blank', 'repeat_blank']
  assert result.settings['decoder'] == 'greedy'
  for task in suite.tasks.values():
    assert task.num_examples == 2 and task.primary_metric == 'starts_with_icl_answer'
    assert set(task.metrics) == {'starts_with_icl_answer', 'exact_match_icl_answer'}

  # The report from that evaluation (not re-run: results.json exists).
  eval_dir = tmp_path / 'evals'
  (eval_dir / 'pretrained').mkdir(parents=True)
  out.rename(eval_dir / 'pretrained' / 'seed_0')
  docs = tmp_path / 'docs'
  assert miniature_probe.main([
      f'--miniature_dir={tmp_path / "mini"}', f'--output_dir={docs}', f'--eval_dir={eval_dir}',
      '--models=pretrained', '--renderings=english', '--max_examples=2']) == 0
  data = json.loads((docs / 'icl_probe_official.json').read_text())
  assert data['models'] == ['pretrained'] and data['identity'] == 'english'
  rows = {r['task']: r['scores']['pretrained'] for r in data['rows']}
  assert rows == {**suite.scores, 'mean': pytest.approx(sum(suite.scores.values()) / 4)}
  assert '| english | capitalize_math |' in (docs / 'icl_probe_official.md').read_text()
  assert (docs / 'icl_probe_official.png').exists()


def test_checkpoint_paths_follow_the_miniature_layout():
  paths = miniature_probe.checkpoint_paths('runs/miniature', 'rte', [0, 1], base_model='base')
  assert paths == {'pretrained': [(0, 'base')],
                   'finetune': [(0, 'runs/miniature/rte/finetune/seed_0'),
                                (1, 'runs/miniature/rte/finetune/seed_1')],
                   'promot': [(0, 'runs/miniature/rte/promot/seed_0/stage2'),
                              (1, 'runs/miniature/rte/promot/seed_1/stage2')]}
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    miniature_probe.run('/nonexistent', '/tmp/unused', models=['finetune'])


def test_the_probe_takes_the_base_model_of_the_runs_world(tmp_path):
  """A miniature folder's pretrained model is its own world's (summary.json), not the first's."""
  for world in miniature.WORLDS:
    folder = tmp_path / world
    folder.mkdir()
    (folder / 'summary.json').write_text(json.dumps({'settings': {'world': world}}))
    assert miniature_probe.world_of(str(folder)) == world
  assert miniature_probe.world_of(str(tmp_path / 'unfinished')) == miniature.Settings.world == 'v3'
  (tmp_path / 'old').mkdir()
  (tmp_path / 'old' / 'summary.json').write_text(json.dumps({'settings': {}}))
  assert miniature_probe.world_of(str(tmp_path / 'old')) == 'v1'
