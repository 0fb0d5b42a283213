r"""The miniature base model's gate: the paper's preconditions, measured before the base model is committed.

  python -m promot_t5x.base_model_check --base_model=runs/mini2_pretrain \
    --output=docs/miniature/base_model_check.json

ProMoT can only show its effect when the pretrained model already has the
skills the fine-tuning tasks need (in the paper, prompt tuning reaches 99 % of
fine-tuning's RTE score and 94 % on En-Fr at mT5 XXL). This check measures,
for a candidate base model of the second synthetic world (`world.WORLD_V2`,
tasks `mini2_*`), or with `--world=v3` of the third (`world.WORLD_V3`, `mini3_*`):

1. Latent skills, 1-shot, in their pretraining formats: binary inference as a
   yes/no question (`mini2_rte_yn_1shot`, accuracy >= `--skill_accuracy`) and
   English to Frenka in the other wording (`mini2_enfr_alt_1shot`, BLEU, reported).
2. Headroom: the 8 evaluation analogues at 1 shot, each pretrained score
   between the `CheckSettings.headroom` bounds, 30 and 90 (no task at chance or at ceiling). Reported for
   the second world, part of the gate for the third (`gate_headroom`).
3. A short prompt-tuning probe: prompt tuning (model frozen) and standard
   fine-tuning on both fine-tuning analogues, each with the paper's budget for
   it: prompt tuning trains `--prompt_steps_ratio` (5) times fine-tuning's
   steps, as the paper's stage 1 (5,000 steps) against its fine-tuning and
   stage 2 (1,000). Prompt tuning must reach `--probe_ratio` of fine-tuning's
   task score. Prompt tuning at fine-tuning's own step count is reported
   beside it (`equal_steps`), not gated.

The probe's prompt tuning is the second world's stage-1 recipe in the
miniature (`promot-miniature`, the default world's `miniature.WORLD_RECIPES`: 750
steps, 5 x stage 2's 150): a 20-token vocabulary-sampled prompt, learning
rate 0.2, no dropout and no label smoothing on the frozen model.

The JSON also records the candidate's parameter fingerprint (`params_fingerprint`),
so that a committed base model can be shown to be the one that passed.

Every number comes from the project's own experiment runner (a real
`promot_t5x.experiment.Experiment` per task: train, evaluate, merge), and the
JSON records the settings, every score, each criterion and whether it passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from promot_t5x import experiment as experiment_lib
from promot_t5x import miniature

# The worlds a candidate can be checked for (those with latent-skill probes): world ->
# (task name prefix, task module), as the miniature runs them. 'v3': `world.WORLD_V3`,
# the second world's design with rare facts and words.
WORLDS = {w: miniature.WORLDS[w][:2] for w in ('v2', 'v3')}
TASK_METRIC = {'rte': 'rte/accuracy', 'enfr': 'enfr/bleu'}
EVAL_FAMILIES = ('cb', 'wic', 'triviaqa', 'webqa', 'ende', 'enro', 'xsum', 'wikilingua')
FAMILY_METRIC = {'cb': 'accuracy', 'wic': 'accuracy', 'triviaqa': 'exact_match', 'webqa': 'exact_match',
                 'ende': 'bleu', 'enro': 'bleu', 'xsum': 'rouge2', 'wikilingua': 'rouge2'}
# Chance level of each family's metric under a constant answer (accuracy: the share
# of the most frequent label is the better reference and is computed from the data).
TRAIN_BUCKETS = {'rte': (64,), 'enfr': (24,)}
# Target lengths: mini2_enfr's references reach 33 tokens with EOS, the few-shot
# translation analogues' 37 (mini2_ende); shorter lengths cut outputs and cap BLEU.
TRAIN_TARGET_LENGTH = {'rte': 24, 'enfr': 36}
EVAL_FEATURE_LENGTHS = {'inputs': 256, 'targets': 40}


@dataclasses.dataclass(frozen=True)
class CheckSettings:
  """What the gate trains and evaluates, and its thresholds."""

  base_model: str
  output_dir: str = 'runs/base_model_check'
  world: str = 'v2'  # a key of WORLDS
  # Headroom as a criterion of the gate itself (the third world's check; the second
  # world's record reports it beside the gate).
  gate_headroom: bool = False
  steps: int = 300  # fine-tuning's steps
  prompt_steps_ratio: int = 5  # prompt tuning's steps = this x `steps` (the paper's 5,000 : 1,000)
  prompt_length: int = 20
  prompt_init: str = 'vocab_sample'
  prompt_learning_rate: float = 0.2
  model_learning_rate: float = 0.001
  batch_size: int = 32
  max_examples: int = 128
  seed: int = 0
  skill_accuracy: float = 80.0
  headroom: tuple[float, float] = (30.0, 90.0)
  probe_ratio: float = 0.85


def prompt_tuning_steps(settings: CheckSettings) -> int:
  """Prompt tuning's steps in the probe: the paper's ratio of stage 1 to fine-tuning."""
  return settings.prompt_steps_ratio * settings.steps


def experiment(settings: CheckSettings, task: str) -> experiment_lib.Experiment:
  """Pretrained / prompt tuning (5x and 1x fine-tuning's steps) / fine-tuning on one analogue of the world."""
  if settings.world not in WORLDS:
    raise ValueError(f'Unknown world {settings.world!r} for the base model check; use one of {sorted(WORLDS)}.')
  prefix, module = WORLDS[settings.world]
  name = f'{prefix}{task}'
  shared = [
      f'MIXTURE_OR_TASK_NAME = {name!r}', f'MIXTURE_OR_TASK_MODULE = {module!r}',
      f"TASK_FEATURE_LENGTHS = {{'inputs': 128, 'targets': {TRAIN_TARGET_LENGTH[task]}}}",
      f'BATCH_SIZE = {settings.batch_size}',
      f'INITIAL_CHECKPOINT_PATH = {settings.base_model!r}', f'TRAIN_LENGTH_BUCKETS = {TRAIN_BUCKETS[task]!r}',
      f'TRAIN_STEPS = {settings.steps}', 'CHECKPOINT_PERIOD = 100000', 'KEEP_CHECKPOINTS = 1',
  ]
  prompt = [f'PROMPT_LENGTH = {settings.prompt_length}', f'PROMPT_INIT = {settings.prompt_init!r}',
            f'LEARNING_RATE = {settings.prompt_learning_rate}']
  variants = (
      experiment_lib.Variant('pretrained', train=False),
      experiment_lib.Variant('prompt_tuning', gin_files=('runs/prompt_tuning.gin',),
                             overrides=(*prompt, f'TRAIN_STEPS = {prompt_tuning_steps(settings)}')),
      experiment_lib.Variant('prompt_tuning_equal_steps', gin_files=('runs/prompt_tuning.gin',),
                             overrides=tuple(prompt)),
      experiment_lib.Variant('finetune', gin_files=('runs/finetune.gin',),
                             overrides=(f'LEARNING_RATE = {settings.model_learning_rate}',)),
  )
  return experiment_lib.Experiment(
      name=f'base model check: {name}', output_dir=os.path.join(settings.output_dir, task), variants=variants,
      model_gin_files=('miniature/model.gin',), overrides=tuple(shared),
      eval_gin_files=('eval/fewshot_miniature.gin',),
      eval_overrides=(f'MIXTURE_OR_TASK_NAME = {name!r}', f'MIXTURE_OR_TASK_MODULE = {module!r}',
                      f"EVAL_SUITE = ['{prefix}eval_1shot', '{prefix}probes_1shot']",
                      "EVAL_SUITE_NAMES = ['fewshot_1shot', 'probes_1shot']",
                      f'TASK_FEATURE_LENGTHS = {EVAL_FEATURE_LENGTHS!r}',
                      f'MAX_EXAMPLES = {settings.max_examples}',
                      "FORMAT_LABELS = ('True', 'False')" if task == 'rte' else 'FORMAT_LABELS = None'),
      seeds=(settings.seed,))


def params_fingerprint(path: str) -> str:
  """sha256 of a base model's parameters (names, dtypes, shapes, values), from a run or params folder."""
  import jax
  import numpy as np

  from promot_t5x.checkpoints import manager

  leaves = jax.tree_util.tree_leaves_with_path(manager.load_run_params(path, 'latest'))
  digest = hashlib.sha256()
  for key, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{jax.tree_util.keystr(key)} {array.dtype} {array.shape};'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _find(flat: Mapping[str, float], suite: str, task: str, metric: str) -> float:
  """The score of `task` in `suite` (task names may keep a `_{k}shot` suffix)."""
  for key in (f'{suite}/{task}/{metric}', f'{suite}/{task}_1shot/{metric}'):
    if key in flat:
      return float(flat[key])
  raise KeyError(f'No {suite}/{task}/{metric} in the results; have {sorted(flat)[:12]}...')


def criteria(tables: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
             settings: CheckSettings) -> dict[str, Any]:
  """The gate's criteria from the experiments' tables ({task: {variant: [flat metrics]}})."""
  pre = tables['rte']['pretrained'][0]
  out: dict[str, Any] = {}
  skill = _find(pre, 'probes_1shot', 'rte_yn', 'accuracy')
  out['latent_skills'] = {
      'rte_yn_1shot_accuracy': skill,
      'enfr_alt_1shot_bleu': _find(pre, 'probes_1shot', 'enfr_alt', 'bleu'),
      'cb_1shot_accuracy': _find(pre, 'fewshot_1shot', 'cb', 'accuracy'),
      'threshold': settings.skill_accuracy, 'passed': skill >= settings.skill_accuracy}
  lo, hi = settings.headroom
  scores = {f: _find(pre, 'fewshot_1shot', f, FAMILY_METRIC[f]) for f in EVAL_FAMILIES}
  out['headroom'] = {'scores': scores, 'bounds': [lo, hi],
                     'outside': sorted(f for f, v in scores.items() if not lo <= v <= hi),
                     'passed': all(lo <= v <= hi for v in scores.values())}
  probe = {}
  for task, table in tables.items():
    pt = float(table['prompt_tuning'][0][TASK_METRIC[task]])
    ft = float(table['finetune'][0][TASK_METRIC[task]])
    ratio = pt / ft if ft > 0 else None
    probe[task] = {'prompt_tuning': pt, 'finetune': ft, 'pretrained': float(table['pretrained'][0][TASK_METRIC[task]]),
                   'ratio': ratio, 'passed': ratio is not None and ratio >= settings.probe_ratio}
    if 'prompt_tuning_equal_steps' in table:  # reported, not gated
      eq = float(table['prompt_tuning_equal_steps'][0][TASK_METRIC[task]])
      probe[task]['equal_steps'] = {'prompt_tuning': eq, 'ratio': eq / ft if ft > 0 else None}
  out['probe'] = {'threshold': settings.probe_ratio, 'tasks': probe,
                  'steps': {'prompt_tuning': prompt_tuning_steps(settings), 'finetune': settings.steps},
                  'passed': bool(probe) and all(p['passed'] for p in probe.values())}
  # The gate itself: the latent skills and the probe, and headroom where the settings
  # gate it (otherwise it is reported beside the gate).
  out['headroom']['gated'] = settings.gate_headroom
  out['passed'] = (out['latent_skills']['passed'] and out['probe']['passed']
                   and (out['headroom']['passed'] or not settings.gate_headroom))
  return out


def run(settings: CheckSettings, tasks: Sequence[str] = ('rte', 'enfr')) -> dict[str, Any]:
  """Trains and evaluates the probes, returns the check's document."""
  start = time.time()
  tables = {}
  done_before = 0  # runs found finished (their time is not in wall_time_s)
  for task in tasks:
    exp = experiment(settings, task)
    done_before += sum(os.path.exists(exp.results_path(v, seed)) for v in exp.variants for seed in exp.seeds_of(v))
    experiment_lib.run(exp)
    with open(os.path.join(exp.output_dir, 'table.json')) as f:
      tables[task] = json.load(f)
  doc = {'settings': {k: v for k, v in dataclasses.asdict(settings).items() if k != 'output_dir'},
         **criteria(tables, settings), 'params_fingerprint': params_fingerprint(settings.base_model),
         'wall_time_s': round(time.time() - start, 1), 'runs_done_before': done_before}
  doc['settings']['base_model'] = os.path.relpath(settings.base_model) if os.path.isabs(
      settings.base_model) else settings.base_model
  return doc


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m promot_t5x.base_model_check', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--base_model', required=True, help='a pretraining run folder or params folder')
  parser.add_argument('--output', default='docs/miniature/base_model_check.json')
  parser.add_argument('--output_dir', default='runs/base_model_check', help='where the probe runs go')
  parser.add_argument('--steps', type=int, default=CheckSettings.steps, help="fine-tuning's steps")
  parser.add_argument('--prompt_steps_ratio', type=int, default=CheckSettings.prompt_steps_ratio,
                      help="prompt tuning's steps as a multiple of --steps (the paper's stage 1 : fine-tuning)")
  parser.add_argument('--max_examples', type=int, default=CheckSettings.max_examples)
  parser.add_argument('--model_learning_rate', type=float, default=CheckSettings.model_learning_rate)
  parser.add_argument('--tasks', default='rte,enfr')
  parser.add_argument('--world', default=CheckSettings.world, choices=sorted(WORLDS),
                      help="the candidate's world: v2 (mini2_*) or v3 (mini3_*)")
  args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  settings = CheckSettings(base_model=args.base_model, output_dir=args.output_dir, steps=args.steps, world=args.world,
                           gate_headroom=args.world != 'v2',
                           prompt_steps_ratio=args.prompt_steps_ratio,
                           max_examples=args.max_examples, model_learning_rate=args.model_learning_rate)
  doc = run(settings, tuple(args.tasks.split(',')))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(doc, f, indent=2)
    f.write('\n')
  print(json.dumps({k: doc[k] for k in ('latent_skills', 'probe', 'passed')}, indent=1))
  print(f'base model check: {"PASSED" if doc["passed"] else "NOT PASSED"} -> {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
