"""The result types of an evaluation: one task, one suite, one evaluated checkpoint.

`evaluation` produces them, `reports` writes, reads and tabulates them; both import
this module and this module imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SUITE, TARGET = 'suite', 'target'
ROLES = (SUITE, TARGET)
NORM_AVG = 'norm_avg'
FORMAT_SPECIALIZATION = 'format_specialization'
# The `format` field of results.json (reports.write_results / read_results).
RESULTS_FORMAT = 'promot-eval-results/1'


@dataclasses.dataclass
class TaskResult:
  """One task's evaluation.

  Attributes:
    task: the seqio task name. name: its display name.
    method: 'greedy', 'beam' or 'rank_classification'.
    prompt: the soft prompt attached (None: the plain model ran).
    metrics: {metric: value} from the task's metric functions (0-100).
    primary_metric, score: the metric the suite averages and its value.
    format_specialization: percent of post-processed predictions whose first
      word is a fine-tuned-task label (None when not measured).
    truncated_inputs, truncated_targets: examples whose tokenized input /
      target exceeded the feature length (None when no pretokenized text).
    articles_cut: summarization articles cut to a token budget by the task's
      render (the example's `article_truncated` feature; None if absent).
    predictions: per example {'index', 'inputs', 'target', 'output',
      'prediction', 'truncated'} (and 'in_label_format' when measured).
  """

  task: str
  name: str
  split: str
  num_examples: int
  method: str
  prompt: str | None
  metrics: dict[str, float]
  primary_metric: str
  score: float
  format_specialization: float | None = None
  truncated_inputs: int | None = None
  truncated_targets: int | None = None
  articles_cut: int | None = None
  predictions: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

  def to_json(self, include_predictions: bool = False) -> dict[str, Any]:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name != 'predictions'}
    if include_predictions:
      out['predictions'] = self.predictions
    return out

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> TaskResult:
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class SuiteResult:
  """A suite's evaluation: per task results (by display name) and Norm. Avg."""

  name: str
  role: str
  split: str
  task_feature_lengths: dict[str, int]
  tasks: dict[str, TaskResult]
  norm_avg: float | None = None
  format_labels: tuple[str, ...] | None = None

  @property
  def scores(self) -> dict[str, float]:
    """{display name: primary score}."""
    return {name: r.score for name, r in self.tasks.items()}

  def to_json(self, include_predictions: bool = False) -> dict[str, Any]:
    return {'name': self.name, 'role': self.role, 'split': self.split,
            'task_feature_lengths': dict(self.task_feature_lengths),
            'norm_avg': self.norm_avg,
            'format_labels': None if self.format_labels is None else list(self.format_labels),
            'tasks': {n: r.to_json(include_predictions) for n, r in self.tasks.items()}}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> SuiteResult:
    labels = data.get('format_labels')
    return cls(name=data['name'], role=data['role'], split=data['split'],
               task_feature_lengths=dict(data['task_feature_lengths']),
               tasks={n: TaskResult.from_json(r) for n, r in data['tasks'].items()},
               norm_avg=data.get('norm_avg'),
               format_labels=None if labels is None else tuple(labels))


@dataclasses.dataclass
class EvalResult:
  """Everything one evaluation of one set of parameters produced.

  suites: {suite name: SuiteResult}, in evaluation order. run / checkpoint /
  step describe what was evaluated; settings the decoding.
  """

  suites: dict[str, SuiteResult]
  step: int | None = None
  run: str | None = None
  checkpoint: str | None = None
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: float | None = None

  def flat_metrics(self) -> dict[str, float]:
    """Flat {name: value} for logs and keep-best.

    Target tasks: `<task>/<metric>` (e.g. `rte/accuracy`). Suites:
    `<suite>/norm_avg`, `<suite>/<task>/<metric>` and
    `<suite>/<task>/format_specialization` (the suite's measure overrides a
    task metric of that name).
    """
    out: dict[str, float] = {}
    for suite in self.suites.values():
      for name, task in suite.tasks.items():
        prefix = name if suite.role == TARGET else f'{suite.name}/{name}'
        for metric, value in task.metrics.items():
          out[f'{prefix}/{metric}'] = float(value)
        if task.format_specialization is not None:
          out[f'{prefix}/{FORMAT_SPECIALIZATION}'] = float(task.format_specialization)
      if suite.norm_avg is not None:
        out[f'{suite.name}/{NORM_AVG}'] = float(suite.norm_avg)
    return out

  def to_json(self, include_predictions: bool = False) -> dict[str, Any]:
    return {'format': RESULTS_FORMAT, 'run': self.run, 'checkpoint': self.checkpoint,
            'step': self.step, 'settings': dict(self.settings), 'seconds': self.seconds,
            'suites': {n: s.to_json(include_predictions) for n, s in self.suites.items()}}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> EvalResult:
    return cls(suites={n: SuiteResult.from_json(s) for n, s in data['suites'].items()},
               step=data.get('step'), run=data.get('run'), checkpoint=data.get('checkpoint'),
               settings=dict(data.get('settings') or {}), seconds=data.get('seconds'))
