r"""The official ICL-vs-instruction probe on the miniature's pretrained, fine-tuned and ProMoT models.

  python -m promot_t5x.miniature_probe --miniature_dir=runs/miniature \
      --output_dir=docs/miniature/icl_probe_official

Evaluates with gin/eval/icl_probe_official_miniature.gin (the protocol of
`promot_t5x_tasks.icl_probe`: greedy, at most 10 new tokens, no soft prompt)

  pretrained  the committed base model of the run's world (read from
              <miniature_dir>/summary.json; --base_model overrides it)
  finetune    <miniature_dir>/<task>/finetune/seed_<s>
  promot      <miniature_dir>/<task>/promot/seed_<s>/stage2

each into <eval_dir>/<model>/seed_<s>/ (default <miniature_dir>/icl_probe_official;
an evaluation that has its results.json is not re-run), then writes
<output_dir>/icl_probe_official.{md,json,png} with `conjugate.conjugate_report`:
`starts_with_icl_answer` per task pair and rendering (mean over seeds), the
drop from the pretrained model, and how much of the English drop each other
rendering recovers (the paper's reading). `exact_match_icl_answer` stays in each
evaluation's results.json and table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from promot_t5x import cli, miniature

MODELS = ('pretrained', 'finetune', 'promot')
METRIC = 'starts_with_icl_answer'
BASENAME = 'icl_probe_official'


def world_of(miniature_dir: str) -> str:
  """The synthetic world a `promot-miniature` output folder was made in (its summary.json).

  A folder without summary.json (the run not finished) is taken to be of the default world.
  """
  path = os.path.join(miniature_dir, 'summary.json')
  if not os.path.exists(path):
    return miniature.Settings.world
  with open(path) as f:
    return json.load(f).get('settings', {}).get('world', 'v1')  # (summaries before worlds: v1)


def checkpoint_paths(miniature_dir: str, task: str, seeds: Sequence[int], base_model: str,
                     models: Sequence[str] = MODELS) -> dict[str, list[tuple[int, str]]]:
  """{model: [(seed, checkpoint)]}, as `promot-miniature` lays its runs out.

  `base_model` is the pretrained model of the run's world (`world_of` reads it
  from the run's summary.json); no default, since the worlds' base models differ.
  """
  runs = {'pretrained': lambda s: base_model,
          'finetune': lambda s: os.path.join(miniature_dir, task, 'finetune', f'seed_{s}'),
          'promot': lambda s: os.path.join(miniature_dir, task, 'promot', f'seed_{s}', 'stage2')}
  unknown = [m for m in models if m not in runs]
  if unknown:
    raise cli.UsageError(f'Unknown model(s) {unknown}; choose from {MODELS}.')
  return {m: [(s, runs[m](s)) for s in (seeds[:1] if m == 'pretrained' else seeds)]
          for m in models}


def evaluate(checkpoint: str, output_dir: str, run_name: str, renderings: Sequence[str],
             max_examples: int | None) -> str:
  """Runs the probe on one checkpoint (unless output_dir has results.json); returns that path."""
  from promot_t5x_tasks import icl_probe, icl_probe_miniature

  from promot_t5x import gin_utils

  results = os.path.join(output_dir, 'results.json')
  if os.path.exists(results):
    return results
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f'No checkpoint at {checkpoint}; run promot-miniature first or '
                            'leave that model out (--models).')
  suites = [icl_probe.mixture_name(r, icl_probe_miniature.PREFIX) for r in renderings]
  gin_utils.parse(['miniature/model.gin', 'eval/icl_probe_official_miniature.gin'], [
      f'CHECKPOINT_PATH = {checkpoint!r}', f'EVAL_OUTPUT_DIR = {output_dir!r}',
      f'RUN_NAME = {run_name!r}', f'EVAL_SUITE = {suites!r}',
      f'EVAL_SUITE_NAMES = {list(renderings)!r}', f'MAX_EXAMPLES = {max_examples!r}'],
      finalize=False)
  gin_utils.bind_and_call('promot_t5x.eval.evaluate', '')
  return results


def run(miniature_dir: str, output_dir: str, *, eval_dir: str | None = None, task: str = 'rte',
        seeds: Sequence[int] = (0,), models: Sequence[str] = MODELS,
        renderings: Sequence[str] | None = None, max_examples: int | None = None,
        base_model: str | None = None):
  """Evaluates every (model, seed) and writes the report; returns the `ConjugateReport`.

  base_model: the pretrained model; None = the committed base model of the run's world.
  """
  from promot_t5x_tasks import conjugate as nl

  from promot_t5x import conjugate, reports

  renderings = list(renderings or nl.PROBE_RENDERINGS)
  eval_dir = eval_dir or os.path.join(miniature_dir, BASENAME)
  prefix, _, world_base = miniature.WORLDS[world_of(miniature_dir)]
  base_model = base_model or world_base
  scores = {}
  for model, checkpoints in checkpoint_paths(miniature_dir, task, seeds, base_model,
                                             models).items():
    per_seed = []
    for seed, checkpoint in checkpoints:
      miniature._log(f'icl probe: {model} seed {seed} ({checkpoint})')  # pylint: disable=protected-access
      result = reports.read_results(evaluate(
          checkpoint, os.path.join(eval_dir, model, f'seed_{seed}'), model, renderings,
          max_examples))
      per_seed.append({r: miniature._plain_task_scores(result.suites[r].scores)  # pylint: disable=protected-access
                       for r in renderings})
    scores[model] = {r: {t: sum(s[r][t] for s in per_seed) / len(per_seed) for t in per_seed[0][r]}
                     for r in renderings}
  size = 'all' if max_examples is None else f'first {max_examples}'
  return conjugate.conjugate_report(
      scores, output_dir, reference='pretrained', identity='english', basename=BASENAME,
      title=f'Official ICL-vs-instruction probe, {prefix}{task} models: {METRIC} ({size} prompts '
            f'per task pair, mean over seeds {",".join(map(str, seeds))})')


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--miniature_dir', required=True, help="promot-miniature's --output_dir")
  parser.add_argument('--output_dir', default='docs/miniature/icl_probe_official',
                      help=f'where {BASENAME}.md/.json/.png go')
  parser.add_argument('--eval_dir', default=None,
                      help=f'the evaluations (default <miniature_dir>/{BASENAME})')
  parser.add_argument('--task', default='rte', choices=miniature.FINETUNE_TASKS)
  parser.add_argument('--seeds', default='0', help='comma-separated')
  parser.add_argument('--models', default=','.join(MODELS), help='comma-separated')
  parser.add_argument('--renderings', default=None, help='comma-separated (default: all)')
  parser.add_argument('--max_examples', type=int, default=None,
                      help='prompts per task pair (default: all 100)')
  parser.add_argument('--base_model', default=None,
                      help="the pretrained model (default: the committed base model of the run's world)")


def _main(args: argparse.Namespace) -> int:
  report = run(args.miniature_dir, args.output_dir, eval_dir=args.eval_dir, task=args.task,
               seeds=[int(s) for s in args.seeds.split(',')], models=args.models.split(','),
               renderings=args.renderings.split(',') if args.renderings else None,
               max_examples=args.max_examples, base_model=args.base_model)
  print(f'wrote {report.markdown_path}, {report.json_path}, {report.plot_path}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main('promot_t5x.miniature_probe', __doc__, _main, argv, add_flags=_flags)


if __name__ == '__main__':
  sys.exit(main())
