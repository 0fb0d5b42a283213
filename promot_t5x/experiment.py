r"""Experiments: named variants (a recipe gin + overrides) x seeds, trained, evaluated, merged.

  promot-experiment my_experiment.toml

A spec (TOML) names the shared gin files (the model, the task), the
evaluation gins, the seeds, and one `[[variants]]` table per column of the
final table:

  name = "prompt_length"
  output_dir = "runs/prompt_length"
  model_gin_files = ["miniature/model.gin"]   # used to train and to evaluate
  gin_files = []                              # gin files shared by the variants
  overrides = ["--gin.MIXTURE_OR_TASK_NAME='mini_rte'",      # settings shared by the variants
               "--gin.MIXTURE_OR_TASK_MODULE='promot_t5x_tasks.synthetic.tasks'",
               "--gin.INITIAL_CHECKPOINT_PATH='tasks/synthetic/data/base_model'",
               "--gin.STAGE1_STEPS=150", "--gin.STAGE2_STEPS=100"]
  eval_gin_files = ["eval/fewshot_miniature.gin"]
  eval_overrides = ["--gin.MIXTURE_OR_TASK_NAME=mini_rte"]
  seeds = [0, 1]

  [[variants]]
  name = "pretrained"
  train = false

  [[variants]]
  name = "promot_p10"
  gin_files = ["promot/promot.gin"]
  overrides = ["--gin.PROMPT_LENGTH=10"]

Each (variant, seed) trains in `output_dir/<variant>/seed_<seed>` (the
recipe's RUN_ENTRY: one stage, or ProMoT's two), is evaluated into
`.../eval/results.json` (from the run's best checkpoint when it selected one
by validation, else its latest: `promot_t5x.selection`), and all results are
merged into `output_dir/table.md`, `table.json` and `norm_avg.png`. A
variant whose results exist is not re-run; an interrupted one resumes from
its checkpoints. Overrides are `--gin.NAME=VALUE` flags or plain gin
bindings; `--gin.NAME=VALUE` on the command line is added to every run's
(e.g. the starting checkpoint).

A spec may carry the paper's numbers for its table (`[reference]`: the
columns as `[label, metric]` pairs, the paper's value per variant and
column, and where they come from); `output_dir/paper_table.md` then shows
ours beside the paper's, in the paper's layout (experiments/paper/*.toml).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence

from promot_t5x import cli, gin_utils


@dataclasses.dataclass(frozen=True)
class Variant:
  """One column: a recipe (gin files) and overrides; `train=False` evaluates the start point."""

  name: str
  gin_files: tuple[str, ...] = ()
  overrides: tuple[str, ...] = ()
  eval_overrides: tuple[str, ...] = ()
  train: bool = True
  seeds: tuple[int, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, 'gin_files', tuple(self.gin_files))
    object.__setattr__(self, 'overrides', tuple(self.overrides))
    object.__setattr__(self, 'eval_overrides', tuple(self.eval_overrides))
    if self.seeds is not None:
      object.__setattr__(self, 'seeds', tuple(self.seeds))
    if not self.name or '/' in self.name:
      raise ValueError(f'Variant name {self.name!r} must be non-empty and contain no "/".')
    if self.train and not self.gin_files:
      raise ValueError(f'Variant {self.name!r} trains but names no recipe gin (gin_files).')


@dataclasses.dataclass(frozen=True)
class Reference:
  """The paper's numbers for an experiment's table.

  Attributes:
    columns: (label, flat metric name) per column, e.g.
      ('Norm. Avg. (1-shot)', 'fewshot_1shot/norm_avg').
    values: {variant: [the paper's value per column, or None where it has none]}.
    source: where the numbers are from (table and page of the paper).
  """

  columns: tuple[tuple[str, str], ...]
  values: Mapping[str, Sequence[float | None]]
  source: str = ''

  def __post_init__(self):
    object.__setattr__(self, 'columns', tuple((str(a), str(b)) for a, b in self.columns))
    for variant, row in self.values.items():
      if len(row) != len(self.columns):
        raise ValueError(f'reference.values[{variant!r}] has {len(row)} numbers for '
                         f'{len(self.columns)} columns.')


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  output_dir: str
  variants: tuple[Variant, ...]
  model_gin_files: tuple[str, ...] = ()
  gin_files: tuple[str, ...] = ()
  overrides: tuple[str, ...] = ()
  eval_gin_files: tuple[str, ...] = ('eval/fewshot_miniature.gin',)
  eval_overrides: tuple[str, ...] = ()
  seeds: tuple[int, ...] = (0,)
  baseline: str = 'pretrained'
  gin_search_paths: tuple[str, ...] = ()
  reference: Reference | None = None

  def __post_init__(self):
    if isinstance(self.reference, Mapping):
      object.__setattr__(self, 'reference', Reference(**self.reference))
    for f in ('variants', 'model_gin_files', 'gin_files', 'overrides', 'eval_gin_files', 'eval_overrides', 'seeds',
              'gin_search_paths'):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    names = [v.name for v in self.variants]
    if len(set(names)) != len(names):
      raise ValueError(f'Variant names must be unique, got {names}.')
    if not self.seeds:
      raise ValueError('An experiment needs at least one seed.')

  def seeds_of(self, variant: Variant) -> tuple[int, ...]:
    return variant.seeds if variant.seeds is not None else self.seeds

  def run_dir(self, variant: Variant, seed: int) -> str:
    return os.path.join(self.output_dir, variant.name, f'seed_{seed}')

  def results_path(self, variant: Variant, seed: int) -> str:
    return os.path.join(self.run_dir(variant, seed), 'eval', 'results.json')


def load_spec(path: str) -> Experiment:
  """An `Experiment` from a TOML spec (see the module docstring)."""
  with open(path, 'rb') as f:
    raw = tomllib.load(f)
  try:
    variants = tuple(Variant(**v) for v in raw.pop('variants'))
    return Experiment(variants=variants, **raw)
  except (TypeError, KeyError) as e:
    raise ValueError(f'Bad experiment spec {path}: {e}. Fields: {[f.name for f in dataclasses.fields(Experiment)]}; '
                     f'variant fields: {[f.name for f in dataclasses.fields(Variant)]}.') from e


def bindings(overrides: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` flags or plain bindings -> plain gin bindings."""
  out = []
  for item in gin_utils.rewrite_gin_args(list(overrides)):
    out.append(item[len('--gin_bindings='):] if item.startswith('--gin_bindings=') else item)
  return out


def _log(msg: str) -> None:
  print(msg, flush=True)


def train_variant(exp: Experiment, variant: Variant, seed: int) -> str:
  """Trains one (variant, seed); returns the folder whose checkpoint is evaluated."""
  import gin

  model_dir = exp.run_dir(variant, seed)
  gin_utils.parse(
      exp.model_gin_files + exp.gin_files + variant.gin_files,
      variant_bindings(exp, variant, seed)
      + [f'SEED = {seed}', f'MODEL_DIR = {model_dir!r}'],
      exp.gin_search_paths)
  entry = gin.query_parameter('%RUN_ENTRY')
  gin_utils.bind_and_call(entry, '')
  # ProMoT's recipe trains two stages; stage 2 is the model to evaluate.
  if entry.endswith('.promot'):
    return os.path.join(model_dir, 'stage2')
  return model_dir


def variant_bindings(exp: Experiment, variant: Variant, seed: int) -> list[str]:
  """The experiment's then the variant's overrides, with `{seed}` and `{output_dir}` filled in.

  A variant can so start from another variant's run of the same seed, e.g.
  `INITIAL_CHECKPOINT_PATH = '{output_dir}/promot/seed_{seed}/stage1'` evaluates
  ProMoT's stage 1 as the prompt-tuning column without training it twice.
  """
  out = []
  for b in bindings(exp.overrides) + bindings(variant.overrides):
    out.append(b.replace('{seed}', str(seed)).replace('{output_dir}', exp.output_dir))
  return out


def initial_checkpoint(exp: Experiment, variant: Variant, seed: int = 0) -> str:
  """INITIAL_CHECKPOINT_PATH as the experiment's gin files define it (for train=False)."""
  import gin

  gin_utils.parse(exp.model_gin_files + exp.gin_files + variant.gin_files,
                  variant_bindings(exp, variant, seed), exp.gin_search_paths,
                  finalize=False)
  path = gin.query_parameter('%INITIAL_CHECKPOINT_PATH')
  if not path:
    raise ValueError(f'Variant {variant.name!r} has train = false, so it evaluates '
                     'INITIAL_CHECKPOINT_PATH, which the experiment gins leave unset.')
  return path


def evaluate_variant(exp: Experiment, variant: Variant, seed: int, checkpoint: str) -> str:
  """Evaluates `checkpoint` with the experiment's eval gins; returns results.json's path."""
  from promot_t5x import selection

  out = os.path.dirname(exp.results_path(variant, seed))
  # A run that selected a checkpoint by validation is evaluated there (the spec may override).
  step = ([f'CHECKPOINT_STEP = {selection.checkpoint_step(checkpoint)!r}']
          if os.path.isdir(os.path.join(checkpoint, 'checkpoints')) else [])
  gin_utils.parse(
      exp.model_gin_files + exp.eval_gin_files,
      step + bindings(exp.eval_overrides) + bindings(variant.eval_overrides)
      + [f'CHECKPOINT_PATH = {checkpoint!r}', f'EVAL_OUTPUT_DIR = {out!r}',
         f'RUN_NAME = {variant.name!r}'],
      exp.gin_search_paths, finalize=False)
  gin_utils.bind_and_call('promot_t5x.eval.evaluate', '')
  return exp.results_path(variant, seed)


def run(exp: Experiment, only: Sequence[str] | None = None,
        after_run: Callable[[Variant, int, str], None] | None = None,
        seeds: Sequence[int] | None = None, merge_table: bool = True,
        log: Callable[[str], None] = _log) -> dict[str, list[str]]:
  """Trains and evaluates every (variant, seed) not yet done; merges the table.

  only: variant names to run; seeds: the seeds to run (None: all), e.g. one
  worker's share when several processes split an experiment (each then passes
  merge_table=False, and a last call without filters merges what they wrote).
  Returns {variant name: [results.json paths, one per seed]}.
  """
  os.makedirs(exp.output_dir, exist_ok=True)
  done: dict[str, list[str]] = {}
  todo = [(v, s) for v in exp.variants if not only or v.name in only
          for s in exp.seeds_of(v) if seeds is None or s in seeds]
  for i, (variant, seed) in enumerate(todo):
    path = exp.results_path(variant, seed)
    label = f'[{i + 1}/{len(todo)}] {variant.name} seed {seed}'
    if os.path.exists(path):
      log(f'{label}: done before ({path})')
    else:
      start = time.time()
      log(f'{label}: training' if variant.train else f'{label}: evaluating the start point')
      checkpoint = (train_variant(exp, variant, seed) if variant.train
                    else initial_checkpoint(exp, variant, seed))
      evaluate_variant(exp, variant, seed, checkpoint)
      log(f'{label}: finished in {time.time() - start:.0f} s')
      if after_run is not None:
        after_run(variant, seed, checkpoint)
    done.setdefault(variant.name, []).append(path)
  if merge_table:
    merge(exp, done)
  return done


def merge(exp: Experiment, done: dict[str, list[str]]) -> str:
  """Writes output_dir/table.md (+ table.json, norm_avg.png); returns the markdown."""
  from promot_t5x import reports

  runs = {name: [reports.read_results(p) for p in paths] for name, paths in done.items()}
  baseline = exp.baseline if exp.baseline in runs else None
  text = reports.report_markdown(runs, baseline=baseline)
  with open(os.path.join(exp.output_dir, 'table.md'), 'w') as f:
    f.write(f'# {exp.name}\n\n{text}\n')
  summary = {name: [r.flat_metrics() for r in results] for name, results in runs.items()}
  with open(os.path.join(exp.output_dir, 'table.json'), 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  if exp.reference is not None:
    with open(os.path.join(exp.output_dir, 'paper_table.md'), 'w') as f:
      f.write(f'# {exp.name}: ours beside the paper\n\n'
              + reports.reference_table(runs, exp.reference.columns, exp.reference.values,
                                        exp.reference.source))
  values = reports.norm_avg_values(runs)
  if values:
    reports.plot_norm_avg(values, os.path.join(exp.output_dir, 'norm_avg.png'),
                          title=f'{exp.name}: Norm. Avg.', baseline=baseline)
  return text


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main('promot-experiment', __doc__, _main, argv, add_flags=_flags, gin=True, parse_gin=False)


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('spec', help='experiment spec (TOML)')
  parser.add_argument('--only', default=None, help='comma-separated variant names to run')
  parser.add_argument('--output_dir', default=None, help='override the spec\'s output_dir')


def _main(args: argparse.Namespace) -> int:
  if args.gin_file or args.gin_search_paths:
    raise cli.UsageError('promot-experiment takes its gin files from the spec (model_gin_files, gin_files, '
                         'eval_gin_files); pass overrides for every run as --gin.NAME=VALUE.')
  extra = tuple(args.gin_bindings)
  exp = load_spec(args.spec)
  if args.output_dir:
    exp = dataclasses.replace(exp, output_dir=args.output_dir)
  if extra:  # e.g. --gin.INITIAL_CHECKPOINT_PATH=/ckpts/mt5_xxl: added to every run
    exp = dataclasses.replace(exp, overrides=exp.overrides + tuple(extra))
  run(exp, args.only.split(',') if args.only else None)
  print(f'results: {exp.output_dir}/table.md')
  return 0


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()

