"""Results files, paper-style tables and plots of evaluations.

Files (what `promot-eval` writes, what the miniature runner merges):

  results.json                   one `results.EvalResult` (`write_results` / `read_results`)
  predictions/<suite>/<task>.jsonl   one line per example (`write_predictions`)
  table.md                       `run_table` + `paper_table` of that run

Tables are laid out like the paper's: tasks as rows, runs as columns. The
fine-tuned task(s) come first (marked ‡; they run with the run's soft prompt
where it has one), then the suite's Norm. Avg., then every suite task with its
primary metric. Where a baseline column exists (default: the run named
'pretrained') every other cell also shows its difference from it, e.g.
`20.10 (+2.58)`. Several results under one run name are seeds: a cell shows
`mean ± std` (sample standard deviation) and deltas compare means.

  runs = {'pretrained': read_results('pre/results.json'),
          'finetune': [read_results('ft_s0/results.json'), read_results('ft_s1/results.json')]}
  print(paper_table(runs))
  plot_norm_avg(norm_avg_values(runs), 'norm_avg.png')
  plot_curves({'TriviaQA EM': {'finetune': {0: 17.6, 100: 3.1}, 'promot': {0: 17.6, 100: 17.2}}},
              'curve.png')

Plots use matplotlib's object API (no pyplot state, Agg canvas), so they work
headless and from threads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from promot_t5x import fs
from promot_t5x import results as results_lib
from promot_t5x.results import RESULTS_FORMAT

DEFAULT_BASELINE = 'pretrained'
TARGET_MARK = '‡'

RunResults = Union[results_lib.EvalResult, Sequence[results_lib.EvalResult]]
# A curve: {step: value}; (steps, values); or a list of {step: value}, one per seed.
CurveLike = Union[Mapping[int, float], tuple, Sequence[Mapping[int, float]]]


# -----------------------------------------------------------------------------
# Files.
# -----------------------------------------------------------------------------
def write_results(result: results_lib.EvalResult, path: str) -> str:
  """Writes `result` (without per-example predictions) as JSON; returns the path."""
  fs.makedirs(fs.dirname(fs.absolute(path)))
  fs.write_text(path, json.dumps(result.to_json(include_predictions=False), indent=2,
                                 sort_keys=False) + '\n', atomic=True)
  return path


def read_results(path: str) -> results_lib.EvalResult:
  """Reads a results.json written by `write_results` (or a folder holding one)."""
  if fs.isdir(path):
    path = fs.join(path, 'results.json')
  data = json.loads(fs.read_text(path))
  if data.get('format') != RESULTS_FORMAT:
    raise ValueError(f'{path} is not a promot-eval results file (format '
                     f'{data.get("format")!r}, expected {RESULTS_FORMAT!r}).')
  return results_lib.EvalResult.from_json(data)


def write_predictions(result: results_lib.EvalResult, directory: str) -> list[str]:
  """`directory/<suite>/<task>.jsonl`, one JSON object per example; returns the paths.

  Each line: index, inputs (the model's input text), target (post-processed),
  output (decoded), prediction (post-processed), truncated, and
  in_label_format where the suite measures format specialization.
  """
  paths = []
  for suite in result.suites.values():
    folder = fs.join(directory, suite.name)
    fs.makedirs(folder)
    for name, task in suite.tasks.items():
      path = fs.join(folder, f'{name}.jsonl')
      fs.write_text(path, ''.join(json.dumps({'task': task.task, **record}, ensure_ascii=False)
                                  + '\n' for record in task.predictions))
      paths.append(path)
  return paths


def read_predictions(path: str) -> list[dict[str, Any]]:
  return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def read_metrics_jsonl(path: str, prefix: str = 'eval/') -> dict[str, dict[int, float]]:
  """Curves from a training run's metrics.jsonl: {metric: {step: value}}.

  `prefix` selects and strips the trainer's evaluation prefix ('eval/'), so
  `eval/fewshot/triviaqa/format_specialization` becomes
  `fewshot/triviaqa/format_specialization`. A folder means its metrics.jsonl.
  """
  if fs.isdir(path):
    path = fs.join(path, 'metrics.jsonl')
  curves: dict[str, dict[int, float]] = {}
  with fs.open(path) as f:
    for line in f:
      if not line.strip():
        continue
      row = json.loads(line)
      step = int(row['step'])
      for key, value in row.items():
        if key == 'step' or not key.startswith(prefix):
          continue
        curves.setdefault(key[len(prefix):], {})[step] = float(value)
  return curves


# -----------------------------------------------------------------------------
# Tables.
# -----------------------------------------------------------------------------
def _as_list(results: RunResults) -> list[results_lib.EvalResult]:
  if isinstance(results, results_lib.EvalResult):
    return [results]
  out = list(results)
  if not out:
    raise ValueError('A run has no results.')
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  values = [float(v) for v in values]
  if len(values) == 1:
    return values[0], None
  return float(np.mean(values)), float(np.std(values, ddof=1))


def _cell(values: Sequence[float], base: Sequence[float] | None, digits: int) -> str:
  if not values:
    return '-'
  mean, std = _mean_std(values)
  text = f'{mean:.{digits}f}' if std is None else f'{mean:.{digits}f} ± {std:.{digits}f}'
  if base:
    delta = mean - _mean_std(base)[0]
    text += f' ({delta:+.{digits}f})'
  return text


def averaged_suite_name(runs: Mapping[str, RunResults]) -> str:
  """The first 'suite'-role suite of the first run (the default table)."""
  for results in runs.values():
    for result in _as_list(results):
      for suite in result.suites.values():
        if suite.role == results_lib.SUITE:
          return suite.name
  raise ValueError('No run has an averaged (role "suite") suite.')


def _suites(results: RunResults, role: str, name: str | None = None
            ) -> list[results_lib.SuiteResult]:
  """Per seed, the suite called `name` (role suite) or every suite of `role`."""
  out = []
  for result in _as_list(results):
    for suite in result.suites.values():
      if suite.role == role and (name is None or suite.name == name):
        out.append(suite)
  return out


def _task_values(suites: Sequence[results_lib.SuiteResult], task: str, field: str = 'score'
                 ) -> list[float]:
  values = []
  for suite in suites:
    result = suite.tasks.get(task)
    if result is not None and getattr(result, field) is not None:
      values.append(float(getattr(result, field)))
  return values


def _ordered_tasks(groups: Sequence[Sequence[results_lib.SuiteResult]]
                   ) -> list[tuple[str, str]]:
  """[(display name, primary metric)] in order of first appearance."""
  seen: dict[str, str] = {}
  for suites in groups:
    for suite in suites:
      for name, task in suite.tasks.items():
        seen.setdefault(name, task.primary_metric)
  return list(seen.items())


def norm_avg_values(runs: Mapping[str, RunResults], suite: str | None = None
                    ) -> dict[str, list[float]]:
  """{run: [Norm. Avg. per seed]} of one suite (default: `averaged_suite_name`)."""
  suite = suite or averaged_suite_name(runs)
  out = {}
  for run, results in runs.items():
    values = [s.norm_avg for s in _suites(results, results_lib.SUITE, suite)
              if s.norm_avg is not None]
    if values:
      out[run] = values
  return out


def paper_table(runs: Mapping[str, RunResults], suite: str | None = None,
                baseline: str | None = DEFAULT_BASELINE, digits: int = 2,
                title: str | None = None) -> str:
  """The paper's table of one suite, runs as columns (markdown).

  Args:
    runs: {column name: EvalResult, or a list of them (seeds)}, in column order.
    suite: the averaged suite to show (default: `averaged_suite_name(runs)`).
    baseline: the column deltas are taken against (skipped if absent or None).
    digits: decimals.
    title: a line above the table (default: the suite, its split and size).

  Returns:
    Markdown: the fine-tuned task rows (‡), **Norm. Avg.**, then every task.
  """
  if not runs:
    raise ValueError('paper_table needs at least one run.')
  suite = suite or averaged_suite_name(runs)
  names = list(runs)
  suite_of = {run: _suites(results, results_lib.SUITE, suite) for run, results in runs.items()}
  targets_of = {run: _suites(results, results_lib.TARGET) for run, results in runs.items()}
  if not any(suite_of.values()):
    raise ValueError(f'No run has a suite named {suite!r}.')
  base = baseline if baseline in runs else None

  def row(label: str, values_of: Mapping[str, list[float]]) -> str:
    base_values = values_of.get(base) if base else None
    cells = [_cell(values_of[run], None if run == base else base_values, digits)
             for run in names]
    return f'| {label} | ' + ' | '.join(cells) + ' |'

  lines = []
  first = next(s for group in suite_of.values() for s in group)
  if title is None:
    title = (f'**{suite}** (split `{first.split}`; Norm. Avg. = mean of the '
             f'{len(first.tasks)} tasks\' primary scores, 0-100'
             + (f'; (±x) = difference from {base}' if base else '') + ')')
  lines += [title, '', '| task (metric) | ' + ' | '.join(names) + ' |',
            '|---|' + '---:|' * len(names)]
  for task, metric in _ordered_tasks(list(targets_of.values())):
    lines.append(row(f'{task} ({metric}) {TARGET_MARK}',
                     {run: _task_values(targets_of[run], task) for run in names}))
  lines.append(row('**Norm. Avg.**', {run: [s.norm_avg for s in suite_of[run]
                                            if s.norm_avg is not None] for run in names}))
  for task, metric in _ordered_tasks(list(suite_of.values())):
    lines.append(row(f'{task} ({metric})',
                     {run: _task_values(suite_of[run], task) for run in names}))
  prompted = sorted({run for run in names for s in targets_of[run] for t in s.tasks.values()
                     if t.prompt is not None})
  if any(targets_of.values()):
    lines += ['', f'{TARGET_MARK} fine-tuned task; evaluated with the run\'s soft prompt in: '
              + (', '.join(prompted) if prompted else 'none') + '. Suite tasks run without it.']
  return '\n'.join(lines) + '\n'


def reference_table(runs: Mapping[str, RunResults], columns: Sequence[tuple[str, str]],
                    reference: Mapping[str, Sequence[float | None]], source: str = '',
                    digits: int = 2) -> str:
  """Ours beside the paper's numbers, in the paper's layout: one row per run (markdown).

  Args:
    runs: {row name: EvalResult, or a list of them (seeds)}, in row order.
    columns: (label, flat metric name) per column (`EvalResult.flat_metrics()`
      names, e.g. 'fewshot_1shot/norm_avg', 'rte/accuracy'); 'a|b' takes the
      first of the names a run has (a 1-shot run reports 'rte_1shot/accuracy').
    reference: {row name: the paper's value per column}; None or NaN where
      the paper gives none.
    source: where the paper's numbers come from (shown under the table).
    digits: decimals.

  Returns:
    Markdown; each cell is `ours (paper)`, ours a mean ± std over seeds.
  """
  lines = ['| run | ' + ' | '.join(label for label, _ in columns) + ' |',
           '|---|' + '---:|' * len(columns)]
  for run, results in runs.items():
    flats = [r.flat_metrics() for r in _as_list(results)]
    paper = reference.get(run, [None] * len(columns))
    cells = []
    for (_, keys), theirs in zip(columns, paper):
      key = next((k for k in keys.split('|') if any(k in f for f in flats)), keys)
      ours = _cell([f[key] for f in flats if key in f], None, digits)
      known = theirs is not None and not math.isnan(float(theirs))
      cells.append(f'{ours} ({float(theirs):.{digits}f})' if known else f'{ours} (-)')
    lines.append(f'| {run} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Each cell: ours (mean ± std over seeds) (the paper\'s).'
            + (f' Paper: {source}.' if source else '')]
  return '\n'.join(lines) + '\n'


def format_specialization_table(runs: Mapping[str, RunResults], suite: str | None = None,
                                digits: int = 1) -> str:
  """Percent of each task's outputs whose first word is a fine-tuned-task label.

  Empty string when no run measured it (no `format_labels`).
  """
  suite = suite or averaged_suite_name(runs)
  names = list(runs)
  suite_of = {run: _suites(results, results_lib.SUITE, suite) for run, results in runs.items()}
  labels = next((s.format_labels for group in suite_of.values() for s in group
                 if s.format_labels), None)
  if labels is None:
    return ''
  lines = [f'**{suite}**: format specialization, % of outputs whose first word is one of '
           f'{", ".join(labels)}', '', '| task | ' + ' | '.join(names) + ' |',
           '|---|' + '---:|' * len(names)]
  for task, _ in _ordered_tasks(list(suite_of.values())):
    values = {run: _task_values(suite_of[run], task, 'format_specialization') for run in names}
    lines.append(f'| {task} | ' + ' | '.join(_cell(values[run], None, digits) for run in names)
                 + ' |')
  return '\n'.join(lines) + '\n'


def run_table(result: results_lib.EvalResult, digits: int = 2) -> str:
  """One evaluation in detail: per suite and task, every metric and the counts."""
  head = [f'Evaluation of {result.run or "a model"}'
          + (f' ({result.checkpoint}' + (f', step {result.step})' if result.step is not None
                                         else ')') if result.checkpoint else '')
          + (f'; decoder {result.settings.get("decoder")}' if result.settings else '')]
  lines = head
  for suite in result.suites.values():
    lines += ['', f'**{suite.name}** ({suite.role}, split `{suite.split}`, feature lengths '
              f'{suite.task_feature_lengths})', '',
              '| task | score | metrics | format spec. % | examples | truncated inputs | prompt '
              '| method |', '|---|---:|---|---:|---:|---:|---|---|']
    for name, t in suite.tasks.items():
      metrics = ', '.join(f'{k} {v:.{digits}f}' for k, v in t.metrics.items())
      fs = '-' if t.format_specialization is None else f'{t.format_specialization:.1f}'
      trunc = '?' if t.truncated_inputs is None else str(t.truncated_inputs)
      lines.append(f'| {name} ({t.task}) | {t.score:.{digits}f} ({t.primary_metric}) | '
                   f'{metrics} | {fs} | {t.num_examples} | {trunc} | {t.prompt or "-"} | '
                   f'{t.method} |')
    if suite.norm_avg is not None:
      lines.append(f'| **Norm. Avg.** | {suite.norm_avg:.{digits}f} | | | | | | |')
  return '\n'.join(lines) + '\n'


def report_markdown(runs: Mapping[str, RunResults], baseline: str | None = DEFAULT_BASELINE,
                    digits: int = 2) -> str:
  """Every averaged suite's paper table and format-specialization table, one document."""
  names: list[str] = []
  for results in runs.values():
    for result in _as_list(results):
      for suite in result.suites.values():
        if suite.role == results_lib.SUITE and suite.name not in names:
          names.append(suite.name)
  parts = []
  for name in names:
    parts.append(paper_table(runs, name, baseline, digits))
    fs = format_specialization_table(runs, name)
    if fs:
      parts.append(fs)
  return '\n'.join(parts)


def merge_results(paths: Sequence[str], names: Sequence[str] | None = None
                  ) -> dict[str, list[results_lib.EvalResult]]:
  """Reads results files into {run name: [results, one per seed]}.

  Args:
    paths: results.json files (or folders holding one).
    names: a column name per path (default: each file's run name, else its
      folder name); repeated names group seeds.
  """
  if names is not None and len(names) != len(paths):
    raise ValueError(f'{len(paths)} results files but {len(names)} names; give one name per '
                     'file (repeat a name to group seeds).')
  runs: dict[str, list[results_lib.EvalResult]] = {}
  for i, path in enumerate(paths):
    result = read_results(path)
    if names is not None:
      name = names[i]
    else:
      name = result.run or os.path.basename(os.path.dirname(os.path.abspath(path)))
    runs.setdefault(name, []).append(result)
  return runs


# -----------------------------------------------------------------------------
# Plots.
# -----------------------------------------------------------------------------
def _figure(width: float, height: float):
  from matplotlib.figure import Figure

  return Figure(figsize=(width, height), dpi=100, layout='constrained')


def plot_norm_avg(values: Mapping[str, float | Sequence[float]], path: str,
                  title: str = 'Norm. Avg. per run', ylabel: str = 'Norm. Avg. (0-100)',
                  baseline: str | None = DEFAULT_BASELINE) -> str:
  """Bar plot of Norm. Avg. per run: mean ± std error bars where several seeds are given.

  Args:
    values: {run: score, or [score per seed]}, in bar order (e.g. `norm_avg_values(runs)`).
    path: the PNG to write.
    baseline: a run drawn as a dashed horizontal reference line (if present).

  Returns:
    `path`.
  """
  if not values:
    raise ValueError('plot_norm_avg needs at least one run.')
  names = list(values)
  stats = [_mean_std([v] if isinstance(v, (int, float)) else list(v)) for v in values.values()]
  means = [m for m, _ in stats]
  errors = [0.0 if s is None else s for _, s in stats]
  fig = _figure(max(4.0, 1.1 * len(names) + 1.5), 3.6)
  ax = fig.add_subplot()
  positions = np.arange(len(names))
  ax.bar(positions, means, yerr=errors if any(errors) else None, capsize=4,
         color=['#888888' if n == baseline else '#3b75af' for n in names])
  for x, m, e in zip(positions, means, errors):
    ax.annotate(f'{m:.1f}', (x, m + e), textcoords='offset points', xytext=(0, 3),
                ha='center', fontsize=8)
  ax.set_ylim(0, max(max(m + e for m, e in zip(means, errors)) * 1.15, 1.0))
  if baseline in values:
    ax.axhline(means[names.index(baseline)], color='#555555', linestyle='--', linewidth=1)
  ax.set_xticks(positions, names, rotation=20, ha='right')
  ax.set_ylabel(ylabel)
  n_seeds = max(1 if isinstance(v, (int, float)) else len(v) for v in values.values())
  ax.set_title(title + ('\n(mean ± std over seeds)' if n_seeds > 1 else ''))
  _save(fig, path)
  return path


def _curve_points(curve: CurveLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(steps, mean, std or None) of a curve or of per-seed curves."""
  if isinstance(curve, Mapping):
    steps = sorted(curve)
    return np.asarray(steps, float), np.asarray([curve[s] for s in steps], float), None
  if isinstance(curve, tuple) and len(curve) == 2:
    steps, values = np.asarray(curve[0], float), np.asarray(curve[1], float)
    if steps.shape != values.shape:
      raise ValueError(f'A curve (steps, values) needs equal lengths, got {steps.shape} and '
                       f'{values.shape}.')
    order = np.argsort(steps)
    return steps[order], values[order], None
  seeds = list(curve)
  if not seeds or not all(isinstance(s, Mapping) for s in seeds):
    raise ValueError('A curve is {step: value}, (steps, values), or a list of {step: value} '
                     'per seed.')
  common = sorted(set.intersection(*(set(s) for s in seeds)))
  if not common:
    raise ValueError('The seeds of a curve share no step.')
  table = np.asarray([[s[x] for x in common] for s in seeds], float)
  std = table.std(axis=0, ddof=1) if len(seeds) > 1 else None
  return np.asarray(common, float), table.mean(axis=0), std


def plot_curves(panels: Mapping[str, Mapping[str, CurveLike]], path: str,
                xlabel: str = 'step', title: str | None = None,
                ylabels: Mapping[str, str] | None = None, ncols: int | None = None) -> str:
  """Line plots over steps: one panel per metric, one line per series.

  Args:
    panels: {panel title: {series name: curve}}; a curve is {step: value},
      (steps, values), or a list of {step: value} (seeds: mean line, ±std band).
      E.g. {'RTE accuracy': {...}, 'TriviaQA EM': {...}, '% True/False': {...}}
      with series 'finetune' and 'promot' (the format-specialization curve).
    path: the PNG to write.
    xlabel: the x axis (steps).
    title: a title over all panels.
    ylabels: {panel title: y-axis label}.
    ncols: panels per row (default: all in one row, at most 3).

  Returns:
    `path`.
  """
  if not panels:
    raise ValueError('plot_curves needs at least one panel.')
  n = len(panels)
  ncols = ncols or min(n, 3)
  nrows = math.ceil(n / ncols)
  fig = _figure(4.2 * ncols, 3.3 * nrows)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax, (panel, series) in zip(axes.flat, panels.items()):
    for name, curve in series.items():
      steps, mean, std = _curve_points(curve)
      line, = ax.plot(steps, mean, marker='o', markersize=3, label=name)
      if std is not None:
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_title(panel)
    ax.set_xlabel(xlabel)
    if ylabels and panel in ylabels:
      ax.set_ylabel(ylabels[panel])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[n:]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  _save(fig, path)
  return path


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format='png')


__all__ = ['RESULTS_FORMAT', 'averaged_suite_name', 'format_specialization_table',
           'merge_results', 'norm_avg_values', 'paper_table', 'plot_curves', 'plot_norm_avg',
           'read_metrics_jsonl', 'read_predictions', 'read_results', 'report_markdown',
           'run_table', 'write_predictions', 'write_results']
