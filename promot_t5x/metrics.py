"""The paper's metrics, every one on a 0-100 scale.

Metric functions have seqio's signature `(targets, predictions) -> {name: value}`
and receive post-processed text (`promot_t5x.postprocessing`):

| function | tasks | how |
|---|---|---|
| `accuracy` | CB, WiC, RTE, SNLI | exact string equality with the label word |
| `exact_match` | TriviaQA, WebQuestions, OpenbookQA | SQuAD normalization, best over the answers |
| `bleu` | WMT | corpus BLEU as T5's evaluation computes it (below) |
| `rouge2` | XSum, WikiLingua | Rouge-2 F as T5's evaluation computes it (below) |

BLEU: `sacrebleu.corpus_bleu` with the settings of `t5.evaluation.metrics.bleu`:
exponential smoothing, the `intl` tokenizer (not sacrebleu's default `13a`),
case-sensitive, no effective order. One reference per example, or several
(the same number for every example).

Rouge-2: `rouge_score`'s scorer with its default tokenizer (lowercase,
alphanumeric tokens) and no stemming, as in `t5.evaluation.metrics.rouge`;
the score is the mean over examples of the F-measure. T5 reports the median
of a 1,000-sample bootstrap of that mean (`BootstrapAggregator` "mid"), which
is the same quantity up to resampling noise; the plain mean is reproducible.

Suite-level numbers: `normalized_average` (the paper's "Norm. Avg.": the
plain mean of the task scores) and `format_specialization_rate` (how often a
model answers a task in the fine-tuned task's label format).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from promot_t5x import postprocessing

_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = set(string.punctuation)


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions; '
                     'metrics need one prediction per target.')
  if not targets:
    raise ValueError('No examples to score: targets and predictions are empty.')


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """{'accuracy': percent of predictions equal to their target}."""
  _check_lengths(targets, predictions)
  return {'accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def normalize_squad(text: str) -> str:
  """SQuAD's answer normalization: lowercase, drop punctuation and a/an/the, squeeze spaces."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(' ', text)
  return ' '.join(text.split())


def exact_match(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]
                ) -> dict[str, float]:
  """{'exact_match': percent of predictions equal to one of their answers, normalized}.

  Args:
    targets: per example, the answer or a list of acceptable answers.
    predictions: per example, the post-processed output.
  """
  _check_lengths(targets, predictions)
  hits = []
  for answers, prediction in zip(targets, predictions):
    answers = [answers] if isinstance(answers, str) else list(answers)
    normalized = normalize_squad(prediction)
    hits.append(any(normalize_squad(a) == normalized for a in answers))
  return {'exact_match': 100.0 * float(np.mean(hits))}


def bleu(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """{'bleu': corpus BLEU} with T5's sacrebleu settings (module docstring)."""
  _check_lengths(targets, predictions)
  if all(isinstance(t, str) for t in targets):
    reference_streams = [list(targets)]
  else:
    counts = {len(t) for t in targets}
    if len(counts) != 1 or any(isinstance(t, str) for t in targets):
      raise ValueError('bleu needs one reference per example or the same number of '
                       f'references for every example; got reference counts {sorted(counts)}.')
    reference_streams = [[t[j] for t in targets] for j in range(counts.pop())]
  score = sacrebleu.corpus_bleu(list(predictions), reference_streams, smooth_method='exp',
                                smooth_value=0.0, force=False, lowercase=False,
                                tokenize='intl', use_effective_order=False)
  return {'bleu': float(score.score)}


def rouge2(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """{'rouge2': mean Rouge-2 F-measure x 100} (module docstring)."""
  _check_lengths(targets, predictions)
  scorer = rouge_scorer.RougeScorer(['rouge2'])
  scores = [scorer.score(target=t, prediction=p)['rouge2'].fmeasure
            for t, p in zip(targets, predictions)]
  return {'rouge2': min(100.0, 100.0 * float(np.mean(scores)))}


def normalized_average(scores: Mapping[str, float] | Iterable[float]) -> float:
  """The paper's "Norm. Avg.": the plain mean of task scores, each already on 0-100.

  Args:
    scores: task name -> score (or the scores alone); the paper averages its 8
      evaluation tasks.
  """
  values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
  if not values:
    raise ValueError('normalized_average needs at least one score.')
  # A mean of per-example F-measures of 1.0 can land a rounding error above 100.
  tolerance = 1e-6
  bad = [v for v in values if not -tolerance <= v <= 100.0 + tolerance]
  if bad:
    raise ValueError(f'Scores must be on a 0-100 scale; got {bad}. Metrics here already '
                     'return percentages: do not multiply by 100 again.')
  return float(np.mean(np.clip(values, 0.0, 100.0)))


def format_specialization_rate(outputs: Sequence[str], label_set: Iterable[str],
                               prefixes: Sequence[str]) -> float:
  """Percent of outputs answered in the fine-tuned task's format.

  An output counts when its first word, after cutting at the next
  demonstration and stripping punctuation, is one of `label_set` (e.g. RTE's
  {'True', 'False'}). Computed on tasks *other* than the fine-tuned one: after
  standard fine-tuning on RTE, 1-shot TriviaQA answers are "True"/"False" 90%
  of the time.

  Args:
    outputs: decoded model outputs (raw or already post-processed).
    label_set: the fine-tuned task's label words.
    prefixes: demonstration prefixes (`templates.DEMONSTRATION_PREFIXES`).
  """
  labels = set(label_set)
  if not outputs:
    raise ValueError('format_specialization_rate needs at least one output.')
  if not labels:
    raise ValueError('label_set is empty; pass the fine-tuned task\'s label words.')
  in_format = [postprocessing.first_word(postprocessing.cut_at_prefixes(o, prefixes)) in labels
               for o in outputs]
  return 100.0 * float(np.mean(in_format))


def format_specialization_metric(label_set: Iterable[str], prefixes: Sequence[str]
                                 ) -> Callable[[Sequence, Sequence[str]], dict[str, float]]:
  """A seqio metric fn `(targets, predictions) -> {'format_specialization': rate}`."""
  labels = tuple(label_set)

  def metric(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    del targets
    return {'format_specialization': format_specialization_rate(predictions, labels, prefixes)}
  return metric
