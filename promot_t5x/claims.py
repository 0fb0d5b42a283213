"""The paper's claims as verdicts computed from intervals.

Each claim of the ProMoT paper becomes one measured quantity per seed (paired
across methods: every method is evaluated on the same examples with the same
seeds), a mean with its 95 % t-interval, and a test of that interval against
the claim's bound:

| test | supported | not supported | otherwise |
|---|---|---|---|
| `above` b | interval entirely above b | interval entirely below b | inconclusive |
| `below` b | interval entirely below b | interval entirely above b | inconclusive |
| `within` m | interval inside [-m, m] | interval entirely outside it | inconclusive |

The verdict is never written by hand: `Claim.verdict` is computed from the
interval, and `check_claims_file` recomputes it from the stored numbers.

`miniature_claims` builds the claims of the ProMoT miniature from its result
tables (per task, per run, one flat metric dict per seed, the seeds in the
same order for every run) and its training curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scipy import stats

# How every interval in a claims file is computed (its settings record this).
INTERVAL = 'two-sided 95 % t-interval over seeds; differences paired by seed'
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = 'supported', 'not supported', 'inconclusive'
TESTS = ('above', 'below', 'within')


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean over seeds with its two-sided 95 % t-interval (None below two values)."""

  mean: float
  ci95: tuple[float, float] | None
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> Estimate:
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
      raise ValueError('An estimate needs at least one value.')
    mean = sum(values) / n
    if n < 2:
      return cls(mean, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return cls(mean, (mean - half, mean + half), n)

  def as_dict(self) -> dict[str, Any]:
    return {'mean': self.mean, 'ci95': list(self.ci95) if self.ci95 else None, 'n': self.n}


def verdict(estimate: Estimate, test: str, bound: float) -> str:
  """The verdict of `estimate`'s interval under `test` with `bound` (see the module table)."""
  if test not in TESTS:
    raise ValueError(f'Unknown test {test!r}; use one of {TESTS}.')
  if estimate.ci95 is None:
    return INCONCLUSIVE
  lo, hi = estimate.ci95
  if test == 'above':
    return SUPPORTED if lo > bound else NOT_SUPPORTED if hi < bound else INCONCLUSIVE
  if test == 'below':
    return SUPPORTED if hi < bound else NOT_SUPPORTED if lo > bound else INCONCLUSIVE
  if -bound <= lo and hi <= bound:
    return SUPPORTED
  return NOT_SUPPORTED if lo > bound or hi < -bound else INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim: what the paper says, what we measure, the groups, and the tested estimate.

  Attributes:
    id: short identifier ('C1-rte').
    paper: the claim in the paper's words, with its table or figure.
    measure: what is computed per seed, and the test's bound.
    groups: the per-method estimates shown beside the test (e.g. fine-tuning, ProMoT).
    tested: the estimate the verdict is computed from (often a paired difference).
    test: 'above', 'below' or 'within'.
    bound: the test's bound (a margin for 'within').
  """

  id: str
  paper: str
  measure: str
  groups: Mapping[str, Estimate]
  tested: Estimate
  test: str
  bound: float

  @property
  def verdict(self) -> str:
    return verdict(self.tested, self.test, self.bound)

  @property
  def reading(self) -> str:
    """One sentence: the tested estimate, its interval and what that means."""
    ci = (f'95 % CI {self.tested.ci95[0]:+.2f} to {self.tested.ci95[1]:+.2f}'
          if self.tested.ci95 else 'no interval (fewer than two seeds)')
    rule = {'above': f'above {self.bound:g}', 'below': f'below {self.bound:g}',
            'within': f'within +-{self.bound:g}'}[self.test]
    return (f'{self.measure}: mean {self.tested.mean:+.2f} ({ci}, n={self.tested.n}); the claim needs '
            f'the interval {rule}: {self.verdict}.')

  def as_dict(self) -> dict[str, Any]:
    return {'id': self.id, 'paper': self.paper, 'measure': self.measure,
            'groups': {k: v.as_dict() for k, v in self.groups.items()},
            'tested': self.tested.as_dict(), 'test': self.test, 'bound': self.bound,
            'verdict': self.verdict, 'reading': self.reading}


def check_claims_file(data: Mapping[str, Any]) -> list[str]:
  """Problems of a claims.json document (empty when its verdicts follow from its intervals)."""
  problems = []
  for key in ('settings', 'claims'):
    if key not in data:
      problems.append(f'missing {key!r}')
  for c in data.get('claims', ()):
    t = c.get('tested', {})
    est = Estimate(t.get('mean', math.nan), tuple(t['ci95']) if t.get('ci95') else None, t.get('n', 0))
    expected = verdict(est, c.get('test', ''), c.get('bound', 0.0)) if c.get('test') in TESTS else None
    if expected is None:
      problems.append(f'{c.get("id")}: unknown test {c.get("test")!r}')
    elif c.get('verdict') != expected:
      problems.append(f'{c.get("id")}: verdict {c.get("verdict")!r} does not follow from its interval '
                      f'({expected!r})')
  return problems


# -- the miniature's claims ----------------------------------------------------------------
Tables = Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]
Curves = Mapping[str, Sequence[Mapping[str, Mapping[Any, float]]]]
NORM_AVG = 'fewshot_1shot/norm_avg'
TASK_SCORE = {'rte': 'rte/accuracy', 'enfr': 'enfr/bleu'}  # the target task, with the run's prompt
PAPER_NAMES = {'rte': 'RTE', 'enfr': 'En-Fr'}


def _values(tables: Tables, task: str, run: str, key: str) -> list[float]:
  rows = tables.get(task, {}).get(run, ())
  return [float(r[key]) for r in rows if key in r]


def _deltas(tables: Tables, task: str, run: str, key: str = NORM_AVG) -> list[float]:
  """Per-seed change of `key` from the pretrained model (evaluated once: it is deterministic)."""
  base = _values(tables, task, 'pretrained', key)
  if not base:
    return []
  return [v - base[0] for v in _values(tables, task, run, key)]


def _paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
  if len(a) != len(b):
    raise ValueError(f'Paired comparison of {len(a)} and {len(b)} seeds: every method needs the same seeds.')
  return [x - y for x, y in zip(a, b)]


def _curve(curves: Curves, run: str, metric: str) -> list[dict[int, float]]:
  return [{int(k): float(v) for k, v in seed[metric].items()}
          for seed in curves.get(run, ()) if metric in seed]


def _claim(id_, paper, measure, groups, tested, test, bound) -> Claim | None:
  groups = {k: Estimate.of(v) for k, v in groups.items() if v}
  return Claim(id_, paper, measure, groups, Estimate.of(tested), test, bound) if tested else None


def miniature_claims(tables: Tables, curves: Curves | None = None, *, task_margin: float = 2.0,
                     alignment_bound: float = 0.5, prefix: str = 'mini_') -> list[Claim]:
  """The paper's claims measured on the miniature's runs (claims without data are left out).

  Args:
    tables: task -> run -> per-seed flat metrics ('fewshot_1shot/norm_avg', ...),
      with runs 'pretrained', 'finetune', 'promot', 'promot_1shot', and where run,
      'finetune_multitask' / 'promot_multitask', 'finetune_shuffled' and 'promot_shuffled'.
    curves: run -> per-seed curves ({metric: {step: value}}) of mini_rte
      fine-tuning ('finetune') and ProMoT stage 2 ('promot'), seeds in the same order.
    task_margin: points within which ProMoT's task score must stay of fine-tuning's.
    alignment_bound: the cosine the gradient alignment at step 0 must exceed.
    prefix: the world's task-name prefix, for the measures' text ('mini_', 'mini2_').

  Returns:
    The claims, in the order of the paper's sections.
  """
  out: list[Claim | None] = []
  for task in tables:
    name = PAPER_NAMES.get(task, task)
    ft, pm = _deltas(tables, task, 'finetune'), _deltas(tables, task, 'promot')
    out.append(_claim(
        f'C1-{task}', f'Standard fine-tuning on {name} lowers the 1-shot Norm. Avg. of the 8 evaluation tasks '
        '(Table 1: 17.52 -> 15.43 after RTE, -> 9.15 after En-Fr).',
        f'change of the 1-shot Norm. Avg. from the pretrained model after fine-tuning on {prefix}{task} (points)',
        {'finetune': ft}, ft, 'below', 0.0))
    out.append(_claim(
        f'C2-{task}', f'ProMoT loses less in-context ability than fine-tuning on {name} '
        '(Table 1: 20.10 vs 15.43 after RTE, 18.87 vs 9.15 after En-Fr).',
        f'ProMoT minus fine-tuning, change of the 1-shot Norm. Avg. (points, paired by seed, {prefix}{task})',
        {'finetune': ft, 'promot': pm}, _paired(pm, ft) if pm and ft else [], 'above', 0.0))
    fts, pms = _values(tables, task, 'finetune', TASK_SCORE[task]), _values(tables, task, 'promot', TASK_SCORE[task])
    out.append(_claim(
        f'C3-{task}', f'ProMoT matches fine-tuning on the fine-tuned task ({name}: 92.78 vs 92.06 RTE accuracy; '
        '41.30 vs 41.80 En-Fr BLEU).',
        f'ProMoT (with its prompt) minus fine-tuning, {prefix}{task} test score (points, paired by seed); '
        f'bound +-{task_margin:g}',
        {'finetune': fts, 'promot': pms}, _paired(pms, fts) if pms and fts else [], 'within', task_margin))
    p1 = _deltas(tables, task, 'promot_1shot')
    out.append(_claim(
        f'C6-{task}', f'ProMoT + 1-shot training keeps more in-context ability than ProMoT on {name} '
        '(Table 1: 22.26 vs 20.10 after RTE, 19.91 vs 18.87 after En-Fr).',
        f'ProMoT + 1-shot minus ProMoT, change of the 1-shot Norm. Avg. (points, paired by seed, {prefix}{task})',
        {'promot': pm, 'promot_1shot': p1}, _paired(p1, pm) if p1 and pm else [], 'above', 0.0))
    if task == 'enfr':
      tr = [f'fewshot_1shot/{f}/bleu' for f in ('ende', 'enro')]
      base = [_values(tables, task, 'pretrained', k) for k in tr]
      if all(base):
        per = [_values(tables, task, 'promot', k) for k in tr]
        gains = [sum(v[i] - b[0] for v, b in zip(per, base)) / len(tr) for i in range(len(per[0]))]
        ftper = [_values(tables, task, 'finetune', k) for k in tr]
        ftg = [sum(v[i] - b[0] for v, b in zip(ftper, base)) / len(tr) for i in range(len(ftper[0]))]
        out.append(_claim(
            'C8-enfr', 'ProMoT on En-Fr improves the other translation tasks (Table 2: En-De and En-Ro 1-shot BLEU '
            'rise after ProMoT on En-Fr).',
            'change of the mean 1-shot BLEU of the En-De and En-Ro analogues from the pretrained model after '
            f'ProMoT on {prefix}enfr (points)', {'finetune': ftg, 'promot': gains}, gains, 'above', 0.0))
  multi = {t: (_deltas(tables, t, 'finetune_multitask'), _deltas(tables, t, 'promot_multitask')) for t in tables}
  mft = [sum(v) / len(v) for v in zip(*[m[0] for m in multi.values() if m[0]])] if multi else []
  mpm = [sum(v) / len(v) for v in zip(*[m[1] for m in multi.values() if m[1]])] if multi else []
  if mft and mpm:
    out.append(_claim(
        'C7', 'Multi-task ProMoT (RTE + En-Fr) keeps more in-context ability than multi-task fine-tuning '
        '(Table 3: 25.88 vs 20.06).',
        'multi-task ProMoT minus multi-task fine-tuning, change of the 1-shot Norm. Avg., mean over the '
        'fine-tuned tasks\' evaluations (points, paired by seed)',
        {'finetune_multitask': mft, 'promot_multitask': mpm}, _paired(mpm, mft), 'above', 0.0))
  if 'rte' in tables:
    sh = _deltas(tables, 'rte', 'finetune_shuffled')
    out.append(_claim(
        'C10', 'Fine-tuning on RTE with shuffled labels still costs in-context ability: the loss is format '
        'specialization, not the task (Section 4).',
        f'change of the 1-shot Norm. Avg. from the pretrained model after fine-tuning on {prefix}rte with shuffled '
        'labels (points)', {'finetune_shuffled': sh, 'promot_shuffled': _deltas(tables, 'rte', 'promot_shuffled')},
        sh, 'below', 0.0))
  if curves:
    fs_ft, fs_pm = _curve(curves, 'finetune', 'qa_true_false'), _curve(curves, 'promot', 'qa_true_false')
    if fs_ft:
      steps = sorted(fs_ft[0])
      early = steps[1] if len(steps) > 1 else steps[0]
      rise = [c[early] - c[steps[0]] for c in fs_ft]
      out.append(_claim(
          'C4', 'Format specialization happens early in fine-tuning: RTE fine-tuning makes the model answer '
          'TriviaQA with True/False (Figure 3: 90 % after 300 steps).',
          f'share of 1-shot TriviaQA-analogue answers that are True/False at step {early} minus step '
          f'{steps[0]} of fine-tuning on {prefix}rte (points)', {'finetune': rise}, rise, 'above', 0.0))
      if fs_pm:
        last = steps[-1]
        diff = _paired([c[last] for c in fs_pm], [c[last] for c in fs_ft])
        out.append(_claim(
            'C5', 'ProMoT stage 2 (prompt attached) keeps format specialization low (Figure 3).',
            f'True/False share of 1-shot TriviaQA-analogue answers after {last} steps: ProMoT stage 2 (prompt '
            'removed) minus fine-tuning (points, paired by seed)',
            {'finetune': [c[last] for c in fs_ft], 'promot': [c[last] for c in fs_pm]}, diff, 'below', 0.0))
    ga = _curve(curves, 'finetune', 'grad_alignment')
    if ga:
      start = [c[min(c)] for c in ga]
      out.append(_claim(
          'C9', 'At the start of fine-tuning the gradient on real RTE labels is aligned with the gradient on '
          'shuffled labels (Figure 4: cosine ~1 at step 0).',
          f'cosine between the last decoder layer\'s gradients on real and on shuffled labels at step 0 of '
          f'fine-tuning on {prefix}rte; bound {alignment_bound:g}', {'finetune': start}, start, 'above',
          alignment_bound))
  return [c for c in out if c is not None]


def claims_document(claims: Sequence[Claim], settings: Mapping[str, Any]) -> dict[str, Any]:
  """The claims.json document: the settings it was measured with and every claim."""
  return {'settings': dict(settings), 'claims': [c.as_dict() for c in claims]}


def estimate_text(e: Estimate | Mapping[str, Any], digits: int = 2) -> str:
  """'mean [lo, hi]' of an Estimate or of its `as_dict()` ('mean' alone without an interval)."""
  mean, ci = (e['mean'], e['ci95']) if isinstance(e, Mapping) else (e.mean, e.ci95)
  return f'{mean:.{digits}f}' + (f' [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]' if ci else '')


def claims_markdown(claims: Sequence[Claim]) -> str:
  """A table of the claims: paper, measure, groups (mean [95 % CI]), verdict."""
  cell = estimate_text
  lines = ['| id | claim (paper) | measure | groups, mean [95 % CI] | tested | verdict |',
           '|---|---|---|---|---|---|']
  for c in claims:
    groups = '; '.join(f'{k}: {cell(v)} (n={v.n})' for k, v in c.groups.items())
    lines.append(f'| {c.id} | {c.paper} | {c.measure} | {groups} | {cell(c.tested)} ({c.test} '
                 f'{c.bound:g}) | **{c.verdict}** |')
  return '\n'.join(lines) + '\n'


# The README's claims tables: each block between a begin line naming its claims.json
# (relative to the README; `path#C7,C10` keeps those claims only) and the end line is
# generated from that file.
README_BEGIN = '<!-- claims table from {path}: python -m promot_t5x.claims --readme=README.md -->'
README_END = '<!-- end of the claims table -->'
_README_BLOCK = re.compile(r'<!-- claims table from ([^\s#]+)(?:#([\w,-]+))?: '
                           r'python -m promot_t5x\.claims --readme=README\.md -->\n'
                           r'(.*?)' + re.escape(README_END), re.S)


def readme_table(doc: Mapping[str, Any], ids: Sequence[str] | None = None) -> str:
  """The README's short claims table from a claims.json document: tested mean [95 % CI], verdict.

  ids: the claims to show (default: all), e.g. ('C7', 'C10').
  """

  def cell(t: Mapping[str, Any]) -> str:
    ci = t.get('ci95')
    return f'{t["mean"]:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]' if ci else f'{t["mean"]:+.2f}'

  rule = {'above': 'above {b:g}', 'below': 'below {b:g}', 'within': 'within ±{b:g}'}
  lines = ['| claim | tested (mean [95 % CI], n) | needs | verdict |', '|---|---|---|---|']
  for c in doc['claims']:
    if ids is not None and c['id'] not in ids:
      continue
    lines.append(f'| {c["id"]} | {cell(c["tested"])}, n={c["tested"]["n"]} | '
                 f'{rule[c["test"]].format(b=c["bound"])} | {c["verdict"]} |')
  return '\n'.join(lines)


def update_readme(readme: str, load: Callable[[str], Mapping[str, Any]]) -> str:
  """`readme`'s text with every claims block regenerated: `load(path)` gives the block's claims.json."""
  if not _README_BLOCK.search(readme):
    raise ValueError('The README has no claims table block: put a line '
                     f'{README_BEGIN.format(path="docs/miniature/claims.json")!r} and a line '
                     f'{README_END!r} where the table goes.')

  def block(m: re.Match) -> str:
    doc = load(m.group(1))
    problems = check_claims_file(doc)
    if problems:
      raise ValueError(f'{m.group(1)}: ' + '; '.join(problems))
    ids = m.group(2).split(',') if m.group(2) else None
    missing = sorted(set(ids or ()) - {c['id'] for c in doc['claims']})
    if missing:
      raise ValueError(f'{m.group(1)} has no claim {missing} (its claims: {[c["id"] for c in doc["claims"]]}).')
    path = m.group(1) + (f'#{m.group(2)}' if m.group(2) else '')
    return f'{README_BEGIN.format(path=path)}\n{readme_table(doc, ids)}\n{README_END}'

  return _README_BLOCK.sub(block, readme)


def write_claims(path: str, claims: Sequence[Claim], settings: Mapping[str, Any]) -> str:
  """Writes claims.json (and claims.md beside it); returns the JSON path."""
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(claims_document(claims, settings), f, indent=2)
    f.write('\n')
  with open(path[:-len('.json')] + '.md' if path.endswith('.json') else path + '.md', 'w',
            encoding='utf-8') as f:
    f.write(claims_markdown(claims))
  return path


def claims_from_summary(summary: Mapping[str, Any]) -> tuple[list[Claim], dict[str, Any]]:
  """The claims of a miniature run's summary.json (its tables and curves), with the settings to record."""
  curves = summary.get('curves') or None
  if curves:
    curves = {'finetune': curves.get('finetune', []), 'promot': curves.get('promot_stage2', [])}
  s = summary.get('settings', {})
  info = {'seeds': s.get('seeds'), 'eval_examples_per_task': s.get('max_examples'),
          'task_test_examples': s.get('task_examples', s.get('max_examples')), 'world': s.get('world', 'v1'),
          'model_learning_rate': s.get('model_learning_rate'),
          'interval': INTERVAL}
  counts = summary.get('examples_scored')
  if counts:  # what was scored (a split may hold fewer than the settings ask for)
    info.update(eval_examples_per_task=min(counts['eval'].values(), default=0),
                task_test_examples=min(counts['task'].values(), default=0), examples_scored=counts)
  # The world's task prefix (miniature.WORLDS; not imported: miniature imports this module).
  prefix = {'v1': 'mini_', 'v2': 'mini2_', 'v3': 'mini3_'}.get(s.get('world', 'v1'), 'mini_')
  return miniature_claims(summary['tables'], curves, prefix=prefix), info


def main(argv: Sequence[str] | None = None) -> int:
  """(Re)computes claims.json from a run, or puts a claims.json's table into the README.

  python -m promot_t5x.claims --summary=runs/miniature/summary.json    # claims.json beside it
  python -m promot_t5x.claims --readme=README.md                       # its tables, from the files they name
  """
  import argparse
  import os
  import sys

  parser = argparse.ArgumentParser(prog='python -m promot_t5x.claims', description=main.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--summary', default=None, help="a miniature run's summary.json")
  parser.add_argument('--output', default=None, help='default: claims.json beside the summary')
  parser.add_argument('--readme', default=None,
                      help='a README whose claims-table blocks are regenerated from the claims.json they name')
  args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  if args.readme:
    root = os.path.dirname(os.path.abspath(args.readme))

    def load(path: str) -> dict[str, Any]:
      with open(os.path.join(root, path), encoding='utf-8') as f:
        return json.load(f)

    with open(args.readme, encoding='utf-8') as f:
      text = f.read()
    try:
      text = update_readme(text, load)
    except (ValueError, OSError) as e:
      parser.error(str(e))
    with open(args.readme, 'w', encoding='utf-8') as f:
      f.write(text)
    print(f'{args.readme}: claims tables regenerated')
    return 0
  if not args.summary:
    parser.error('pass --summary (a run to compute claims from) or --readme (a README to update).')
  with open(args.summary, encoding='utf-8') as f:
    summary = json.load(f)
  found, info = claims_from_summary(summary)
  info['command'] = f'python -m promot_t5x.claims --summary={args.summary}'
  path = write_claims(args.output or os.path.join(os.path.dirname(args.summary), 'claims.json'), found, info)
  for c in found:
    print(f'{c.id}: {c.verdict}')
  print(f'claims: {path}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
