"""bench/inference_format.py: its questions are the second world's, its labels and kinds follow from the text."""

import pathlib
import re
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))

import inference_format as bench  # noqa: E402
from promot_t5x_tasks.synthetic import world as world_lib  # noqa: E402

QUESTION = re.compile(r'Q: (?P<premise>.*) Does it say that (?P<hypothesis>.*)\? A:$')


@pytest.fixture(scope='module')
def world():
  return world_lib.get_world(world_lib.WORLD_V2)


def _parts(text: str, twins: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
  """The premise's and the hypothesis's words (lower case), twin tokens read back as their values."""
  match = QUESTION.match(text)
  assert match, text
  hypothesis = re.sub(r'<extra_id_\d+>', lambda m: twins[m.group(0)], match['hypothesis']) if twins \
      else match['hypothesis']
  return world_lib.words_of(match['premise'].lower()), world_lib.words_of(hypothesis.lower())


@pytest.mark.parametrize('hypothesis', bench.HYPOTHESES)
def test_labels_and_kinds_follow_from_the_question(world, hypothesis):
  """The answer is "yes" exactly when the hypothesis's value (read back to English) is in the premise."""
  values = {v.lower(): r.name for r in world.relations for v in r.values}
  twins = {}
  if hypothesis == 'twin':
    common = sorted(set(values) - {c.lower() for c in world.cities})
    twins = {f'<extra_id_{20 + k}>': v for k, v in enumerate(common)}
  draw, rng = bench.renderer(hypothesis, 0), np.random.default_rng(5)
  seen = set()
  for _ in range(300):
    text, answer, kind = draw(rng)
    premise, hyp = _parts(text, twins)
    if hypothesis == 'lumic':
      hyp = [world.lumic_inverse.get(w, w) for w in hyp]
    hyp_values = [w for w in hyp if w in values]
    assert len(hyp_values) == 1, (text, hyp)
    premise_values = [w for w in premise if w in values]
    entailed = hyp_values[0] in premise_values
    assert (answer == 'yes') == entailed, text
    expected = 0 if entailed else (1 if values[hyp_values[0]] in {values[w] for w in premise_values} else 2)
    assert kind == expected, text
    # Only the English hypothesis writes a value word as it is (cities are kept by all).
    written = set(_parts(text)[1]) & set(values)
    assert bool(written) == (hypothesis == 'english' or values[hyp_values[0]] == 'city'), text
    seen.add(kind)
  assert seen == {0, 1, 2}


def test_batches_hold_the_question_and_its_answer():
  from promot_t5x_tasks.synthetic import vocabulary
  vocab = vocabulary.get_vocabulary()
  x, t, y, kinds, (yes, no) = next(bench.batches(seed=1, hypothesis='twin', shots=0, length=64))
  assert x.shape == (bench.BATCH, 64) and t.shape == (bench.BATCH, 2)
  assert ((t[:, 0] == yes) == y).all() and ((t[:, 0] == no) == ~y).all() and (t[:, 1] == 1).all()
  assert ((kinds == 0) == y).all()
  for row in x[:8]:
    ids = [int(i) for i in row if i > 1]
    assert row[len(ids)] == 1  # EOS right after the question, padding after it
    assert QUESTION.match(vocab.decode(ids)), vocab.decode(ids)
  # One-shot questions carry a demonstration before the query.
  x1, *_ = next(bench.batches(seed=1, hypothesis='english', shots=1, length=128))
  assert all(vocab.decode([int(i) for i in row if i > 1]).count('Does it say that') == 2 for row in x1[:8])
