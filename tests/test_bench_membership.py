"""bench/membership_plateau.py: each probe task's labels follow its definition."""

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))

import membership_plateau as mp  # noqa: E402


def _label(task: str, row: np.ndarray) -> int:
  """The answer each task asks for, recomputed from the input alone."""
  query, body = int(row[-1]), [int(t) for t in row[:-2]]
  if task in ('search', 'half'):
    return int(query in body)
  if task == 'marked':
    return int(query - mp.MID + mp.FIRST in body)
  if task == 'aligned':
    return int(query == body[0])
  if task == 'control':
    return int(query < mp.MID)
  if task == 'fixed':
    return int(mp.FIRST in body)
  raise AssertionError(f'no label rule for task {task!r}')


@pytest.mark.parametrize('task', mp.TASKS)
def test_labels_follow_the_task(task):
  data = mp.batches(seed=3, length=12, task=task)
  rows, labels = [], []
  for _ in range(4):
    x, t, y = next(data)
    assert x.shape == (mp.BATCH, 12) and x.min() >= mp.SEPARATOR and x.max() < mp.VOCAB
    assert (x[:, -2] == mp.SEPARATOR).all()
    assert ((t[:, 0] == mp.YES) == (y == 1)).all() and (t[:, 1] == mp.EOS).all()
    rows += list(x)
    labels += list(y)
  assert [_label(task, r) for r in rows] == labels
  assert 0.35 < np.mean(labels) < 0.65  # balanced: a constant answer scores about half


def test_half_and_marked_keep_to_their_vocabularies():
  for task in ('half', 'marked'):
    x, _, _ = next(mp.batches(seed=0, length=24, task=task))
    assert x[:, :-2].max() < mp.MID
    queries = x[:, -1]
    assert ((queries >= mp.MID) if task == 'marked' else (queries < mp.MID)).all()
