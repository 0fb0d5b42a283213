"""What an evaluation runs: the tasks of a suite and how each one is decoded and scored.

`EvalSettings` says how examples are batched and decoded (greedy or beam, the
batch size, the per-task example cap, the input length buckets, the sentinel
format); `Suite` names seqio tasks and, per task, its prompt, its primary
metric, rank classification over label strings, and its display name;
`make_suite` builds one from a mixture, a task, or a list of either (gin).
`promot_t5x.evaluation` runs them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from promot_t5x import data as data_lib
from promot_t5x.results import ROLES, SUITE, TARGET

GREEDY, BEAM, RANK_CLASSIFICATION = 'greedy', 'beam', 'rank_classification'
DEFAULT_FEATURE_LENGTHS = {'inputs': 1024, 'targets': 128}
# Registration prefixes of this project's tasks, dropped from display names.
DEFAULT_NAME_PREFIXES = ('promot_', 'mini_', 'mini2_', 'mini3_')
_SHOTS_SUFFIX = re.compile(r'_\d+shot(?=$|__)')


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
    prompt_for_task: {task: prompt name, or None, or `prompt_routing.AUTO`};
      tasks not named run without a prompt (decided by `prompt_routing.choose`).
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
    max_examples: score at most the first this-many examples of each task of
      this suite (None: `EvalSettings.max_examples`), e.g. more examples for the
      fine-tuned task than for each few-shot task.
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
  max_examples: int | None = None

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
    if self.max_examples is not None and self.max_examples <= 0:
      raise ValueError(f'Suite {self.name!r}: max_examples must be positive or None, got '
                       f'{self.max_examples}.')
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
               module: str | Sequence[str] | None = None,
               max_examples: int | None = None) -> Suite | None:
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
  data_lib.import_task_modules(module)
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
               display_names=dict(display_names or {}), name_prefixes=tuple(name_prefixes),
               max_examples=max_examples)


def examples_limit(suite: Suite, settings: EvalSettings) -> int | None:
  """How many examples of each of the suite's tasks are scored (None: all)."""
  return settings.max_examples if suite.max_examples is None else suite.max_examples


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
