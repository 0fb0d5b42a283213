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
    examples are sorted by length first. Decoding uses
    `EncoderDecoderModel.predict_batch` (cached decoder), compiled once per
    (batch, bucket, decode length) and reused across tasks, runs and calls;
  * tasks without a prompt run a prompt-less copy of the module (dropout off),
    so every checkpoint of one architecture, whatever its prompt length or
    training dropout, shares those compiled functions.

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
import functools
import importlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from promot_t5x import metrics as metrics_lib
from promot_t5x import param_sets, postprocessing, reports, sentinel
from promot_t5x.models import encoder_decoder

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

if TYPE_CHECKING:
  from promot_t5x import partitioning

GREEDY, BEAM, RANK_CLASSIFICATION = 'greedy', 'beam', 'rank_classification'
# `prompt_for_task` value meaning "the model's prompt if it has one" (the one
# named like the task, else its only prompt); resolved per evaluated model.
AUTO = 'auto'
DEFAULT_FEATURE_LENGTHS = {'inputs': 1024, 'targets': 128}
# Registration prefixes of this project's tasks, dropped from display names.
DEFAULT_NAME_PREFIXES = ('promot_', 'mini_')
_SHOTS_SUFFIX = re.compile(r'_\d+shot(?=$|__)')
_DATA_SEED = 42  # seqio.Evaluator's; eval data is read unshuffled anyway.


# -----------------------------------------------------------------------------
# Configuration.
# -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How examples are batched and decoded.

  Attributes:
    decoder: 'greedy' (default; the CPU miniature) or 'beam' (the paper).
    num_beams: beam width (the paper: 4).
    alpha: beam search brevity-penalty exponent (T5X's 0.6).
    batch_size: examples per batch; the last batch is padded to it so that
      every batch has the same shape. With a partitioner, a multiple of the
      mesh's `data` size.
    max_examples: evaluate at most the first this-many examples of each task
      (None: all).
    max_decode_length: tokens generated per example (None: the suite's
      `targets` feature length).
    length_buckets: input lengths a batch is padded to (the smallest that fits;
      the `inputs` feature length is always the last bucket).
    try_in_mem_cache: seqio's in-memory dataset cache; False for mock TFDS.
    sentinel_format: prompt in mT5's span-corruption style (`promot_t5x.sentinel`):
      inputs end with `<extra_id_0>`, outputs are decoded with their sentinels
      and the answer is the span after `<extra_id_0>` (the paper's mT5 runs).
  """

  decoder: str = GREEDY
  num_beams: int = 4
  alpha: float = 0.6
  batch_size: int = 32
  max_examples: int | None = None
  max_decode_length: int | None = None
  length_buckets: tuple[int, ...] = (64, 128, 256, 512)
  try_in_mem_cache: bool = True
  sentinel_format: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'length_buckets', tuple(sorted(int(b) for b in self.length_buckets)))
    if self.decoder not in (GREEDY, BEAM):
      raise ValueError(f"EvalSettings.decoder={self.decoder!r}; use 'greedy' or 'beam' "
                       '(rank classification is chosen per task: Suite.rank_classification).')
    if self.num_beams <= 0:
      raise ValueError(f'EvalSettings.num_beams must be positive, got {self.num_beams}.')
    if self.batch_size <= 0:
      raise ValueError(f'EvalSettings.batch_size must be positive, got {self.batch_size}.')
    if self.max_examples is not None and self.max_examples <= 0:
      raise ValueError(f'EvalSettings.max_examples must be positive or None, got '
                       f'{self.max_examples}.')
    if self.max_decode_length is not None and self.max_decode_length <= 0:
      raise ValueError('EvalSettings.max_decode_length must be positive or None.')
    if any(b <= 0 for b in self.length_buckets):
      raise ValueError(f'EvalSettings.length_buckets must be positive, got {self.length_buckets}.')

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Suite:
  """Tasks evaluated together, and how each one runs.

  Attributes:
    name: the suite's name in reports and metric names ('fewshot', 'target').
    tasks: registered seqio task names (see `make_suite` to expand a mixture).
    role: 'suite' (Norm. Avg. and format specialization are computed) or
      'target' (the fine-tuned tasks: scored only).
    split: the split to score ('eval' is the scored split of this project's tasks).
    task_feature_lengths: {'inputs': n, 'targets': m}; longer inputs are
      truncated by the task's own preprocessors (and counted).
    prompt_for_task: {task: prompt name, or None, or AUTO}; tasks not named run
      without a prompt.
    rank_classification: {task: label strings}: score each label's likelihood
      instead of decoding (e.g. {'promot_cb_1shot': ('True', 'False', 'Neither')}).
    primary_metrics: {task: metric name} when the default (the first metric) is
      not the one to average.
    format_labels: the fine-tuned task's label words, e.g. ('True', 'False'):
      the format-specialization rate is measured against them (None: not measured).
    display_names: {task: short name} for tables and metric names; by default
      a prefix in `name_prefixes` and a `_<k>shot` suffix are dropped
      (`promot_triviaqa_1shot` -> `triviaqa`).
    name_prefixes: task-name prefixes dropped from display names.
  """

  name: str
  tasks: tuple[str, ...]
  role: str = SUITE
  split: str = 'eval'
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: dict(DEFAULT_FEATURE_LENGTHS))
  prompt_for_task: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
  rank_classification: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  primary_metrics: Mapping[str, str] = dataclasses.field(default_factory=dict)
  format_labels: tuple[str, ...] | None = None
  display_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
  name_prefixes: tuple[str, ...] = DEFAULT_NAME_PREFIXES

  def __post_init__(self):
    tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
    object.__setattr__(self, 'tasks', tasks)
    object.__setattr__(self, 'task_feature_lengths', dict(self.task_feature_lengths))
    object.__setattr__(self, 'prompt_for_task', dict(self.prompt_for_task))
    object.__setattr__(self, 'rank_classification',
                       {k: tuple(v) for k, v in dict(self.rank_classification).items()})
    object.__setattr__(self, 'primary_metrics', dict(self.primary_metrics))
    object.__setattr__(self, 'display_names', dict(self.display_names))
    object.__setattr__(self, 'name_prefixes', tuple(self.name_prefixes))
    if self.format_labels is not None:
      object.__setattr__(self, 'format_labels', tuple(self.format_labels))
    if not re.fullmatch(r'[A-Za-z0-9_.+\-]+', self.name or ''):
      raise ValueError(f'Suite name {self.name!r} must be letters, digits, _ . + - (it becomes '
                       'part of metric names and file names).')
    if not tasks:
      raise ValueError(f'Suite {self.name!r} has no tasks.')
    if len(set(tasks)) != len(tasks):
      raise ValueError(f'Suite {self.name!r} lists a task twice: {list(tasks)}.')
    if self.role not in ROLES:
      raise ValueError(f'Suite.role={self.role!r}; choose one of {ROLES}.')
    for key in ('inputs', 'targets'):
      if not isinstance(self.task_feature_lengths.get(key), int) or (
          self.task_feature_lengths[key] <= 0):
        raise ValueError(f"Suite {self.name!r}: task_feature_lengths needs a positive '{key}' "
                         f'length, got {self.task_feature_lengths}.')
    for field in ('prompt_for_task', 'rank_classification', 'primary_metrics', 'display_names'):
      unknown = sorted(set(getattr(self, field)) - set(tasks))
      if unknown:
        raise ValueError(f'Suite {self.name!r}: {field} names tasks that are not in the suite: '
                         f'{unknown} (its tasks: {list(tasks)}).')
    for task, labels in self.rank_classification.items():
      if not labels or any(not isinstance(label, str) or not label for label in labels):
        raise ValueError(f'Suite {self.name!r}: rank_classification[{task!r}] needs non-empty '
                         f'label strings, got {labels}.')
    if self.format_labels is not None and not self.format_labels:
      raise ValueError('Suite.format_labels is empty; pass the label words or None.')
    names = [self.display_name(t) for t in tasks]
    if len(set(names)) != len(names):
      raise ValueError(f'Suite {self.name!r}: display names collide: {names}; set '
                       'display_names for the tasks concerned.')

  def display_name(self, task: str) -> str:
    """Short name of a task in tables and metric names."""
    if task in self.display_names:
      return self.display_names[task]
    short = self._strip_prefix(task)
    no_shots = _SHOTS_SUFFIX.sub('', short)
    # Drop `_<k>shot` only where that leaves the name unique in the suite.
    if no_shots and sum(_SHOTS_SUFFIX.sub('', self._strip_prefix(t)) == no_shots
                        for t in self.tasks) == 1:
      return no_shots
    return short

  def _strip_prefix(self, task: str) -> str:
    for prefix in self.name_prefixes:
      if task.startswith(prefix) and len(task) > len(prefix):
        return task[len(prefix):]
    return task


def make_suite(mixture_or_task_name: str | Sequence[str] | None, *,
               name: str | None = None,
               role: str = SUITE,
               split: str = 'eval',
               task_feature_lengths: Mapping[str, int] | None = None,
               prompt: str | None | Mapping[str, str | None] = None,
               rank_classification: Mapping[str, Sequence[str]] | None = None,
               primary_metrics: Mapping[str, str] | None = None,
               format_labels: Sequence[str] | None = None,
               display_names: Mapping[str, str] | None = None,
               name_prefixes: Sequence[str] = DEFAULT_NAME_PREFIXES,
               module: str | Sequence[str] | None = None) -> Suite | None:
  """A `Suite` from a mixture, a task, or a list of either (gin-friendly).

  Args:
    mixture_or_task_name: registered name(s); mixtures expand to their tasks
      in order. None returns None (an optional suite left out of a gin list).
    name: the suite's name (default: 'target' for role 'target', else the
      mixture/task name).
    role: 'suite' or 'target' (see `Suite`).
    prompt: one prompt name (or AUTO) for every task, or {task: prompt}.
    module: module(s) to import first, where the tasks are registered
      (MIXTURE_OR_TASK_MODULE).
    Other arguments: as in `Suite`.
  """
  if mixture_or_task_name is None:
    return None
  _import_modules(module)
  names = [mixture_or_task_name] if isinstance(mixture_or_task_name, str) else list(
      mixture_or_task_name)
  tasks: list[str] = []
  for n in names:
    for t in _expand(n):
      if t not in tasks:
        tasks.append(t)
  if isinstance(prompt, Mapping):
    prompt_for_task = dict(prompt)
  else:
    prompt_for_task = {t: prompt for t in tasks} if prompt is not None else {}
  if name is None:
    name = TARGET if role == TARGET else '+'.join(names)
  return Suite(name=name, tasks=tuple(tasks), role=role, split=split,
               task_feature_lengths=dict(task_feature_lengths or DEFAULT_FEATURE_LENGTHS),
               prompt_for_task=prompt_for_task,
               rank_classification=dict(rank_classification or {}),
               primary_metrics=dict(primary_metrics or {}),
               format_labels=None if format_labels is None else tuple(format_labels),
               display_names=dict(display_names or {}), name_prefixes=tuple(name_prefixes))


def _import_modules(module: str | Sequence[str] | None) -> None:
  if not module:
    return
  for m in ([module] if isinstance(module, str) else list(module)):
    try:
      importlib.import_module(m)
    except ImportError as e:
      raise ImportError(f'MIXTURE_OR_TASK_MODULE={m!r} could not be imported: {e}.') from e


def _expand(name: str) -> list[str]:
  """Task names of a task or mixture, in the mixture's registration order.

  (`seqio.Mixture.tasks` sorts by name; `rate_per_task_name` keeps the order
  the mixture was declared in, e.g. the paper's CB, WiC, TriviaQA, ...).
  """
  import seqio

  if name in seqio.MixtureRegistry.names():
    out: list[str] = []
    for sub in seqio.get_mixture_or_task(name).rate_per_task_name:
      out += [t for t in _expand(sub) if t not in out]
    return out
  if name in seqio.TaskRegistry.names():
    return [name]
  raise ValueError(f'Unknown task or mixture {name!r} (EVAL_SUITE / MIXTURE_OR_TASK_NAME). '
                   'Register it, or name the module that does with MIXTURE_OR_TASK_MODULE. '
                   f'Registered mixtures: {sorted(seqio.MixtureRegistry.names())}.')


# -----------------------------------------------------------------------------
# Data: read once per process.
# -----------------------------------------------------------------------------
@dataclasses.dataclass
class TaskData:
  """A task's evaluation examples, tokenized and post-processed once.

  examples: the task's examples as seqio yields them (numpy), for
    postprocessors that read the example. inputs: [N, input_length] int32
    (0-padded to the feature length); input_lengths: [N].
    decoder_*: EncDecFeatureConverter's target features [N, target_length].
    targets: post-processed targets (what metrics compare with).
  """

  task: Any  # seqio.Task
  split: str
  examples: list[dict[str, Any]]
  inputs: np.ndarray
  input_lengths: np.ndarray
  decoder_input_tokens: np.ndarray
  decoder_target_tokens: np.ndarray
  decoder_loss_weights: np.ndarray
  input_text: list[str]
  targets: list[Any]
  truncated: np.ndarray | None  # [N] bool: input longer than its feature length
  truncated_targets: int | None
  articles_cut: int | None

  def __len__(self) -> int:
    return len(self.examples)


_DATA_CACHE: dict[tuple, TaskData] = {}


def clear_data_cache() -> None:
  """Forgets every loaded evaluation dataset (e.g. after re-registering tasks)."""
  _DATA_CACHE.clear()


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.dtype.kind in 'SO' and value.ndim == 0:
    return _text(value.item())
  return str(value)


def _full_length(feature, text: str | None) -> int | None:
  if text is None:
    return None
  return len(feature.vocabulary.encode(text)) + int(bool(feature.add_eos))


def load_task_data(task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                   max_examples: int | None = None, try_in_mem_cache: bool = True,
                   sentinel_format: bool = False) -> TaskData:
  """Reads (or returns the cached) evaluation examples of one task.

  The task's dataset is read unshuffled at `task_feature_lengths`, so its own
  preprocessors truncate (k-shot tasks from the left) exactly as in training
  and as `seqio.Evaluator` would, and the first `max_examples` are kept.
  With `sentinel_format`, the tokens are then put into sentinel format as in
  training (`promot_t5x.sentinel.format_dataset`).
  """
  import seqio

  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f'{task_name!r} is a mixture; evaluate its tasks (make_suite expands it).')
  lengths = {'inputs': int(task_feature_lengths['inputs']),
             'targets': int(task_feature_lengths['targets'])}
  key = (task_name, id(task), split, tuple(sorted(lengths.items())), max_examples,
         try_in_mem_cache, sentinel_format)
  if key in _DATA_CACHE:
    return _DATA_CACHE[key]
  if split not in task.splits:
    raise ValueError(f'Task {task_name!r} has no split {split!r} (splits: {list(task.splits)}).')
  for feature in ('inputs', 'targets'):
    if feature not in task.output_features:
      raise ValueError(f'Task {task_name!r} has no {feature!r} feature; the evaluator runs '
                       'encoder-decoder (inputs -> targets) tasks.')
  _check_metric_support(task)

  start = time.time()
  ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1,
                        seed=_DATA_SEED, try_in_mem_cache=try_in_mem_cache)
  if max_examples:
    ds = ds.take(max_examples)
  if sentinel_format:
    ds = sentinel.format_dataset(ds, task.output_features, lengths)
  ds = ds.cache()
  examples = list(ds.as_numpy_iterator())
  if not examples:
    raise ValueError(f'Task {task_name!r} yielded no examples on split {split!r}.')
  converted = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
  features = {k: [] for k in ('encoder_input_tokens', 'decoder_input_tokens',
                              'decoder_target_tokens', 'decoder_loss_weights')}
  for ex in converted.as_numpy_iterator():
    for k in features:
      features[k].append(ex[k])
  arrays = {k: np.stack(v).astype(np.int32) for k, v in features.items()}

  out_features = task.output_features
  input_text, truncated, long_targets, targets = [], [], [], []
  has_pretokenized = all('inputs_pretokenized' in ex for ex in examples)
  for ex in examples:
    text = _text(ex['inputs_pretokenized']) if has_pretokenized else None
    input_text.append(text if text is not None else out_features['inputs'].vocabulary.decode(
        [int(t) for t in ex['inputs']]))
    if has_pretokenized:
      truncated.append(_full_length(out_features['inputs'], text) > lengths['inputs'])
    if 'targets_pretokenized' in ex:
      target = _text(ex['targets_pretokenized'])
      long_targets.append(_full_length(out_features['targets'], target) > lengths['targets'])
    else:
      target = out_features['targets'].vocabulary.decode([int(t) for t in ex['targets']])
    targets.append(_postprocess(task, target, ex, is_target=True))
  articles_cut = (int(sum(bool(ex['article_truncated']) for ex in examples))
                  if all('article_truncated' in ex for ex in examples) else None)
  data = TaskData(
      task=task, split=split, examples=examples, inputs=arrays['encoder_input_tokens'],
      input_lengths=(arrays['encoder_input_tokens'] > 0).sum(axis=1).astype(np.int32),
      decoder_input_tokens=arrays['decoder_input_tokens'],
      decoder_target_tokens=arrays['decoder_target_tokens'],
      decoder_loss_weights=arrays['decoder_loss_weights'],
      input_text=input_text, targets=targets,
      truncated=np.asarray(truncated, bool) if has_pretokenized else None,
      truncated_targets=int(sum(long_targets)) if len(long_targets) == len(examples) else None,
      articles_cut=articles_cut)
  logging.info('evaluation data of %s/%s: %d examples in %.1fs', task_name, split, len(data),
               time.time() - start)
  _DATA_CACHE[key] = data
  return data


def _check_metric_support(task) -> None:
  if not task.metric_fns:
    raise ValueError(f'Task {task.name!r} has no metric_fns, so it cannot be scored; give it one '
                     '(e.g. promot_t5x.metrics.accuracy) or leave it out of the suite.')
  if len(task.metric_objs) != len(task.metric_fns):
    raise ValueError(f'Task {task.name!r} has seqio metric objects (metric_objs); this '
                     'evaluator runs metric_fns only. Register its metrics as metric_fns.')
  if task.predict_with_aux_metric_fns:
    raise ValueError(f'Task {task.name!r} has metric functions with aux_values, which this '
                     'evaluator does not provide; use (targets, predictions) metric functions.')


def _postprocess(task, value: Any, example: Mapping[str, Any], is_target: bool) -> Any:
  if task.postprocess_fn is None:
    return value
  return task.postprocess_fn(value, example=example, is_target=is_target)


# -----------------------------------------------------------------------------
# Models: the plain (prompt removed) and prompted forms used at evaluation.
# -----------------------------------------------------------------------------
def _eval_model(model: encoder_decoder.EncoderDecoderModel, keep_prompt: bool
                ) -> encoder_decoder.EncoderDecoderModel:
  """The model with dropout off, and without its prompt unless `keep_prompt`.

  Equal configurations give equal (hashable) modules, so compiled decoders
  are shared by every checkpoint of one architecture.
  """
  config = model.config
  new = config.replace(dropout_rate=0.0, prompt=config.prompt if keep_prompt else None)
  if new == config:
    return model
  return dataclasses.replace(model, module=model.module.clone(config=new))


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Parameters without the soft prompt(s): what the plain model runs on."""
  return {k: v for k, v in params.items() if k != param_sets.PROMPT_ROOT}


def _resolve_prompt(suite: Suite, task: str, model: encoder_decoder.EncoderDecoderModel,
                    params: Mapping[str, Any]) -> str | None:
  """The prompt name a task runs with, or None (the plain model).

  AUTO: no prompt if the model (or its parameters) has none; otherwise the
  prompt named like the task (its display name or full name: multi-task
  ProMoT keeps one prompt per task), else the model's only prompt.
  """
  prompt = suite.prompt_for_task.get(task)
  config = model.config.prompt
  has_params = param_sets.PROMPT_ROOT in params
  if prompt == AUTO:
    if config is None or not has_params:
      return None
    for candidate in (suite.display_name(task), task):
      if candidate in config.names:
        return candidate
    if len(config.names) == 1:
      return config.names[0]
    raise ValueError(f'Which of the prompts {list(config.names)} should {task!r} run with? '
                     'None is named like the task; give the prompt per task (e.g. '
                     "TrainingEvaluator.target_prompt = {'task_name': 'prompt_name'}).")
  if prompt is None:
    return None
  if config is None or not has_params:
    raise ValueError(f'Suite {suite.name!r} asks for soft prompt {prompt!r} on {task!r} but the '
                     'model has no soft prompt (no prompt config or no prompt parameters). '
                     'Evaluate a checkpoint that has one, or set the prompt to None.')
  config.index(prompt)  # raises, naming the model's prompts
  return prompt


# -----------------------------------------------------------------------------
# Batches and model calls.
# -----------------------------------------------------------------------------
def _buckets(settings: EvalSettings, input_length: int) -> list[int]:
  return [b for b in settings.length_buckets if b < input_length] + [input_length]


def _batches(data: TaskData, settings: EvalSettings, input_length: int
             ) -> Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(example indices, batch) with fixed batch size and bucketed input length.

  Examples go longest first, so each batch pads little; a short last batch is
  filled with copies of its first example (their outputs are dropped).
  """
  buckets = _buckets(settings, input_length)
  order = np.argsort(-data.input_lengths, kind='stable')
  size = settings.batch_size
  for start in range(0, len(order), size):
    idx = order[start:start + size]
    longest = int(data.input_lengths[idx].max())
    length = next(b for b in buckets if b >= longest)
    rows = np.concatenate([idx, np.full(size - len(idx), idx[0])])
    yield idx, {
        'encoder_input_tokens': data.inputs[rows, :length],
        'decoder_input_tokens': data.decoder_input_tokens[rows],
        'decoder_target_tokens': data.decoder_target_tokens[rows],
        'decoder_loss_weights': data.decoder_loss_weights[rows],
    }


def _to_host(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class _Runner:
  """Calls one model on batches: placement (optional mesh) and prompt routing."""

  def __init__(self, model: encoder_decoder.EncoderDecoderModel, params: Any,
               settings: EvalSettings, partitioner: partitioning.Partitioner | None):
    self.model, self.settings, self.partitioner = model, settings, partitioner
    if partitioner is not None:
      data = partitioner.mesh_shape.get('data', 1)
      if settings.batch_size % data:
        raise ValueError(f'EvalSettings.batch_size={settings.batch_size} must be a multiple of '
                         f"the mesh's data axis ({data}).")
      shardings = partitioner.param_shardings(model.abstract_params())
      params = jax.device_put(params, shardings)
    self.params = params

  def _place(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    if self.partitioner is None:
      return batch
    out = {}
    for k, v in batch.items():
      sharding = self.partitioner.data_sharding(v.ndim)
      out[k] = jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
    return out

  def _call(self, fn: Callable[..., Any], batch: dict[str, np.ndarray]) -> np.ndarray:
    placed = self._place(batch)
    if self.partitioner is None:
      return fn(self.params, placed)
    with self.partitioner.activate():
      return fn(self.params, placed)

  def generate(self, batch: dict[str, np.ndarray], max_decode_length: int) -> Any:
    s = self.settings
    return self._call(lambda p, b: self.model.predict_batch(
        p, b, decoder=s.decoder, num_beams=s.num_beams, max_decode_length=max_decode_length,
        alpha=s.alpha), batch)

  def rank(self, batch: dict[str, np.ndarray], label_ids: Sequence[Sequence[int]]) -> Any:
    return self._call(lambda p, b: self.model.rank_classify(p, b, label_ids), batch)

  def score(self, batch: dict[str, np.ndarray]) -> Any:
    return self._call(_compiled_scorer(self.model.module), batch)


@functools.lru_cache(maxsize=16)
def _compiled_scorer(module) -> Callable[[Any, Mapping[str, Any]], jax.Array]:
  """jit(params, batch) -> [batch] log p(targets | inputs) (for score metric functions)."""
  model = encoder_decoder.EncoderDecoderModel(module)
  return jax.jit(model.score_batch)


# -----------------------------------------------------------------------------
# Evaluation.
# -----------------------------------------------------------------------------
def _batch_with_prompt(batch: dict[str, np.ndarray], prompt_index: int | None
                       ) -> dict[str, np.ndarray]:
  if prompt_index is None:
    return {k: v for k, v in batch.items() if k != 'prompt_index'}
  return {**batch, 'prompt_index': np.full((batch['encoder_input_tokens'].shape[0],),
                                           prompt_index, np.int32)}


def _outputs(runner: _Runner, data: TaskData, settings: EvalSettings, input_length: int,
             prompt_index: int | None, max_decode_length: int,
             labels: Sequence[str] | None) -> list[str]:
  """Decoded text per example (generation), or the chosen label (rank classification)."""
  vocab = data.task.output_features['targets'].vocabulary
  pending = []
  label_ids = [list(vocab.encode(label)) for label in labels] if labels else None
  if label_ids and settings.sentinel_format:
    s0, s1 = sentinel.sentinel_ids(vocab)
    label_ids = [[s0, *ids, s1] for ids in label_ids]
  # Dispatch every batch before reading any result: host work overlaps device work.
  for idx, batch in _batches(data, settings, input_length):
    batch = _batch_with_prompt(
        {'encoder_input_tokens': batch['encoder_input_tokens']}, prompt_index)
    if labels:
      pending.append((idx, runner.rank(batch, label_ids)))
    else:
      pending.append((idx, runner.generate(batch, max_decode_length)))
  outputs: list[str] = [''] * len(data)
  for idx, result in pending:
    result = _to_host(result)
    for row, i in enumerate(idx):
      if labels:
        outputs[i] = labels[int(result[row])]
      elif settings.sentinel_format:
        outputs[i] = sentinel.decode(vocab, result[row])
      else:
        outputs[i] = vocab.decode([int(t) for t in result[row]])
  return outputs


def _scores(runner: _Runner, data: TaskData, settings: EvalSettings, input_length: int,
            prompt_index: int | None) -> list[float]:
  scores = [0.0] * len(data)
  for idx, batch in _batches(data, settings, input_length):
    values = _to_host(runner.score(_batch_with_prompt(batch, prompt_index)))
    for row, i in enumerate(idx):
      scores[i] = float(values[row])
  return scores


def _metric_value(value: Any) -> float:
  value = getattr(value, 'value', value)  # seqio metric values (Scalar, ...)
  return float(np.asarray(value))


def _check_vocabulary(data: TaskData, model: encoder_decoder.EncoderDecoderModel) -> None:
  largest = int(data.inputs.max(initial=0))
  if largest >= model.config.vocab_size:
    raise ValueError(f'Task {data.task.name!r} has token id {largest}, beyond the model\'s '
                     f'vocabulary ({model.config.vocab_size}); the task and the model gin use '
                     'different vocabularies.')


def evaluate_task(model: encoder_decoder.EncoderDecoderModel, params: Any, suite: Suite,
                  task_name: str, settings: EvalSettings = EvalSettings(),
                  partitioner: partitioning.Partitioner | None = None,
                  _runners: dict | None = None) -> TaskResult:
  """Evaluates one task of `suite` (see the module docstring)."""
  lengths = suite.task_feature_lengths
  data = load_task_data(task_name, suite.split, lengths, settings.max_examples,
                        settings.try_in_mem_cache, settings.sentinel_format)
  _check_vocabulary(data, model)
  task = data.task
  prompt = _resolve_prompt(suite, task_name, model, params)
  runners = {} if _runners is None else _runners
  key = prompt is not None
  if key not in runners:
    eval_model = _eval_model(model, keep_prompt=key)
    runners[key] = _Runner(eval_model, params if key else plain_params(params), settings,
                           partitioner)
  runner = runners[key]
  prompt_index = None if prompt is None else runner.model.config.prompt.index(prompt)
  labels = suite.rank_classification.get(task_name)
  method = RANK_CLASSIFICATION if labels else settings.decoder
  max_decode_length = settings.max_decode_length or lengths['targets']

  outputs = _outputs(runner, data, settings, lengths['inputs'], prompt_index,
                     max_decode_length, labels)
  answers = ([sentinel.span(out) for out in outputs]
             if settings.sentinel_format and not labels else outputs)
  predictions = [_postprocess(task, out, ex, is_target=False)
                 for out, ex in zip(answers, data.examples)]
  results: dict[str, float] = {}

  def add(metric_result: Mapping[str, Any]) -> None:
    for k, v in metric_result.items():
      if k in results:
        raise ValueError(f"Duplicate metric key '{k}' in task {task_name!r}.")
      results[k] = _metric_value(v)

  first_keys: list[str] = []
  for fn in task.predict_metric_fns:
    out = fn(data.targets, predictions)
    first_keys += list(out)[:1]
    add(out)
  if task.score_metric_fns:
    scores = _scores(runner, data, settings, lengths['inputs'], prompt_index)
    for fn in task.score_metric_fns:
      out = fn(data.targets, scores)
      first_keys += list(out)[:1]
      add(out)
  primary = suite.primary_metrics.get(task_name) or (first_keys[0] if first_keys else None)
  if primary not in results:
    raise ValueError(f'Primary metric {primary!r} of task {task_name!r} is not among its '
                     f'metrics {sorted(results)}; fix Suite.primary_metrics.')

  in_format, rate = None, None
  if suite.role == SUITE and suite.format_labels is not None:
    texts = [p if isinstance(p, str) else _text(p) for p in predictions]
    rate = metrics_lib.format_specialization_rate(texts, suite.format_labels, prefixes=())
    labels_set = set(suite.format_labels)
    in_format = [postprocessing.first_word(t) in labels_set for t in texts]
  records = []
  for i, (out, pred) in enumerate(zip(outputs, predictions)):
    record = {'index': i, 'inputs': data.input_text[i], 'target': _jsonable(data.targets[i]),
              'output': out, 'prediction': _jsonable(pred),
              'truncated': None if data.truncated is None else bool(data.truncated[i])}
    if in_format is not None:
      record['in_label_format'] = in_format[i]
    records.append(record)
  return TaskResult(
      task=task_name, name=suite.display_name(task_name), split=suite.split,
      num_examples=len(data), method=method, prompt=prompt, metrics=results,
      primary_metric=primary, score=results[primary],
      format_specialization=rate,
      truncated_inputs=None if data.truncated is None else int(data.truncated.sum()),
      truncated_targets=data.truncated_targets, articles_cut=data.articles_cut,
      predictions=records)


def _jsonable(value: Any) -> Any:
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return [_jsonable(v) for v in value.tolist()]
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return str(value)


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
                       self.settings.max_examples, self.settings.try_in_mem_cache,
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
           'TrainingEvaluator', 'clear_data_cache', 'evaluate', 'evaluate_suite',
           'evaluate_task', 'load_task_data', 'make_suite', 'plain_params']
