"""The conjugate-prompting report on a hand-made score table.

drop = pretrained - model; recovery = (drop[identity] - drop[transform]) /
drop[identity], defined when drop[identity] > 0.
"""

import json

import matplotlib.image
import pytest

from promot_t5x import conjugate

SCORES = {
    'pretrained': {'identity': {'cb': 60.0, 'triviaqa': 20.0},
                   'french': {'cb': 50.0, 'triviaqa': 16.0},
                   'leetspeak': {'cb': 30.0}},
    'finetuned': {'identity': {'cb': 40.0, 'triviaqa': 0.0},
                  'french': {'cb': 45.0, 'triviaqa': 12.0},
                  'leetspeak': {'cb': 30.0}},
    'promot': {'identity': {'cb': 62.0, 'triviaqa': 18.0},
               'french': {'cb': 52.0, 'triviaqa': 17.0}},
}


def test_recovery_definition():
  assert conjugate.recovery(20.0, 5.0) == 0.75  # three quarters of the drop won back
  assert conjugate.recovery(20.0, 20.0) == 0.0  # no better than the plain prompt
  assert conjugate.recovery(20.0, 0.0) == 1.0  # no drop under the transform
  assert conjugate.recovery(10.0, 15.0) == -0.5  # worse than the plain prompt
  assert conjugate.recovery(0.0, 5.0) is None  # nothing to recover
  assert conjugate.recovery(-2.0, 5.0) is None
  assert conjugate.drop(60.0, 45.0) == 15.0


def test_report_numbers_on_a_hand_made_table(tmp_path):
  report = conjugate.conjugate_report(SCORES, tmp_path)
  assert report.models == ('pretrained', 'finetuned', 'promot')
  assert [(r.transform, r.task) for r in report.rows] == [
      ('identity', 'cb'), ('identity', 'triviaqa'), ('identity', 'mean'),
      ('french', 'cb'), ('french', 'triviaqa'), ('french', 'mean'),
      ('leetspeak', 'cb')]

  cb = report.row('french', 'cb')
  assert cb.scores == {'pretrained': 50.0, 'finetuned': 45.0, 'promot': 52.0}
  assert cb.drops == {'finetuned': 5.0, 'promot': -2.0}
  # finetuned: (20 - 5) / 20; promot gained under the plain prompt: undefined.
  assert cb.recoveries == {'finetuned': 0.75, 'promot': None}

  trivia = report.row('french', 'triviaqa')
  assert trivia.recoveries['finetuned'] == pytest.approx((20 - 4) / 20)
  assert trivia.recoveries['promot'] == pytest.approx((2 - (-1)) / 2)

  assert report.row('identity', 'cb').recoveries == {'finetuned': 0.0, 'promot': None}
  mean = report.row('french', 'mean')
  assert mean.scores == {'pretrained': 33.0, 'finetuned': 28.5, 'promot': 34.5}
  # Recovery of the mean comes from mean drops: (20 - 4.5) / 20.
  assert mean.recoveries['finetuned'] == pytest.approx(0.775)

  leet = report.row('leetspeak', 'cb')  # promot was not evaluated under leetspeak
  assert leet.scores['promot'] is None and leet.drops['promot'] is None
  assert leet.drops['finetuned'] == 0.0 and leet.recoveries['finetuned'] == 1.0


def test_report_files(tmp_path):
  report = conjugate.conjugate_report(SCORES, tmp_path / 'out', title='RTE fine-tuning')
  markdown = report.markdown_path.read_text()
  assert markdown == report.markdown
  assert markdown.startswith('# RTE fine-tuning')
  assert ('| transform | task | pretrained | finetuned | promot | drop finetuned | '
          'recovery finetuned | drop promot | recovery promot |') in markdown
  assert '| french | cb | 50.00 | 45.00 | 52.00 | 5.00 | 0.75 | -2.00 | – |' in markdown
  saved = json.loads(report.json_path.read_text())
  assert saved['models'] == ['pretrained', 'finetuned', 'promot']
  assert saved['rows'][3] == {
      'transform': 'french', 'task': 'cb',
      'scores': {'pretrained': 50.0, 'finetuned': 45.0, 'promot': 52.0},
      'drops': {'finetuned': 5.0, 'promot': -2.0},
      'recoveries': {'finetuned': 0.75, 'promot': None}}
  image = matplotlib.image.imread(report.plot_path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_report_needs_the_reference_model(tmp_path):
  with pytest.raises(ValueError, match="no 'pretrained' model"):
    conjugate.conjugate_report({'finetuned': SCORES['finetuned']}, tmp_path)
  report = conjugate.conjugate_report({'base': SCORES['pretrained'], 'ft': SCORES['finetuned']},
                                      tmp_path, reference='base')
  assert report.row('french', 'cb').recoveries == {'ft': 0.75}
