"""Conjugate prompting: evaluate any task through a transform of its prompt.

Kotha, Springer and Raghunathan ("Understanding Catastrophic Forgetting in
Language Models via Implicit Inference") argue that fine-tuning skews the
model's guess of which task a prompt belongs to, so abilities are suppressed
rather than erased. A prompt transformed away from the fine-tuning
distribution (translated, Leetspeak, Pig Latin; in the miniature, an
invertible transform the base model learned in pretraining) but asking for the
same capability recovers them. This module holds the three pieces every
conjugate evaluation needs:

1. `Transform` and its registry (`register_transform`, `get_transform`,
   `list_transforms`). Natural-language transforms register when
   `promot_t5x_tasks.conjugate` is imported, the synthetic world's when
   `promot_t5x_tasks.synthetic.transforms` is; `identity` is always there.
2. `register_conjugate(mixture_or_task_name, transform_name)`: derives the
   conjugate seqio task (or mixture) `<name>__<transform>` and returns its
   name. This is the function a gin file binds to evaluate a suite under a
   transform:

     from promot_t5x import conjugate
     import promot_t5x_tasks.conjugate
     MIXTURE_OR_TASK_NAME = @conjugate.register_conjugate()
     conjugate.register_conjugate.mixture_or_task_name = 'promot_paper_1shot_eval'
     conjugate.register_conjugate.transform_name = 'french'

3. `conjugate_report(scores, output_dir)`: per transform and task, each
   model's score, the drop from the pretrained model, and the recovery
   relative to the untransformed prompt (markdown, JSON and a PNG plot).

How a conjugate task is scored. The transform's `forward_input` runs on the
rendered `inputs` text (demonstrations included) and `forward_target`, when
the transform has one, on `targets`; both run just before tokenization, so
`inputs_pretokenized` / `targets_pretokenized` hold the conjugate text and
score-based evaluations see the conjugate answer. The postprocessor applies
`inverse_output` to the decoded prediction *and to the target alike*, then
the original task's postprocessor and metrics. For an invertible transform
(`inverse_output(forward_target(t)) == t`) that is scoring in the original
space. For a best-effort inverse (Leetspeak, Pig Latin) both sides go through
the same deterministic map, so an exactly conjugate answer is still scored
correct; only distinctions the inverse cannot make are lost (documented per
transform).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

IDENTITY = 'identity'
# `<task>__<transform>`: seqio allows word characters, '.', ':' and '#' in names.
CONJUGATE_SEPARATOR = '__'

_TRANSFORM_NAME = re.compile(r'^[a-z][a-z0-9_]*$')
# Modules that register transforms, named in the error for an unknown name.
TRANSFORM_MODULES = ('promot_t5x_tasks.conjugate', 'promot_t5x_tasks.synthetic.transforms')


# ----------------------------------------------------------------------------
# Transforms and their registry.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transform:
  """A map of prompts into a conjugate form and of model outputs back.

  Attributes:
    name: registry key, lower case (`french`, `leetspeak`, `scale_1_5`).
    forward_input: rendered input text -> conjugate input text. Runs on the
      whole input, demonstrations and their answers included.
    forward_target: target text -> conjugate target text, for transforms whose
      answer changes too (translated label words, leet-encoded answers, scaled
      numbers). None: the target is left as it is.
    inverse_output: model output -> output in the original space; applied to
      predictions and targets alike before the original postprocessor. None:
      outputs are left as they are.
    invertible: True when `inverse_output(forward_target(t)) == t` for every
      target the transform is meant for, i.e. metrics are exactly those of the
      original space. False for best-effort inverses (say why in
      `description`).
    description: one paragraph for reports and `--help`-style listings.
  """

  name: str
  forward_input: Callable[[str], str]
  forward_target: Callable[[str], str] | None = None
  inverse_output: Callable[[str], str] | None = None
  invertible: bool = True
  description: str = ''

  def __post_init__(self):
    if not isinstance(self.name, str) or not _TRANSFORM_NAME.match(self.name):
      raise ValueError(f'Transform name {self.name!r} must be lower case letters, digits and '
                       "underscores, starting with a letter (e.g. 'pig_latin'): it becomes "
                       f'part of seqio task names (<task>{CONJUGATE_SEPARATOR}<transform>).')
    if CONJUGATE_SEPARATOR in self.name:
      raise ValueError(f'Transform name {self.name!r} must not contain {CONJUGATE_SEPARATOR!r}.')
    for field in ('forward_input', 'forward_target', 'inverse_output'):
      fn = getattr(self, field)
      if fn is not None and not callable(fn):
        raise TypeError(f'Transform {self.name!r}: {field} must be a callable str -> str, '
                        f'got {type(fn).__name__}.')
    if self.invertible and self.forward_target is not None and self.inverse_output is None:
      raise ValueError(f'Transform {self.name!r} changes targets (forward_target) and says it is '
                       'invertible, but has no inverse_output: give the inverse, or set '
                       'invertible=False and score in the transformed space.')

  def apply_to_input(self, text: str) -> str:
    return self.forward_input(text)

  def apply_to_target(self, text: str) -> str:
    return text if self.forward_target is None else self.forward_target(text)

  def invert(self, output: str) -> str:
    return output if self.inverse_output is None else self.inverse_output(output)


def _identity_text(text: str) -> str:
  return text


_REGISTRY: dict[str, Transform] = {}


def register_transform(transform: Transform, *, overwrite: bool = False) -> Transform:
  """Adds `transform` to the registry under `transform.name`; returns it.

  Raises ValueError on a name already taken unless `overwrite=True` (two
  modules registering the same name is a bug worth hearing about).
  """
  if not isinstance(transform, Transform):
    raise TypeError(f'register_transform takes a conjugate.Transform, got '
                    f'{type(transform).__name__}.')
  if transform.name in _REGISTRY and not overwrite and _REGISTRY[transform.name] is not transform:
    raise ValueError(f'A transform named {transform.name!r} is already registered; pick another '
                     'name or pass overwrite=True.')
  _REGISTRY[transform.name] = transform
  return transform


def get_transform(name: str) -> Transform:
  """The registered transform `name`; a ValueError lists the known names."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f'Unknown conjugate transform {name!r}. Known: {list(list_transforms())}. Transforms '
        f'register when their module is imported: {", ".join(TRANSFORM_MODULES)} (add the '
        'module to MIXTURE_OR_TASK_MODULE or import it in the gin file).') from None


def list_transforms() -> tuple[str, ...]:
  """Names of the registered transforms, sorted."""
  return tuple(sorted(_REGISTRY))


register_transform(Transform(
    name=IDENTITY, forward_input=_identity_text, invertible=True,
    description='The unchanged prompt: the reference every recovery is measured against.'))


# ----------------------------------------------------------------------------
# Conjugate seqio tasks and mixtures.
# ----------------------------------------------------------------------------


def conjugate_name(mixture_or_task_name: str, transform_name: str) -> str:
  """`<name>__<transform>`; the identity transform keeps the name."""
  if transform_name == IDENTITY:
    return mixture_or_task_name
  return f'{mixture_or_task_name}{CONJUGATE_SEPARATOR}{transform_name}'


def _map_text_features(dataset: tf.data.Dataset, fn: Callable[[str], str],
                       keys: Sequence[str]) -> tf.data.Dataset:
  """Applies a Python str -> str function to scalar string features `keys`."""

  def py_fn(value: bytes) -> bytes:
    return fn(value.decode('utf-8')).encode('utf-8')

  def map_fn(example):
    example = dict(example)
    for key in keys:
      if key not in example:
        continue
      value = example[key]
      if value.dtype != tf.string or value.shape.rank != 0:
        raise ValueError(f'Conjugate transforms work on scalar string features; {key!r} is '
                         f'{value.dtype.name} of shape {value.shape}. Transform the text before '
                         'it is split or tokenized.')
      mapped = tf.numpy_function(py_fn, [value], tf.string, stateful=False)
      mapped.set_shape([])
      example[key] = mapped
    return example

  return dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)


def transform_text_preprocessor(dataset: tf.data.Dataset, *, transform_name: str,
                                input_keys: Sequence[str] = ('inputs',),
                                target_keys: Sequence[str] = ('targets',)) -> tf.data.Dataset:
  """seqio preprocessor: `forward_input` on `input_keys`, `forward_target` on `target_keys`.

  The transform is looked up when the dataset is built, so a task registered
  before the transform's module was imported still works.
  """
  transform = get_transform(transform_name)
  dataset = _map_text_features(dataset, transform.apply_to_input, input_keys)
  if transform.forward_target is not None:
    dataset = _map_text_features(dataset, transform.apply_to_target, target_keys)
  return dataset


def inverse_postprocessor(output: Any, *, transform_name: str,
                          original: Callable[..., Any] | None = None, example: Any = None,
                          is_target: bool = False, **kwargs) -> Any:
  """seqio postprocessor: `inverse_output`, then the original task's postprocessor.

  Applied to predictions and (with `is_target=True`) to targets alike, so both
  are compared in the same space.
  """
  transform = get_transform(transform_name)
  if isinstance(output, bytes):
    output = output.decode('utf-8')
  if isinstance(output, str):
    output = transform.invert(output)
  if original is None:
    return output
  return original(output, example=example, is_target=is_target, **kwargs)


_TOKENIZE_STEPS = (seqio.preprocessors.tokenize, seqio.preprocessors.tokenize_and_append_eos)


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
  while isinstance(fn, functools.partial):
    fn = fn.func
  return fn


def _tokenize_step(preprocessors: Sequence[Callable[..., Any]], task_name: str) -> int:
  for i, fn in enumerate(preprocessors):
    if _unwrap(fn) in _TOKENIZE_STEPS:
      return i
  raise ValueError(
      f'Task {task_name!r} has no seqio.preprocessors.tokenize (or tokenize_and_append_eos) '
      'step. A conjugate task transforms the rendered text just before tokenization; register '
      'the task with one of those preprocessors, or register its conjugate yourself under '
      f'{conjugate_name(task_name, "<transform>")!r} (register_conjugate then uses it).')


# Conjugates this module derived (name -> (base, transform)). Any other task
# registered under a conjugate name is "native" (e.g. the probe rendered from
# real translations) and is used as it is.
_DERIVED: dict[str, tuple[str, str]] = {}


def register_conjugate_task(task_name: str, transform_name: str) -> str:
  """Registers `<task>__<transform>`, the task seen through a transform; returns its name.

  The new task has the same source, metrics and output features; its
  preprocessors gain `transform_text_preprocessor` just before tokenization
  and its postprocessor becomes `inverse_postprocessor` around the original.
  Calling again re-derives it from the current base task. A task already
  registered under the conjugate name by other code (a native rendering, e.g.
  the probe in French from real translations) is returned unchanged.
  """
  get_transform(transform_name)  # Fail early, with the list of known names.
  name = conjugate_name(task_name, transform_name)
  if transform_name == IDENTITY:
    seqio.TaskRegistry.get(task_name)
    return name
  if name in seqio.TaskRegistry.names() and name not in _DERIVED:
    return name
  if task_name not in seqio.TaskRegistry.names():
    raise ValueError(f'No seqio task {task_name!r} is registered; import the module that '
                     'registers it (MIXTURE_OR_TASK_MODULE) before deriving its conjugate.')
  task = seqio.TaskRegistry.get(task_name)
  preprocessors = list(task.preprocessors)
  at = _tokenize_step(preprocessors, task_name)
  preprocessors.insert(at, functools.partial(transform_text_preprocessor,
                                             transform_name=transform_name))
  postprocess_fn = functools.partial(inverse_postprocessor, transform_name=transform_name,
                                     original=task.postprocessor)
  conjugate = task.replace(name=name, preprocessors=preprocessors, postprocess_fn=postprocess_fn)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add_provider(name, conjugate)
  _DERIVED[name] = (task_name, transform_name)
  return name


def add_native_conjugate(task: seqio.Task, base_task_name: str, transform_name: str) -> str:
  """Registers `task`, rendered directly in conjugate form, as the conjugate of a task.

  For conjugates a string transform cannot produce (content translated from
  a table that ships with the data, as the probe's sentences are). `task`
  must be named `conjugate_name(base_task_name, transform_name)`; an earlier
  task of that name is replaced, and `register_conjugate` returns it from
  now on instead of deriving one.
  """
  get_transform(transform_name)
  name = conjugate_name(base_task_name, transform_name)
  if transform_name == IDENTITY or task.name != name:
    raise ValueError(f'A native conjugate of {base_task_name!r} under {transform_name!r} must be '
                     f'named {name!r} (and the transform must not be the identity); got a task '
                     f'named {task.name!r}.')
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add_provider(name, task)
  _DERIVED.pop(name, None)
  return name


def register_conjugate_mixture(mixture_name: str, transform_name: str) -> str:
  """Registers `<mixture>__<transform>` (each task conjugated, same rates); returns its name."""
  get_transform(transform_name)
  name = conjugate_name(mixture_name, transform_name)
  mixture = seqio.MixtureRegistry.get(mixture_name)
  if transform_name == IDENTITY:
    return name
  tasks = [(register_conjugate_task(task.name, transform_name), mixture.get_rate(task))
           for task in mixture.tasks]
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks)
  return name


def register_conjugate(mixture_or_task_name: str, transform_name: str,
                       modules: str | Sequence[str] | None = None) -> str:
  """The conjugate of a task or mixture under `transform_name`; returns its name.

  The gin entry point (see the module docstring). `modules` (a module name or
  a list, e.g. %MIXTURE_OR_TASK_MODULE plus 'promot_t5x_tasks.conjugate') are
  imported first, so the base task and the transform exist even when gin
  evaluates this before the data pipeline imports the task modules.
  """
  if modules:
    for module in [modules] if isinstance(modules, str) else modules:
      importlib.import_module(module)
  if mixture_or_task_name in seqio.MixtureRegistry.names():
    return register_conjugate_mixture(mixture_or_task_name, transform_name)
  if mixture_or_task_name in seqio.TaskRegistry.names():
    return register_conjugate_task(mixture_or_task_name, transform_name)
  raise ValueError(f'{mixture_or_task_name!r} is neither a registered seqio task nor mixture; '
                   'import the module that registers it (MIXTURE_OR_TASK_MODULE) first, or pass '
                   'it as `modules`.')


# ----------------------------------------------------------------------------
# The report: scores, drops and recoveries per transform and task.
# ----------------------------------------------------------------------------

MEAN_TASK = 'mean'


def drop(reference_score: float | None, model_score: float | None) -> float | None:
  """Points lost from the reference (pretrained) model: `reference - model`."""
  if reference_score is None or model_score is None:
    return None
  return reference_score - model_score


def recovery(drop_identity: float | None, drop_transform: float | None) -> float | None:
  """Fraction of the untransformed prompt's drop that the transform wins back.

  recovery = (drop_identity - drop_transform) / drop_identity, defined only
  when drop_identity > 0 (there is something to recover). 1: no drop under
  the transform (the ability was only suppressed); 0: the same drop as the
  plain prompt; < 0: the transform loses more; > 1: the fine-tuned model beats
  the pretrained one under the transform. None when undefined.
  """
  if drop_identity is None or drop_transform is None or drop_identity <= 0:
    return None
  return (drop_identity - drop_transform) / drop_identity


@dataclasses.dataclass(frozen=True)
class ConjugateReportRow:
  """One (transform, task) line of the report; scores on 0-100."""

  transform: str
  task: str
  scores: Mapping[str, float | None]  # model -> score
  drops: Mapping[str, float | None]  # model (not the reference) -> reference - model
  recoveries: Mapping[str, float | None]  # model (not the reference) -> recovery


@dataclasses.dataclass(frozen=True)
class ConjugateReport:
  rows: tuple[ConjugateReportRow, ...]
  models: tuple[str, ...]
  reference: str
  markdown: str
  markdown_path: pathlib.Path
  json_path: pathlib.Path
  plot_path: pathlib.Path

  def row(self, transform: str, task: str) -> ConjugateReportRow:
    for r in self.rows:
      if r.transform == transform and r.task == task:
        return r
    raise KeyError(f'No report row for transform {transform!r}, task {task!r}.')


def _score(scores, model, transform, task) -> float | None:
  value = scores.get(model, {}).get(transform, {}).get(task)
  if value is None:
    return None
  value = float(value)
  return None if math.isnan(value) else value


def _ordered_union(groups: Iterable[Iterable[str]]) -> list[str]:
  seen: dict[str, None] = {}
  for group in groups:
    for item in group:
      seen.setdefault(item, None)
  return list(seen)


def _mean(values: Sequence[float]) -> float:
  return sum(values) / len(values)


def report_rows(scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                reference: str = 'pretrained', identity: str = IDENTITY
                ) -> tuple[tuple[str, ...], list[ConjugateReportRow]]:
  """(models, rows) of the report; see `conjugate_report`."""
  if reference not in scores:
    raise ValueError(f'The scores have no {reference!r} model to measure drops from; models '
                     f'given: {list(scores)}. Pass reference=<name of the pretrained model>.')
  models = tuple([reference] + [m for m in scores if m != reference])
  transforms = _ordered_union(scores[m].keys() for m in models)
  if identity in transforms:
    transforms = [identity] + [t for t in transforms if t != identity]
  others = [m for m in models if m != reference]
  rows = []
  for transform in transforms:
    tasks = _ordered_union(scores[m].get(transform, {}).keys() for m in models)
    for task in tasks:
      row_scores = {m: _score(scores, m, transform, task) for m in models}
      drops = {m: drop(row_scores[reference], row_scores[m]) for m in others}
      recoveries = {
          m: recovery(drop(_score(scores, reference, identity, task),
                           _score(scores, m, identity, task)), drops[m]) for m in others}
      rows.append(ConjugateReportRow(transform, task, row_scores, drops, recoveries))
    # The mean over the tasks every model has, under this transform and the
    # identity, so the mean's recovery compares like with like.
    common = [t for t in tasks
              if all(_score(scores, m, transform, t) is not None
                     and _score(scores, m, identity, t) is not None for m in models)]
    if len(tasks) > 1 and common:
      mean_scores = {m: _mean([_score(scores, m, transform, t) for t in common]) for m in models}
      mean_identity = {m: _mean([_score(scores, m, identity, t) for t in common]) for m in models}
      drops = {m: drop(mean_scores[reference], mean_scores[m]) for m in others}
      recoveries = {m: recovery(drop(mean_identity[reference], mean_identity[m]), drops[m])
                    for m in others}
      rows.append(ConjugateReportRow(transform, MEAN_TASK, mean_scores, drops, recoveries))
  return models, rows


def _fmt(value: float | None, digits: int = 2) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def _markdown(models: Sequence[str], reference: str, rows: Sequence[ConjugateReportRow],
              title: str) -> str:
  others = [m for m in models if m != reference]
  header = ['transform', 'task'] + list(models)
  for m in others:
    header += [f'drop {m}', f'recovery {m}']
  lines = [f'# {title}', '',
           f'Scores on 0-100. drop = {reference} - model (points). recovery = '
           '(drop under identity - drop under the transform) / drop under identity, defined '
           'when the identity drop is > 0 (1: the transform recovers the whole drop; 0: no '
           f'better than the plain prompt). `{MEAN_TASK}`: plain mean over the tasks every '
           'model has under both the transform and the identity.', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in rows:
    cells = [r.transform, r.task] + [_fmt(r.scores[m]) for m in models]
    for m in others:
      cells += [_fmt(r.drops[m]), _fmt(r.recoveries[m])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _plot(models: Sequence[str], rows: Sequence[ConjugateReportRow], path: pathlib.Path,
          title: str) -> None:
  # Figure + Agg canvas directly: no global backend switch in a library.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  tasks = _ordered_union([[r.task for r in rows if r.task == MEAN_TASK],
                          [r.task for r in rows]])
  transforms = _ordered_union([[r.transform for r in rows]])
  ncols = min(3, len(tasks))
  nrows = math.ceil(len(tasks) / ncols)
  fig = Figure(figsize=(5.0 * ncols, 3.2 * nrows))
  FigureCanvasAgg(fig)
  width = 0.8 / max(1, len(models))
  x = np.arange(len(transforms))
  for i, task in enumerate(tasks):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    by_transform = {r.transform: r for r in rows if r.task == task}
    for j, model in enumerate(models):
      values = [by_transform[t].scores[model] if t in by_transform else None for t in transforms]
      heights = [np.nan if v is None else v for v in values]
      ax.bar(x + (j - (len(models) - 1) / 2) * width, heights, width, label=model)
    ax.set_title(task, fontsize=9)
    ax.set_xticks(x)
    ax.set_xticklabels(transforms, rotation=30, ha='right', fontsize=7)
    ax.set_ylabel('score', fontsize=8)
  # One legend for all panels, above them (inside a panel it hides bars).
  fig.legend(*fig.axes[0].get_legend_handles_labels(), loc='upper right', fontsize=8,
             ncols=len(models))
  fig.suptitle(title, x=0.02, ha='left')
  fig.tight_layout(rect=(0, 0, 1, 0.93))
  fig.savefig(path, dpi=100)


def conjugate_report(scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                     output_dir: str | pathlib.Path, *, reference: str = 'pretrained',
                     identity: str = IDENTITY, title: str = 'Conjugate prompting',
                     basename: str = 'conjugate_report') -> ConjugateReport:
  """Writes `<basename>.md`, `.json` and `.png` to `output_dir`; returns the report.

  Args:
    scores: {model: {transform: {task: score on 0-100}}}, e.g.
      {'pretrained': {'identity': {'cb': 50.0}, 'french': {...}},
       'finetuned': {...}, 'promot': {...}}. Missing entries are shown as '–'.
    output_dir: created if needed.
    reference: the model drops are measured from (the pretrained model).
    identity: the transform recoveries are measured against.

  Per (transform, task), for every model m other than the reference:
    drop_m = score_reference - score_m (points);
    recovery_m = (drop_m[identity] - drop_m[transform]) / drop_m[identity]
      when drop_m[identity] > 0, else undefined (see `recovery`).
  A `mean` row per transform averages the tasks present everywhere.
  """
  models, rows = report_rows(scores, reference, identity)
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  markdown = _markdown(models, reference, rows, title)
  markdown_path = output_dir / f'{basename}.md'
  json_path = output_dir / f'{basename}.json'
  plot_path = output_dir / f'{basename}.png'
  markdown_path.write_text(markdown)
  json_path.write_text(json.dumps({
      'reference': reference,
      'identity': identity,
      'models': list(models),
      'definitions': {
          'drop': f'{reference} score - model score (points, 0-100 scale)',
          'recovery': '(drop[identity] - drop[transform]) / drop[identity], '
                      'null unless drop[identity] > 0',
          MEAN_TASK: 'plain mean over the tasks every model has under the transform and the '
                     'identity',
      },
      'rows': [dataclasses.asdict(r) for r in rows],
  }, indent=1, ensure_ascii=False))
  _plot(models, rows, plot_path, title)
  return ConjugateReport(tuple(rows), models, reference, markdown, markdown_path, json_path,
                         plot_path)
