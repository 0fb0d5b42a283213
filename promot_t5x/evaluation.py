"""Few-shot evaluation: a model on suites of seqio tasks, prompt attached or removed per task.

This is the evaluator of the paper's table. A `Suite` names seqio tasks (or a
mixture) and how to run each one:

  * the soft prompt per task (`prompt_for_task`): a prompt name attaches that
    prompt (`prompt_index` in the batch); a task not named runs the *plain*
    model, without `prompt_index` (the prompt is removed, not zeroed);
  * greedy (default) or beam decoding (`EvalSettings.decoder`; the paper uses
    beam width 4), or rank classification over label strings for chosen
    classification tasks (`rank_classification`);
  * the primary metric per task (`primary_metrics`; default: the first key of
    the first metric function's result, e.g. 'accuracy', 'exact_match',
    'bleu', 'rouge2', all on 0-100);
  * `role`: 'suite' tasks are averaged into the paper's Norm. Avg. and
    measured for format specialization; 'target' tasks (the fine-tuned task,
    usually with its prompt) are scored and reported beside the suite.

Scoring is seqio's (what `seqio.Evaluator` does with legacy metric
functions, done here directly): each example's target is its
`targets_pretokenized` text post-processed with
`task.postprocess_fn(target, example=ex, is_target=True)`; each prediction is
`vocabulary.decode(tokens)` post-processed with `is_target=False`; then every
`task.predict_metric_fns` (and `score_metric_fns`, with log-likelihoods) runs
on the lists. `seqio.Evaluator` itself is not used because it cannot route a
prompt per task, caches its targets inside the task's metric objects (stale
when `max_examples` changes), and reads data with seqio's in-memory cache on,
which mock TFDS data cannot serve.

Efficiency (the miniature evaluates tens of checkpoints on two CPU cores):
  * data is read once per (task, split, feature lengths, max_examples) per
    process and kept (`clear_data_cache()` drops it), so a new evaluator or a
    new checkpoint costs no data time;
  * batches have a fixed size (the last one is padded with copies) and
    inputs are cut to a few length buckets (`EvalSettings.length_buckets`);
    examples are sorted by length first (`data.sorted_batches`). Decoding uses
    `EncoderDecoderModel.predict_batch` (cached decoder), compiled once per
    (batch, bucket, decode length) and reused across tasks, runs and calls;
  * tasks without a prompt run a prompt-less copy of the module (dropout off),
    so every checkpoint of one architecture, whatever its prompt length or
    training dropout, shares those compiled functions.

The parts, one concern each (their public names are importable from here):
  * `suites`: what to evaluate and how (`EvalSettings`, `Suite`, `make_suite`);
  * `eval_data`: a task's examples, read once through `promot_t5x.data`
    (`load_task_data`, `TaskData`, `clear_data_cache`);
  * `scoring`: one task on one model: batches, decoding or rank
    classification, metrics (`evaluate_task`, `plain_params`, `eval_model`);
  * `results` / `reports`: the result types, and writing and tabulating them;
  * this module: suites and evaluators over them (`Evaluator`,
    `TrainingEvaluator`, `evaluate`).

Reported per task: metrics, primary score, format-specialization rate
(percent of post-processed outputs whose first word is one of the fine-tuned
task's labels, `Suite.format_labels`), how many inputs/targets the feature
lengths truncated (counted from `*_pretokenized` text re-tokenized), and
per-example predictions. `EvalResult.flat_metrics()` gives the names the
trainer logs: `rte/accuracy`, `fewshot/norm_avg`,
`fewshot/triviaqa/exact_match`, `fewshot/triviaqa/format_specialization`.

Sharding: pass a `partitioning.Partitioner` to place parameters by their
logical axes and split each batch over `data` (every host feeds the same
full batch; outputs are gathered). Without one, parameters are used where
they are (the trainer's sharded arrays work as they are).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax

from promot_t5x import metrics as metrics_lib
from promot_t5x import reports, suites
from promot_t5x.eval_data import TaskData, clear_data_cache, load_task_data
from promot_t5x.models import encoder_decoder
from promot_t5x.prompt_routing import AUTO

# The result types live in their own module (below this one and reports); their names stay here.
from promot_t5x.results import (  # noqa: F401
  FORMAT_SPECIALIZATION,
  NORM_AVG,
  ROLES,
  SUITE,
  TARGET,
  EvalResult,
  SuiteResult,
  TaskResult,
)
from promot_t5x.scoring import eval_model, evaluate_task, plain_params
from promot_t5x.suites import (  # noqa: F401
  BEAM,
  DEFAULT_FEATURE_LENGTHS,
  DEFAULT_NAME_PREFIXES,
  GREEDY,
  RANK_CLASSIFICATION,
  EvalSettings,
  Suite,
  make_suite,
)

if TYPE_CHECKING:
  from promot_t5x import partitioning


def evaluate_suite(model: encoder_decoder.EncoderDecoderModel, params: Any, suite: Suite,
                   settings: EvalSettings = EvalSettings(),
                   partitioner: partitioning.Partitioner | None = None,
                   _runners: dict | None = None) -> SuiteResult:
  """Evaluates every task of `suite`; Norm. Avg. for a 'suite' role."""
  runners = {} if _runners is None else _runners
  tasks: dict[str, TaskResult] = {}
  for task_name in suite.tasks:
    start = time.time()
    result = evaluate_task(model, params, suite, task_name, settings, partitioner, runners)
    tasks[result.name] = result
    logging.info('%s/%s: %s %.2f (%d examples, prompt %s, %.1fs)', suite.name, result.name,
                 result.primary_metric, result.score, result.num_examples, result.prompt,
                 time.time() - start)
  norm_avg = None
  if suite.role == SUITE:
    norm_avg = metrics_lib.normalized_average({n: r.score for n, r in tasks.items()})
  return SuiteResult(name=suite.name, role=suite.role, split=suite.split,
                     task_feature_lengths=dict(suite.task_feature_lengths), tasks=tasks,
                     norm_avg=norm_avg, format_labels=suite.format_labels)


class Evaluator:
  """Evaluates parameters on several suites; reusable across checkpoints.

    evaluator = Evaluator([target_suite, fewshot_suite], EvalSettings(max_examples=100))
    result = evaluator.evaluate(model, params, step=1000)   # -> EvalResult
    result.flat_metrics()['fewshot/norm_avg']
  """

  def __init__(self, suites: Sequence[Suite], settings: EvalSettings = EvalSettings(),
               partitioner: partitioning.Partitioner | None = None):
    suites = [s for s in suites if s is not None]
    if not suites:
      raise ValueError('Evaluator needs at least one suite.')
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
      raise ValueError(f'Suite names must be unique, got {names}.')
    self.suites = suites
    self.settings = settings
    self.partitioner = partitioner

  def load_data(self) -> None:
    """Reads every task's examples now (otherwise on first evaluation)."""
    for suite in self.suites:
      for task in suite.tasks:
        load_task_data(task, suite.split, suite.task_feature_lengths,
                       suites.examples_limit(suite, self.settings), self.settings.try_in_mem_cache,
                       self.settings.sentinel_format)

  def evaluate(self, model: encoder_decoder.EncoderDecoderModel, params: Any,
               step: int | None = None, run: str | None = None,
               checkpoint: str | None = None) -> EvalResult:
    start = time.time()
    runners: dict = {}  # parameters are placed once per evaluation
    suites = {s.name: evaluate_suite(model, params, s, self.settings, self.partitioner, runners)
              for s in self.suites}
    return EvalResult(suites=suites, step=step, run=run, checkpoint=checkpoint,
                      settings=self.settings.to_json(), seconds=time.time() - start)


# -----------------------------------------------------------------------------
# Evaluation during training.
# -----------------------------------------------------------------------------
@dataclasses.dataclass
class TrainingEvaluator:
  """`train.train(evaluator=...)`: evaluates every EVAL_PERIOD, returns flat metrics.

  The fine-tuned task(s) run with the model's prompt (when the model has
  one: stage 1, ProMoT stage 2, joint tuning) and the optional few-shot suite
  without it, so a user watches format specialization as it happens:

    train.train.evaluator = @evaluation.TrainingEvaluator()
    evaluation.TrainingEvaluator:
      target = %MIXTURE_OR_TASK_NAME
      fewshot = 'mini_eval_1shot'
      format_labels = ('True', 'False')
    train.train.best_metric = 'rte/accuracy'

  returns e.g. {'rte/accuracy': ..., 'fewshot/norm_avg': ...,
  'fewshot/triviaqa/exact_match': ..., 'fewshot/triviaqa/format_specialization': ...}.

  Attributes:
    target: the fine-tuned task(s) or mixture (None: none).
    fewshot: the few-shot suite's mixture or tasks (None: none).
    target_prompt: prompt for the target tasks: AUTO (the model's first
      prompt if it has one), a name, None, or {task: prompt} (multi-task).
    target_split, fewshot_split: the splits scored ('validation' picks the
      best checkpoint on held-out data; 'eval' is the scored split).
    task_feature_lengths: target lengths (TASK_FEATURE_LENGTHS);
      fewshot_feature_lengths: the suite's (default: the same).
    format_labels: the fine-tuned task's label words (None: not measured).
    fewshot_name: the suite's name in metric names.
    settings: decoding and the per-task example cap (keep it small).
    output_dir: if set, each evaluation's results and predictions are
      written to `output_dir/step_<step>/`.
    module: module(s) registering the tasks (MIXTURE_OR_TASK_MODULE).
  """

  target: str | Sequence[str] | None = None
  fewshot: str | Sequence[str] | None = None
  target_prompt: str | None | Mapping[str, str | None] = AUTO
  target_split: str = 'validation'
  fewshot_split: str = 'eval'
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {'inputs': 512, 'targets': 128})
  fewshot_feature_lengths: Mapping[str, int] | None = None
  format_labels: Sequence[str] | None = None
  fewshot_name: str = 'fewshot'
  settings: EvalSettings = dataclasses.field(
      default_factory=lambda: EvalSettings(max_examples=64))
  output_dir: str | None = None
  module: str | Sequence[str] | None = None
  partitioner: Any = None

  def __post_init__(self):
    if self.target is None and self.fewshot is None:
      raise ValueError('TrainingEvaluator needs a target task, a few-shot suite, or both.')
    self._evaluator: Evaluator | None = None
    self.history: list[dict[str, float]] = []

  @property
  def evaluator(self) -> Evaluator:
    if self._evaluator is None:
      suites = [
          make_suite(self.target, role=TARGET, split=self.target_split,
                     task_feature_lengths=self.task_feature_lengths, prompt=self.target_prompt,
                     module=self.module),
          make_suite(self.fewshot, name=self.fewshot_name, role=SUITE, split=self.fewshot_split,
                     task_feature_lengths=self.fewshot_feature_lengths or self.task_feature_lengths,
                     format_labels=self.format_labels, module=self.module)]
      self._evaluator = Evaluator([s for s in suites if s is not None], self.settings,
                                  self.partitioner)
    return self._evaluator

  def __call__(self, model: encoder_decoder.EncoderDecoderModel, params: Any, step: int
               ) -> dict[str, float]:
    result = self.evaluator.evaluate(model, params, step=step)
    flat = result.flat_metrics()
    self.history.append({'step': step, **flat})
    if self.output_dir and jax.process_index() == 0:
      directory = f'{self.output_dir}/step_{step}'
      reports.write_results(result, f'{directory}/results.json')
      reports.write_predictions(result, f'{directory}/predictions')
    return flat


def evaluate(model: encoder_decoder.EncoderDecoderModel, params: Any,
             suites: Sequence[Suite], settings: EvalSettings = EvalSettings(),
             partitioner: partitioning.Partitioner | None = None,
             step: int | None = None) -> EvalResult:
  """One-call form of `Evaluator(suites, settings, partitioner).evaluate(model, params, step)`."""
  return Evaluator(suites, settings, partitioner).evaluate(model, params, step=step)


def format_metrics(flat: Mapping[str, float]) -> str:
  """One line per metric, sorted: for logs."""
  width = max((len(k) for k in flat), default=0)
  return '\n'.join(f'{k:<{width}}  {v:8.2f}' if math.isfinite(v) else f'{k:<{width}}  {v}'
                   for k, v in sorted(flat.items()))


__all__ = ['AUTO', 'BEAM', 'GREEDY', 'RANK_CLASSIFICATION', 'SUITE', 'TARGET', 'EvalResult',
           'EvalSettings', 'Evaluator', 'Suite', 'SuiteResult', 'TaskData', 'TaskResult',
           'TrainingEvaluator', 'clear_data_cache', 'eval_model', 'evaluate', 'evaluate_suite',
           'evaluate_task', 'load_task_data', 'make_suite', 'plain_params']
