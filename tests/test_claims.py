"""The claims' statistics: t-intervals, verdicts from intervals, and the miniature's claims."""

import math

import pytest

from promot_t5x import claims as C


def test_estimate_is_the_t_interval():
  est = C.Estimate.of([1.0, 2.0, 3.0, 4.0, 5.0])
  # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445
  half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
  assert est.mean == pytest.approx(3.0)
  assert est.ci95 == pytest.approx((3.0 - half, 3.0 + half), abs=1e-5)
  assert est.n == 5
  assert C.Estimate.of([7.0]).ci95 is None
  with pytest.raises(ValueError, match='at least one'):
    C.Estimate.of([])


@pytest.mark.parametrize('ci,test,bound,expected', [
    ((1.0, 2.0), 'above', 0.0, C.SUPPORTED),
    ((-2.0, -1.0), 'above', 0.0, C.NOT_SUPPORTED),
    ((-1.0, 1.0), 'above', 0.0, C.INCONCLUSIVE),
    ((-2.0, -1.0), 'below', 0.0, C.SUPPORTED),
    ((0.5, 1.0), 'below', 0.0, C.NOT_SUPPORTED),
    ((-1.5, 1.9), 'within', 2.0, C.SUPPORTED),
    ((2.5, 4.0), 'within', 2.0, C.NOT_SUPPORTED),
    ((-9.0, -3.0), 'within', 2.0, C.NOT_SUPPORTED),
    ((1.0, 3.0), 'within', 2.0, C.INCONCLUSIVE),
])
def test_verdicts_follow_from_the_interval(ci, test, bound, expected):
  assert C.verdict(C.Estimate(sum(ci) / 2, ci, 5), test, bound) == expected


def test_one_seed_is_inconclusive_and_unknown_tests_fail():
  assert C.verdict(C.Estimate(5.0, None, 1), 'above', 0.0) == C.INCONCLUSIVE
  with pytest.raises(ValueError, match='Unknown test'):
    C.verdict(C.Estimate(5.0, (4.0, 6.0), 3), 'greater', 0.0)


def _tables():
  seeds = range(5)
  row = lambda norm, task: {'fewshot_1shot/norm_avg': norm, 'rte/accuracy': task}
  return {'rte': {
      'pretrained': [row(60.0, 0.0)],
      'finetune': [row(30.0 + s, 95.0 + s % 2) for s in seeds],
      'promot': [row(50.0 + s, 95.5 + s % 2) for s in seeds],
      'promot_1shot': [row(50.0 + s + (1 if s % 2 else -1), 95.0) for s in seeds],
  }}


def test_miniature_claims_compute_paired_differences_and_verdicts():
  claims = {c.id: c for c in C.miniature_claims(_tables())}
  assert claims['C1-rte'].tested.mean == pytest.approx(-28.0)  # 32 - 60
  assert claims['C1-rte'].verdict == C.SUPPORTED
  assert claims['C2-rte'].tested.mean == pytest.approx(20.0)  # paired: ProMoT - fine-tuning, per seed
  assert claims['C2-rte'].tested.ci95 == pytest.approx((20.0, 20.0))
  assert claims['C2-rte'].verdict == C.SUPPORTED
  assert claims['C3-rte'].tested.mean == pytest.approx(0.5)
  assert claims['C3-rte'].verdict == C.SUPPORTED
  assert claims['C6-rte'].verdict == C.INCONCLUSIVE  # +-1 around ProMoT
  assert set(claims['C2-rte'].groups) == {'finetune', 'promot'}
  assert 'inconclusive' in claims['C6-rte'].reading


def test_unpaired_seeds_are_refused():
  tables = _tables()
  tables['rte']['promot'] = tables['rte']['promot'][:3]
  with pytest.raises(ValueError, match='same seeds'):
    C.miniature_claims(tables)


def test_curve_claims():
  curves = {'finetune': [{'qa_true_false': {'0': 0.0, '30': 40.0 + s, '150': 90.0},
                          'grad_alignment': {'0': 0.95 + s / 100, '30': 0.5}} for s in range(5)],
            'promot': [{'qa_true_false': {'0': 0.0, '30': 1.0, '150': 5.0 + s}} for s in range(5)]}
  claims = {c.id: c for c in C.miniature_claims(_tables(), curves)}
  assert claims['C4'].tested.mean == pytest.approx(42.0)
  assert claims['C4'].verdict == C.SUPPORTED
  assert claims['C5'].tested.mean == pytest.approx(-83.0)
  assert claims['C9'].verdict == C.SUPPORTED


def test_claims_file_is_checked(tmp_path):
  claims = C.miniature_claims(_tables())
  path = C.write_claims(str(tmp_path / 'claims.json'), claims, {'seeds': [0, 1, 2, 3, 4]})
  import json
  data = json.load(open(path))
  assert C.check_claims_file(data) == []
  assert (tmp_path / 'claims.md').read_text().count('| C') == len(claims)
  data['claims'][0]['verdict'] = C.NOT_SUPPORTED
  assert 'does not follow' in C.check_claims_file(data)[0]


@pytest.mark.parametrize('folder', ['', 'reproduction_fresh_clone', 'world_v2', 'world_v1', 'extras', 'extras/controls',
                                    'extras/curves128', 'world_v2/extras', 'world_v1/extras'])
def test_committed_claims_are_those_of_the_committed_run(folder):
  """docs/miniature/claims.json (`make run`, the third world, and a second fresh clone's;
  the earlier worlds', world_v2/ and world_v1/; each world's extras; the third world's
  controls and its 128-item curves) is what the claims code computes from the committed
  run's tables."""
  import json
  import pathlib

  docs = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'miniature' / folder
  found, info = C.claims_from_summary(json.loads((docs / 'summary.json').read_text()))
  committed = json.loads((docs / 'claims.json').read_text())
  assert C.check_claims_file(committed) == []
  assert [c['id'] for c in committed['claims']] == [c.id for c in found]
  for c, new in zip(committed['claims'], found):
    assert c['verdict'] == new.verdict and c['tested']['mean'] == pytest.approx(new.tested.mean), c['id']
  assert committed['settings']['seeds'] == info['seeds']
  # The example counts are those scored (from the summary), as promot-miniature records them.
  for key in ('eval_examples_per_task', 'task_test_examples', 'examples_scored', 'model_learning_rate'):
    assert committed['settings'][key] == info[key], key
  assert info['task_test_examples'] >= 256 and info['eval_examples_per_task'] >= 128


@pytest.mark.parametrize('folder', ['extras/controls', 'world_v2/extras'])
def test_committed_dose_responses_are_those_of_their_runs(folder):
  """Each committed dose_response.json's Norm. Avg. change and task score per dose are what
  its run's tables (summary.json) give: each dose's runs minus the pretrained model, a
  mean with its t-interval over the seeds."""
  import json
  import pathlib

  from promot_t5x import miniature

  docs = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'miniature' / folder
  summary = json.loads((docs / 'summary.json').read_text())
  dose = json.loads((docs / 'dose_response.json').read_text())
  assert dose['seeds'] == summary['settings']['seeds']
  for task, doses in dose['tasks'].items():
    table = summary['tables'][task]
    base = table['pretrained'][0][C.NORM_AVG]
    assert [int(n) for n in doses] == summary['settings']['dose_steps']
    for n, d in doses.items():
      rows = table[miniature.dose_variant(int(n))]
      assert len(rows) == len(dose['seeds']) == d['norm_avg_change']['n']
      for key, values in (('norm_avg_change', [r[C.NORM_AVG] - base for r in rows]),
                          ('task_score', [r[C.TASK_SCORE[task]] for r in rows])):
        expected = C.Estimate.of(values).as_dict()
        assert d[key]['mean'] == pytest.approx(expected['mean']), (n, key)
        assert d[key]['ci95'] == pytest.approx(expected['ci95']), (n, key)


@pytest.mark.parametrize('folder', ['', 'world_v2', 'world_v1'])
def test_the_recorded_second_run_reproduces_the_committed_verdicts(folder):
  """docs/results.md says a second run of the same command (`reproduction/` beside the
  committed claims) gives every claim the committed verdict, its tested mean inside the
  committed interval."""
  import json
  import pathlib

  docs = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'miniature' / folder
  committed = json.loads((docs / 'claims.json').read_text())
  second = json.loads((docs / 'reproduction' / 'claims.json').read_text())
  assert C.check_claims_file(second) == []
  # The same settings; the command may differ in its --output_dir (and in --world, which
  # became the default).
  assert {k: v for k, v in second['settings'].items() if k != 'command'} == {
      k: v for k, v in committed['settings'].items() if k != 'command'}
  assert [c['id'] for c in second['claims']] == [c['id'] for c in committed['claims']]
  for old, new in zip(committed['claims'], second['claims']):
    assert new['verdict'] == old['verdict'], old['id']
    # (C9's interval has zero width: its alignment is measured at step 0, the same in
    # every seed; the runs' summation orders differ in the last float digits.)
    low, high = old['tested']['ci95']
    assert low - 1e-6 <= new['tested']['mean'] <= high + 1e-6, (old['id'], new['tested'], old['tested'])


def test_readme_claims_tables_are_the_committed_claims_files(tmp_path):
  """The README's claims tables are generated from the claims.json files they name, never typed."""
  import json
  import pathlib
  import re

  root = pathlib.Path(__file__).resolve().parents[1]
  readme = (root / 'README.md').read_text()

  def load(path):
    return json.loads((root / path).read_text())

  blocks = re.findall(r'<!-- claims table from ([^\s#]+)(?:#([\w,-]+))?:', readme)
  assert ('docs/miniature/claims.json', '') in blocks  # `make run`'s
  assert C.update_readme(readme, load) == readme, 'run: python -m promot_t5x.claims --readme=README.md'
  for path, ids in blocks:
    doc = load(path)
    shown = [c for c in doc['claims'] if not ids or c['id'] in ids.split(',')]
    table = C.readme_table(doc, ids.split(',') if ids else None)
    assert table in readme
    assert table.count('\n| C') == len(shown) > 0
    for c in shown:
      assert table.split(f'| {c["id"]} |')[1].split('\n')[0].endswith(f'| {c["verdict"]} |')
  # The command rewrites a stale block from the file it names, and refuses a README without one
  # or a claims file whose verdicts do not follow from its intervals.
  (tmp_path / 'claims.json').write_text((root / 'docs' / 'miniature' / 'claims.json').read_text())
  stale = tmp_path / 'README.md'
  begin = C.README_BEGIN.format(path='claims.json')
  stale.write_text(f'# x\n{begin}\n| old |\n{C.README_END}\nafter\n')
  assert C.main([f'--readme={stale}']) == 0
  expected = C.readme_table(load('docs/miniature/claims.json'))
  assert stale.read_text() == f'# x\n{begin}\n{expected}\n{C.README_END}\nafter\n'
  doc = load('docs/miniature/claims.json')
  doc['claims'][0]['verdict'] = 'supported' if doc['claims'][0]['verdict'] != 'supported' else 'inconclusive'
  (tmp_path / 'claims.json').write_text(json.dumps(doc))
  with pytest.raises(SystemExit):
    C.main([f'--readme={stale}'])
  stale.write_text(f'{C.README_BEGIN.format(path="claims.json#C99")}\n{C.README_END}\n')
  with pytest.raises(SystemExit):  # (the claims file is the bad one above; fix it first)
    C.main([f'--readme={stale}'])
  (tmp_path / 'claims.json').write_text((root / 'docs' / 'miniature' / 'claims.json').read_text())
  with pytest.raises(SystemExit):  # no claim C99
    C.main([f'--readme={stale}'])
  stale.write_text('# no markers\n')
  with pytest.raises(SystemExit):
    C.main([f'--readme={stale}'])


def test_the_recorded_run_at_learning_rate_0_01_is_what_results_md_shows():
  """docs/results.md compares the first world's committed run with one at model learning rate
  0.01 (docs/miniature/world_v1/lr0.01/); its table rows are the two claims files' numbers and
  verdicts."""
  import json
  import pathlib

  root = pathlib.Path(__file__).resolve().parents[1]
  v1 = root / 'docs' / 'miniature' / 'world_v1'
  committed = json.loads((v1 / 'claims.json').read_text())
  low_lr = json.loads((v1 / 'lr0.01' / 'claims.json').read_text())
  assert C.check_claims_file(low_lr) == []
  assert low_lr['settings']['model_learning_rate'] == 0.01
  assert low_lr['settings']['seeds'] == committed['settings']['seeds']
  assert low_lr['settings']['examples_scored'] == committed['settings']['examples_scored']
  results = (root / 'docs' / 'results.md').read_text()
  by_id = {c['id']: c for c in low_lr['claims']}
  rows = 0
  for c in committed['claims']:
    if c['id'] in by_id:
      d = by_id[c['id']]
      row = (f"| {c['id']} | {C.estimate_text(c['tested'], 1)} | {c['verdict']} | "
             f"{C.estimate_text(d['tested'], 1)} | {d['verdict']} |")
      assert row in results, row
      rows += 1
  assert rows == len(low_lr['claims']) >= 8


def test_miniature_claims_name_the_worlds_tasks():
  first = C.miniature_claims(_tables())
  second = C.miniature_claims(_tables(), prefix='mini2_')
  assert [c.id for c in first] == [c.id for c in second]
  assert any('mini_rte' in c.measure for c in first)
  assert all('mini_rte' not in c.measure for c in second) and any('mini2_rte' in c.measure for c in second)
  # Only the names differ: the numbers and verdicts are the same.
  assert [(c.tested.mean, c.verdict) for c in first] == [(c.tested.mean, c.verdict) for c in second]
