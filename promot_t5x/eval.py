r"""`promot-eval`: evaluate a checkpoint on few-shot suites, or merge results into one table.

  promot-eval --gin_file=models/mt5_xxl.gin --gin_file=eval/fewshot_paper.gin \
    --gin.CHECKPOINT_PATH=/runs/promot_rte/stage2 --gin.CHECKPOINT_STEP=best \
    --gin.MIXTURE_OR_TASK_NAME=promot_rte --gin.EVAL_OUTPUT_DIR=/evals/promot_rte

  promot-eval --merge /evals/pretrained /evals/finetune /evals/promot_rte \
    --names pretrained,finetune,promot --output /evals/table.md --plot /evals/norm_avg.png

Evaluating, a run is:
  1. read the parameters (a run folder at CHECKPOINT_STEP = latest / best / a
     step, a step or params folder, a legacy T5X checkpoint, a Hugging Face
     folder); the soft prompt(s) are taken from the checkpoint as they are;
  2. score the fine-tuned task(s) MIXTURE_OR_TASK_NAME with the prompt
     (PROMPT_NAME = 'auto': the checkpoint's prompt if it has one) and every
     task of EVAL_SUITE (one or more mixtures) without it;
  3. write EVAL_OUTPUT_DIR/results.json, table.md, predictions/<suite>/<task>.jsonl
     and config.gin.

On several hosts every process runs the same command (on GPU/CPU clusters
with `--coordinator_address=HOST:PORT --process_count=N --process_index=I`,
or nothing inside SLURM or on a TPU pod, as promot-train): each reads the
checkpoint and the data, the batches and parameters are sharded over the
global mesh, the outputs are gathered, and process 0 writes the files.

Merging reads results.json files (or folders holding one) into the paper's
table: tasks as rows, runs as columns, deltas against the run named by
--baseline (default 'pretrained'); repeated --names group seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax

from promot_t5x import cli, evaluation, fs, gin_utils, param_sets, partitioning, paths, preflight, reports, t5x_flags
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.checkpoints import sources
from promot_t5x.models import encoder_decoder, t5
from promot_t5x.models import prompts as prompts_lib


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def resolve_step(checkpoint_path: str, checkpoint_step: int | str) -> int | None:
  """The step number a run folder's 'latest' / 'best' designates (None for other formats)."""
  from promot_t5x import checkpoints as ckpt_lib

  if not fs.isdir(ckpt_manager.checkpoint_dir(checkpoint_path)):
    return int(checkpoint_step) if isinstance(checkpoint_step, int) else None
  if checkpoint_step == 'latest':
    return ckpt_lib.latest_step(ckpt_manager.checkpoint_dir(checkpoint_path))
  if checkpoint_step == 'best':
    return ckpt_manager.best_step(checkpoint_path)
  return int(checkpoint_step)


def load_params(model: encoder_decoder.EncoderDecoderModel, checkpoint_path: str,
                checkpoint_step: int | str = 'latest',
                partitioner: partitioning.Partitioner | None = None,
                ) -> tuple[encoder_decoder.EncoderDecoderModel, dict[str, Any]]:
  """(model fitted to the checkpoint's prompts, float32 parameters) of any checkpoint format.

  The checkpoint decides the soft prompts: `prompt/<name>` arrays `[P, E]`
  give the model a prompt config with those names and length P (keeping the
  model gin's other prompt settings); no prompt arrays, no prompt. Everything
  else must match the model gin exactly (a clear error names each mismatch).
  With a partitioner the parameters come laid out on its mesh, each process
  reading only its devices' slices (`checkpoints.sources`); without, as numpy.
  """
  source = sources.open_source(checkpoint_path, checkpoint_step)
  flat = source.shapes
  prefix = param_sets.PROMPT_ROOT + '/'
  prompt_arrays = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  config = model.config
  if prompt_arrays:
    lengths = {int(v.shape[0]) for v in prompt_arrays.values()}
    if len(lengths) != 1:
      raise ckpt_manager.CheckpointError(
          f'The prompts of {checkpoint_path} have different lengths {sorted(lengths)}.')
    names = tuple(sorted(prompt_arrays))
    base = config.prompt or prompts_lib.PromptConfig()
    prompt = dataclasses.replace(base, length=lengths.pop(), names=names, init='uniform',
                                 init_file=None, class_label_ids=())
  else:
    prompt = None
  if prompt != config.prompt:
    model = dataclasses.replace(model, module=model.module.clone(config=config.replace(
        prompt=prompt)))
  # Checkpoints hold the unrolled layout; a model with scanned layers stacks after reading.
  unrolled = functools.partial(t5.unscan_params, config=model.config, take=t5.take_layer_abstract)
  want = param_sets.flatten(unrolled(_unboxed_abstract(model)))
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want))
  wrong = [f'{p}: checkpoint {tuple(flat[p].shape)} vs model {tuple(want[p].shape)}'
           for p in sorted(set(want) & set(flat)) if tuple(flat[p].shape) != tuple(want[p].shape)]
  if missing or extra or wrong:
    raise ckpt_manager.CheckpointError(
        f'Checkpoint {checkpoint_path} does not fit the model gin: missing {missing[:10]}, '
        f'unexpected {extra[:10]}, wrong shape {wrong[:10]}. Use the model gin the run was '
        'trained with (sizes, vocabulary).')
  model_shardings = (partitioner.param_shardings(model.abstract_params())
                     if partitioner is not None else None)
  shardings = param_sets.flatten(unrolled(model_shardings)) if model_shardings else {}
  params = param_sets.unflatten(source.read({k: shardings.get(k) for k in flat}))
  if model.config.scan_layers:
    params = t5.scan_params(params, model.config)
    if model_shardings is not None:
      params = jax.device_put(params, model_shardings)
  return model, params


def _unboxed_abstract(model: encoder_decoder.EncoderDecoderModel) -> Any:
  import flax.linen as nn

  return nn.unbox(model.abstract_params())


def make_suites(mixture_or_task_names: str | Sequence[str] | None,
                names: str | Sequence[str] | None = None,
                **suite_kwargs: Any) -> list[evaluation.Suite]:
  """One averaged suite per mixture (gin: EVAL_SUITE may be a name or a list).

  Args:
    mixture_or_task_names: mixture name(s); each becomes its own suite.
    names: the suites' names (default: the mixture names).
    **suite_kwargs: passed to `evaluation.make_suite` (split, feature
      lengths, format_labels, module, ...).
  """
  if mixture_or_task_names is None:
    return []
  mixtures = ([mixture_or_task_names] if isinstance(mixture_or_task_names, str)
              else list(mixture_or_task_names))
  names = ([names] if isinstance(names, str) else list(names)) if names else list(mixtures)
  if len(names) != len(mixtures):
    raise ValueError(f'EVAL_SUITE_NAMES has {len(names)} names for {len(mixtures)} suites.')
  return [evaluation.make_suite(m, name=n, role=evaluation.SUITE, **suite_kwargs)
          for m, n in zip(mixtures, names)]


def evaluate(*, model: encoder_decoder.EncoderDecoderModel, checkpoint_path: str,
             output_dir: str, suites: Sequence[evaluation.Suite] = (),
             target: evaluation.Suite | None = None,
             checkpoint_step: int | str = 'latest',
             settings: evaluation.EvalSettings | None = None,
             partitioner: partitioning.Partitioner | None = None,
             run_name: str | None = None) -> evaluation.EvalResult:
  """Evaluates one checkpoint and writes its results (the gin entry point of promot-eval).

  Args:
    model: the model gin's MODEL (its prompt settings follow the checkpoint).
    checkpoint_path: CHECKPOINT_PATH. checkpoint_step: 'latest', 'best' or an int.
    output_dir: EVAL_OUTPUT_DIR.
    suites: averaged few-shot suites (prompt removed).
    target: the fine-tuned task(s), usually with the prompt (None: none).
    settings: decoding, batch size, max examples.
    partitioner: places parameters and batches on a mesh (None: default device).
    run_name: the run's column name in merged tables (default: output_dir's name).

  Returns:
    The `EvalResult` (also written to output_dir).
  """
  all_suites = ([target] if target is not None else []) + [s for s in suites if s is not None]
  if not all_suites:
    raise ValueError('Nothing to evaluate: set EVAL_SUITE and/or MIXTURE_OR_TASK_NAME.')
  settings = settings or evaluation.EvalSettings()
  run_name = run_name or fs.basename(output_dir)
  _check_paths(checkpoint_path, output_dir)
  model, params = load_params(model, checkpoint_path, checkpoint_step, partitioner)
  step = resolve_step(checkpoint_path, checkpoint_step)
  prompts = model.config.prompt.names if model.config.prompt else ()
  _log(f'evaluating {checkpoint_path} (step {step}, prompts {list(prompts) or "none"}) on '
       + ', '.join(f'{s.name} ({len(s.tasks)} tasks)' for s in all_suites))
  result = evaluation.Evaluator(all_suites, settings, partitioner).evaluate(
      model, params, step=step, run=run_name, checkpoint=fs.absolute(checkpoint_path))
  if jax.process_index() == 0:
    write_outputs(result, output_dir)
  _log(reports.run_table(result))
  _log(f'wrote {output_dir}/results.json, table.md and predictions/ '
       f'({result.seconds:.0f}s)')
  return result


def _check_paths(checkpoint_path: str, output_dir: str) -> None:
  """Fails before any work when the results could not be written or there is nothing to read."""
  for name, path in (('CHECKPOINT_PATH', checkpoint_path), ('EVAL_OUTPUT_DIR', output_dir)):
    problem = paths.url_path_problem(name, path, 'promot-eval')
    if problem:
      raise ValueError(problem)
  problem = preflight.writable_problem('EVAL_OUTPUT_DIR', output_dir)
  if problem:
    raise ValueError(problem)
  if not fs.exists(checkpoint_path):
    raise ckpt_manager.CheckpointError(
        f'CHECKPOINT_PATH={checkpoint_path!r} does not exist. Set --gin.CHECKPOINT_PATH to a '
        'run folder (MODEL_DIR of promot-train), a step or params folder, a legacy T5X '
        'checkpoint or a Hugging Face folder.')
  if jax.process_index() == 0:
    fs.makedirs(output_dir)


def write_outputs(result: evaluation.EvalResult, output_dir: str) -> None:
  """results.json, table.md, predictions/<suite>/<task>.jsonl and config.gin."""
  fs.makedirs(output_dir)
  reports.write_results(result, fs.join(output_dir, 'results.json'))
  reports.write_predictions(result, fs.join(output_dir, 'predictions'))
  table = reports.run_table(result)
  if any(s.role == evaluation.SUITE for s in result.suites.values()):
    table += '\n' + reports.report_markdown({result.run or 'model': result}, baseline=None)
  fs.write_text(fs.join(output_dir, 'table.md'), table)
  try:
    config = gin_utils.config_str()
  except Exception:  # evaluate() called from Python without gin
    config = '# evaluate() was called without gin.\n'
  fs.write_text(fs.join(output_dir, 'config.gin'), config)


def merge(paths: Sequence[str], output: str | None = None, names: Sequence[str] | None = None,
          baseline: str | None = reports.DEFAULT_BASELINE, plot: str | None = None,
          suite: str | None = None) -> str:
  """Merges results files into the paper's table(s); writes `output` and `plot` if given.

  Returns the markdown.
  """
  runs = reports.merge_results(paths, names)
  if suite:
    text = reports.paper_table(runs, suite, baseline)
    fs = reports.format_specialization_table(runs, suite)
    text += ('\n' + fs) if fs else ''
  else:
    text = reports.report_markdown(runs, baseline)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
      f.write(text)
  if plot:
    reports.plot_norm_avg(reports.norm_avg_values(runs, suite), plot, baseline=baseline)
  return text


def _run_gin() -> evaluation.EvalResult:
  return gin_utils.bind_and_call('promot_t5x.eval.evaluate', '')


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main('promot-eval', __doc__, _main, argv, add_flags=_flags, gin=True,
                  multi_process=True, check_args=_check_args,
                  gin_required='--gin_file is required (a model gin and an eval gin, e.g. '
                               'eval/fewshot_paper.gin), or --merge.')


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--merge', nargs='+', metavar='RESULTS',
                      help='merge results.json files (or their folders) into one table')
  parser.add_argument('--names', default=None,
                      help='comma-separated column names, one per merged file (repeat a name '
                           'to group seeds)')
  parser.add_argument('--output', default=None, help='markdown file for the merged table')
  parser.add_argument('--baseline', default=reports.DEFAULT_BASELINE,
                      help="column that deltas are taken against ('' for none)")
  parser.add_argument('--plot', default=None, help='PNG bar plot of Norm. Avg. per run')
  parser.add_argument('--suite', default=None, help='only this suite (default: every suite)')
  t5x_flags.add_flags(parser)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.merge:
    if args.gin_file or args.gin_bindings:
      parser.error('--merge reads results files; it takes no gin flags.')
    if args.coordinator_address or args.process_count or args.process_index is not None:
      parser.error('--merge runs as one process; it takes no multi-process flags.')


def _main(args: argparse.Namespace) -> int:
  if args.merge:
    names = [n.strip() for n in args.names.split(',')] if args.names else None
    try:
      print(merge(args.merge, args.output, names, args.baseline or None, args.plot, args.suite))
    except OSError as e:  # the files given on the command line
      raise cli.UsageError(f'--merge: cannot read {e.filename} ({e.strerror}); give '
                           'results.json files or the folders holding them.') from e
    except ValueError as e:  # names that do not fit the files
      raise cli.UsageError(str(e)) from e
    return 0
  t5x_flags.apply(args, 'promot-eval')
  # Every process of a multi-host evaluation runs this same command: each reads
  # the checkpoint and the suites' data, feeds its devices' part of every
  # global batch, gathers the outputs; process 0 writes the results.
  _run_gin()
  return 0


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()


__all__ = ['evaluate', 'load_params', 'main', 'make_suites', 'merge', 'resolve_step',
           'write_outputs']
