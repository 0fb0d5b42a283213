"""The paper's metrics on hand-made outputs with known scores (all on 0-100)."""

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer, scoring

from promot_t5x import metrics

PREFIXES = ('Q:', 'Translate', 'Article:')


def test_accuracy():
  assert metrics.accuracy(['True', 'False', 'Neither', 'True'],
                          ['True', 'True', 'Neither', 'true']) == {'accuracy': 50.0}


def test_squad_normalization():
  assert metrics.normalize_squad('  The  Beatles!! ') == 'beatles'
  assert metrics.normalize_squad('An apple, a day.') == 'apple day'
  # Articles only as whole words: "theory" keeps its "the".
  assert metrics.normalize_squad('Theory of an Anthem') == 'theory of anthem'


def test_exact_match_takes_the_best_answer():
  targets = [['The Beatles', 'Beatles'], ['Jupiter'], 'Paris', ['Anne Hidalgo']]
  predictions = ['beatles.', 'Saturn', 'the Paris', 'Hidalgo']
  assert metrics.exact_match(targets, predictions) == {'exact_match': 50.0}


def test_bleu_is_sacrebleu_with_t5_settings():
  predictions = ['the cat sat on the mat', 'a dog barked loudly at night', 'hello world']
  references = ['the cat sat on a mat', 'the dog barked at night', 'hello there world']
  expected = sacrebleu.corpus_bleu(predictions, [references], smooth_method='exp',
                                   smooth_value=0.0, tokenize='intl',
                                   use_effective_order=False).score
  assert metrics.bleu(references, predictions)['bleu'] == pytest.approx(expected)
  assert 0 < expected < 100
  assert metrics.bleu(references, references)['bleu'] == pytest.approx(100.0)


def test_bleu_tokenizes_like_t5_intl_not_13a():
  # `intl` splits Unicode punctuation off words; sacrebleu's default `13a` does not.
  predictions = ['Bonjour «le monde» !', 'Il fait beau\u2014très beau.']
  references = ['Bonjour « le monde » !', 'Il fait beau — très beau.']
  assert metrics.bleu(references, predictions)['bleu'] == pytest.approx(100.0)
  assert sacrebleu.corpus_bleu(predictions, [references], tokenize='13a').score < 50


def test_bleu_with_several_references_per_example():
  predictions = ['the cat is on the mat', 'there is a dog']
  references = [['the cat sat on the mat', 'the cat is on the mat'],
                ['a dog is there', 'there is a dog']]
  assert metrics.bleu(references, predictions)['bleu'] == pytest.approx(100.0)
  with pytest.raises(ValueError, match='same number of references'):
    metrics.bleu([['a', 'b'], ['c']], ['a', 'c'])


def test_rouge2_by_hand_and_against_rouge_score():
  # Target bigrams: the cat, cat sat, sat on, on the, the mat (5); prediction: the cat,
  # cat sat (2, both in the target). P = 1, R = 2/5, F = 2PR / (P + R) = 4/7.
  assert metrics.rouge2(['the cat sat on the mat'], ['the cat sat'])['rouge2'] == (
      pytest.approx(100 * 4 / 7))
  targets = ['The cat sat on the mat.', 'Rain is expected in Paris tomorrow.',
             'Stocks fell sharply on Monday.', 'A new bridge opened.']
  predictions = ['A cat sat on a mat.', 'Paris expects rain tomorrow.',
                 'Stocks fell on Monday.', 'Nothing happened.']
  scorer = rouge_scorer.RougeScorer(['rouge2'])
  per_example = [scorer.score(t, p)['rouge2'].fmeasure for t, p in zip(targets, predictions)]
  score = metrics.rouge2(targets, predictions)['rouge2']
  assert score == pytest.approx(100 * np.mean(per_example))
  # T5 reports the bootstrap median of the same mean: close on a corpus, not bit-identical.
  corpus_targets, corpus_predictions = targets * 50, predictions * 50
  aggregator = scoring.BootstrapAggregator()
  for t, p in zip(corpus_targets, corpus_predictions):
    aggregator.add_scores(scorer.score(t, p))
  bootstrap_mid = 100 * aggregator.aggregate()['rouge2'].mid.fmeasure
  corpus_score = metrics.rouge2(corpus_targets, corpus_predictions)['rouge2']
  assert corpus_score == pytest.approx(score)
  assert corpus_score == pytest.approx(bootstrap_mid, abs=2.0)
  assert metrics.rouge2(['a b c'], ['x y z']) == {'rouge2': 0.0}


def test_metrics_reject_mismatched_or_empty_inputs():
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.accuracy(['True', 'False'], ['True'])
  with pytest.raises(ValueError, match='empty'):
    metrics.rouge2([], [])


def test_normalized_average_is_the_plain_mean():
  scores = {'cb': 50.0, 'wic': 50.0, 'triviaqa': 17.58, 'webquestions': 10.0,
            'wmt16_ende': 20.0, 'wmt16_enro': 15.0, 'xsum': 5.0, 'wikilingua_en': 4.0}
  assert metrics.normalized_average(scores) == pytest.approx(sum(scores.values()) / 8)
  assert metrics.normalized_average([10.0, 30.0]) == 20.0
  # A perfect Rouge-2 averaged in floating point can exceed 100 by a rounding error.
  assert metrics.normalized_average([100.00000000000004, 0.0]) == 50.0
  with pytest.raises(ValueError, match='0-100'):
    metrics.normalized_average([4750.0])


def test_format_specialization_rate():
  # After RTE fine-tuning, TriviaQA answers drift to the True/False format.
  outputs = ['True', 'False. Q: who is', 'Paris Q: True', 'true', 'Q: True', 'Jupiter']
  rate = metrics.format_specialization_rate(outputs, {'True', 'False'}, PREFIXES)
  assert rate == pytest.approx(100 * 2 / 6)
  metric = metrics.format_specialization_metric(('True', 'False'), PREFIXES)
  assert metric(targets=['x', 'y'], predictions=['False', 'y']) == {'format_specialization': 50.0}
  with pytest.raises(ValueError, match='label_set'):
    metrics.format_specialization_rate(['True'], set(), PREFIXES)
