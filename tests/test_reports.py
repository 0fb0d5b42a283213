"""Results files, the paper-style table, merging runs (`promot-eval --merge`), plots."""

import json

import numpy as np
import pytest

from promot_t5x import eval as eval_script
from promot_t5x import evaluation, reports

TASKS = {'cb': 'accuracy', 'triviaqa': 'exact_match', 'wmt16_ende': 'bleu'}


def make_result(run, rte, scores, format_rates=None, prompt=None):
  """An EvalResult as promot-eval writes it: the fine-tuned task and a 3-task suite."""
  def task(name, metric, score, fs=None, prompt=None):
    return evaluation.TaskResult(
        task=f'promot_{name}_1shot', name=name, split='eval', num_examples=10, method='beam',
        prompt=prompt, metrics={metric: score}, primary_metric=metric, score=score,
        format_specialization=fs, truncated_inputs=0)
  suite_tasks = {n: task(n, m, s, (format_rates or {}).get(n))
                 for (n, m), s in zip(TASKS.items(), scores)}
  return evaluation.EvalResult(
      run=run, step=100, settings={'decoder': 'beam'},
      suites={'target': evaluation.SuiteResult(
                  'target', 'target', 'eval', {'inputs': 1024, 'targets': 128},
                  {'rte': task('rte', 'accuracy', rte, prompt=prompt)}),
              'fewshot_1shot': evaluation.SuiteResult(
                  'fewshot_1shot', 'suite', 'eval', {'inputs': 1024, 'targets': 128},
                  suite_tasks, norm_avg=float(np.mean(scores)), format_labels=('True', 'False'))})


def test_results_file_round_trip(tmp_path):
  result = make_result('promot', 92.0, [50.0, 20.0, 10.0], {'triviaqa': 5.0}, prompt='task')
  path = reports.write_results(result, str(tmp_path / 'r' / 'results.json'))
  back = reports.read_results(str(tmp_path / 'r'))
  assert back.to_json() == result.to_json()
  assert back.flat_metrics()['fewshot_1shot/norm_avg'] == pytest.approx(80 / 3)
  (tmp_path / 'bad.json').write_text(json.dumps({'suites': {}}))
  with pytest.raises(ValueError, match='not a promot-eval results file'):
    reports.read_results(str(tmp_path / 'bad.json'))
  assert path.endswith('results.json')


def test_paper_table_shows_runs_as_columns_with_deltas_and_seed_spread():
  runs = {
      'pretrained': make_result('pretrained', 47.0, [30.0, 18.0, 6.0], {'triviaqa': 0.0}),
      'finetune': [make_result('finetune', 92.0, [20.0, 0.0, 3.0], {'triviaqa': 90.0}),
                   make_result('finetune', 90.0, [24.0, 2.0, 5.0], {'triviaqa': 80.0})],
      'promot': make_result('promot', 93.0, [33.0, 18.0, 9.0], {'triviaqa': 1.0}, prompt='task'),
  }
  table = reports.paper_table(runs)
  lines = table.splitlines()
  assert lines[2] == '| task (metric) | pretrained | finetune | promot |'
  rows = {line.split(' | ')[0][2:]: line for line in lines if line.startswith('| ')}
  # Norm. Avg.: pretrained 18.00; finetune seeds 7.67 and 10.33 -> 9.00 ± 1.89 (-9.00).
  assert rows['**Norm. Avg.**'] == ('| **Norm. Avg.** | 18.00 | 9.00 ± 1.89 (-9.00) | '
                                    '20.00 (+2.00) |')
  assert rows['rte (accuracy) ‡'] == ('| rte (accuracy) ‡ | 47.00 | 91.00 ± 1.41 (+44.00) | '
                                      '93.00 (+46.00) |')
  assert rows['triviaqa (exact_match)'].endswith(
      '| 18.00 | 1.00 ± 1.41 (-17.00) | 18.00 (+0.00) |')
  order = [line.split(' | ')[0][2:] for line in lines if line.startswith('| ')][1:]
  assert order == ['rte (accuracy) ‡', '**Norm. Avg.**', 'cb (accuracy)',
                   'triviaqa (exact_match)', 'wmt16_ende (bleu)']
  assert 'prompt in: promot.' in table
  # Without a baseline column there are no deltas.
  assert '(+' not in reports.paper_table({k: v for k, v in runs.items() if k != 'pretrained'})

  fs = reports.format_specialization_table(runs)
  assert '| triviaqa | 0.0 | 85.0 ± 7.1 | 1.0 |' in fs
  assert reports.norm_avg_values(runs) == {
      'pretrained': [18.0], 'finetune': [pytest.approx(23 / 3), pytest.approx(31 / 3)],
      'promot': [20.0]}


def test_merge_command_writes_the_table_and_plot(tmp_path, capsys):
  paths = []
  for run, rte, scores in [('pretrained', 47.0, [30.0, 18.0, 6.0]),
                           ('promot', 93.0, [33.0, 18.0, 9.0])]:
    paths.append(reports.write_results(make_result(run, rte, scores),
                                       str(tmp_path / run / 'results.json')))
  out, png = tmp_path / 'table.md', tmp_path / 'norm_avg.png'
  assert eval_script.main(['--merge', *paths, '--names', 'pretrained,ProMoT', '--output',
                           str(out), '--plot', str(png)]) == 0
  table = out.read_text()
  assert '| task (metric) | pretrained | ProMoT |' in table
  assert '| **Norm. Avg.** | 18.00 | 20.00 (+2.00) |' in table
  assert table in capsys.readouterr().out
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 2000
  # One name per file, or a clear error.
  assert eval_script.main(['--merge', *paths, '--names', 'a']) == 2


def test_plots_are_png_files(tmp_path):
  bar = reports.plot_norm_avg({'pretrained': 18.0, 'finetune': [7.7, 10.3], 'promot': [19.5, 20.5]},
                              str(tmp_path / 'bar.png'))
  curves = reports.plot_curves(
      {'RTE accuracy': {'finetune': [{0: 50, 100: 80, 200: 90}, {0: 52, 100: 84, 200: 91}],
                        'promot': {0: 50, 100: 85, 200: 92}},
       'TriviaQA EM': {'finetune': ([0, 100, 200], [17.6, 3.0, 0.2]),
                       'promot': ([0, 100, 200], [17.6, 17.1, 17.4])},
       '% True/False': {'finetune': {0: 0, 100: 60, 200: 90}, 'promot': {0: 0, 100: 1, 200: 2}}},
      str(tmp_path / 'curves.png'), title='format specialization')
  for path in (bar, curves):
    data = open(path, 'rb').read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 2000
  with pytest.raises(ValueError, match='share no step'):
    reports.plot_curves({'x': {'a': [{0: 1.0}, {5: 2.0}]}}, str(tmp_path / 'bad.png'))


def test_curves_from_training_metrics(tmp_path):
  lines = [{'step': 10, 'loss': 1.0},
           {'step': 10, 'eval/rte/accuracy': 60.0,
            'eval/fewshot/triviaqa/format_specialization': 5.0},
           {'step': 20, 'eval/rte/accuracy': 80.0,
            'eval/fewshot/triviaqa/format_specialization': 40.0}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  curves = reports.read_metrics_jsonl(str(tmp_path))
  assert curves == {'rte/accuracy': {10: 60.0, 20: 80.0},
                    'fewshot/triviaqa/format_specialization': {10: 5.0, 20: 40.0}}
