"""Every registered paper task yields well-formed examples from mock TFDS data.

TFDS is mocked from each builder's feature spec
(`tfds.testing.mock_data(policy=USE_CODE)`): random strings, no download, no
TFDS_DATA_DIR. The tasks are registered with the fixture vocabulary under a
test prefix.
"""

import re

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds
from promot_t5x_tasks import paper, templates, vocab

from promot_t5x import metrics

PREFIX = 'test_paper_mock_'

_FAMILY_PATTERN = {
    paper.CLASSIFICATION: r'^.* question: .* Is it true or false( or neither)?\? answer:$',
    paper.QA: r'^Q: .* A:$',
    paper.TRANSLATION: r'^Translate English to (French|German|Romanian): .*$',
    paper.SUMMARIZATION: r'^Article: .* One sentence summary:$',
}


@pytest.fixture(scope='module')
def mock_tasks(fixtures_dir):
  vocabulary = vocab.sentencepiece_vocabulary(str(fixtures_dir / 'sentencepiece.model'),
                                              extra_ids=0)
  paper.register_paper_tasks(vocabulary, prefix=PREFIX, overwrite=True)
  # 8 examples per split: enough for a 4-shot pool once the query is left out.
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=8):
    yield


def first_example(task_name, split):
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset({'inputs': 2048, 'targets': 256}, split=split, shuffle=False,
                        try_in_mem_cache=False)
  return next(ds.as_numpy_iterator())


@pytest.mark.parametrize('stem', sorted(paper.PAPER_DATASETS))
def test_every_task_yields_examples(mock_tasks, stem):
  dataset = paper.PAPER_DATASETS[stem]
  for k in paper.SHOTS:
    # The scored split; for fine-tuning tasks also train at 1 shot ("+1-shot training").
    splits = [paper.EVAL_SPLIT]
    if stem in paper.FINETUNE_DATASETS and k == 1:
      splits.append('train')
    for split in splits:
      ex = first_example(paper.task_name(stem, k, PREFIX), split)
      assert ex['inputs'].dtype == np.int32 and ex['inputs'][-1] == 1  # EOS
      assert ex['targets'][-1] == 1
      query = ex['query_inputs'].decode()
      pattern = (r'^Q: .* A\) .* B\) .* C\) .* D\) .* A:$' if stem == 'openbookqa'
                 else _FAMILY_PATTERN[dataset.family])
      assert re.match(pattern, query, re.DOTALL), query
      demos = [d.decode() for d in ex['demonstration_inputs']]
      assert len(demos) == k == len(ex['demonstration_targets'])
      assert query not in demos
      pairs = list(zip(demos, (t.decode() for t in ex['demonstration_targets'])))
      assert ex['inputs_pretokenized'].decode() == templates.with_demonstrations(query, pairs)
      if dataset.label_words:
        assert ex['targets_pretokenized'].decode() in dataset.label_words
        assert all(t.decode() in dataset.label_words for t in ex['demonstration_targets'])


def test_qa_task_postprocesses_and_scores_like_the_evaluator(mock_tasks):
  """The evaluator's path: postprocess targets (with the example) and outputs, then score."""
  task = seqio.get_mixture_or_task(PREFIX + 'triviaqa_1shot')
  ex = first_example(task.name, paper.EVAL_SPLIT)
  target = task.postprocess_fn(ex['targets_pretokenized'].decode(), example=ex, is_target=True)
  assert target == [a.decode() for a in ex['answers']]
  alias = ex['answers'][-1].decode()
  prediction = task.postprocess_fn(f'The {alias}. Q: what else? A:', example=ex,
                                   is_target=False)
  assert prediction == f'The {alias}.'
  assert task.metric_fns[0](targets=[target], predictions=[prediction]) == {'exact_match': 100.0}

  cb = seqio.get_mixture_or_task(PREFIX + 'cb_4shot')
  assert cb.postprocess_fn('Neither. Q: next', example=None, is_target=False) == 'Neither'
  assert metrics.accuracy(['Neither'], ['Neither'])['accuracy'] == 100.0


def test_multitask_training_mixture_mixes_rte_and_en_fr(mock_tasks):
  mixture = seqio.get_mixture_or_task(paper.multitask_mixture_name(1, PREFIX))
  ds = mixture.get_dataset({'inputs': 2048, 'targets': 256}, split='train', shuffle=False,
                           try_in_mem_cache=False, copy_pretokenized=True)
  seen = set()
  for ex in ds.take(12).as_numpy_iterator():
    # Task-specific extras (answers, demonstrations) are filtered out before mixing.
    assert set(ex) == {'inputs', 'targets', 'inputs_pretokenized', 'targets_pretokenized'}
    text = ex['inputs_pretokenized'].decode()
    seen.add('enfr' if text.startswith('Translate English to French:') else 'rte')
    if text.startswith('Translate'):
      assert text.count('Translate English to French:') == 2  # 1 demonstration + the query
    else:
      assert text.count('Is it true or false? answer:') == 2
  assert seen == {'enfr', 'rte'}
