r"""`promot-miniature`: the paper's experiment, in miniature, on two CPU cores.

  promot-miniature                      # the full experiment (README's main command)
  promot-miniature --quick              # a smoke run of every part (tests)
  promot-miniature --output_dir=/tmp/mini --seeds=0,1,2 --extras

From the committed base model of the synthetic world (`--world`, default
'v3': a small T5 pretrained on the third world, in which the fine-tuning
skills are latent and a third of the people and of the Deuna / Romali words
are rare in pretraining, `promot_t5x_tasks/synthetic/data/base_model_v3`,
made by `gin/miniature/pretrain_v2*.gin` then `pretrain_v3.gin` and passed
by `promot_t5x.base_model_check --world=v3`; 'v2': the second world's,
`data/base_model_v2`; 'v1': the first world's, `data/base_model`, from
`gin/miniature/pretrain.gin`), for each fine-tuning analogue (`mini3_rte`,
`mini3_enfr`; `mini2_*`, `mini_*` in the earlier worlds) it trains and evaluates, per seed, with the project's own
trainer, evaluator and experiment runner (`promot_t5x.experiment`):

  pretrained     the base model, untouched
  finetune       standard fine-tuning (runs/finetune.gin)
  promot         ProMoT: stage 1 then stage 2 (promot/promot.gin)
  prompt_tuning  stage 1 alone: ProMoT's stage 1 of the same seed, evaluated
                 (it is exactly runs/prompt_tuning.gin with the same settings)
  (--one_shot_training) promot_1shot: ProMoT trained on 1-shot inputs (the
                 paper's "+ 1-shot"), evaluated 1-shot on its own task
  (--extras)     joint tuning (runs/joint.gin) and fine-tuning with a fixed
                 random prompt (runs/promot_stage2.gin, prompt never trained)
  (--multitask,  promot_multitask: multi-task ProMoT, one prompt per task
   --extras)     (PROMPT_NAMES = the tasks), both stages on the mixture of
                 the tasks (`mini_rte_enfr`, 1:1), each example with its
                 task's prompt; trained once (in the first task's folder) and
                 evaluated on every task with that task's prompt; and its
                 baseline finetune_multitask (the plain model fine-tuned on
                 the same mixture)
  (--controls)   finetune_shuffled and promot_shuffled: fine-tuning and ProMoT
                 on the binary-inference analogue with its labels shuffled,
                 scored on the real ones
  (--lr_grid)    finetune_lr<rate>: fine-tuning at each model learning rate;
                 lr_grid.json/md rank them by validation score (the default
                 rate is the one the world's committed grid chose, WORLD_RECIPES)
  (--dose_response) promot_stage1_<n>: ProMoT on the En-Fr analogue with stage 2 from
                 the prompt after n stage-1 steps (0: the fixed random prompt
                 run); dose_response.json/md
  (--only)       just the named variants (and the pretrained model)

Every training run follows the paper's protocol (gin/miniature/protocol.gin;
off with --no_protocol): dropout and label smoothing 0.1, validation every 50
steps on the fine-tuned task's validation split, the best checkpoint kept;
stage 2 starts from stage 1's best prompt and every run is evaluated at its
best step. Stage 1 starts from embedding rows (PROMPT_INIT = 'vocab_sample').

Every run is evaluated 1-shot (and 4-shot with --four_shot) on the 8
evaluation analogues with the prompt removed (the first 128 examples of each),
and on its fine-tuned task's test split with the prompt (the first 256)
(gin/eval/fewshot_miniature.gin). For the binary-inference analogue:

  curves     standard fine-tuning and ProMoT stage 2 are evaluated before
             their first step and every `curve_period` steps
             (gin/miniature/curves.gin): the task's accuracy, QA exact match,
             the share of QA outputs that are True/False (format
             specialization), and the gradient alignment (cosine between
             real- and shuffled-label gradients, last decoder layer);
  conjugate  pretrained, fine-tuned and ProMoT models on the 1-shot suite
             under the world's conjugate transforms (its own Lumic and
             cipher: toylang and cipher in the first world, toylang_v2 and
             cipher_v2 in the second, toylang_v3 and cipher_v3 in the third).

Outputs in --output_dir: `summary.md` (every table, the reading aids and the
plots' paths), `summary.json`, `<task>/table.md|json`, `<task>/norm_avg.png`,
`curves.png`, `curves.json`, `conjugate/conjugate_report.{md,json,png}`, and
each run's folder (`<task>/<variant>/seed_<s>/`: checkpoints, config.gin,
metrics.jsonl, eval/results.json, predictions). Finished runs are not re-run:
re-running the command resumes an interrupted experiment.

The (task, seed) units are split over worker processes, one CPU each (`--workers`; logs in
`<output_dir>/logs/`): the small model's steps gain almost nothing from a
second core, so the CPUs are better used by running seeds side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import promot_t5x_tasks.synthetic as _synthetic

from promot_t5x import cli, host_memory
from promot_t5x import experiment as experiment_lib

BASE_MODEL = os.path.join(os.path.dirname(os.path.abspath(_synthetic.__file__)), 'data',
                          'base_model')
MODULE = 'promot_t5x_tasks.synthetic.tasks'
# The second world (`world.WORLD_V2`: the fine-tuning skills latent in pretraining);
# its base model (pretraining phase 5, gin/miniature/pretrain_v2*.gin) passed its gate
# (`promot_t5x.base_model_check`, docs/miniature/world_v2/base_model_check.json) and is committed.
BASE_MODEL_V2 = BASE_MODEL + '_v2'
# The third world (`world.WORLD_V3`: the second's design drawn anew, with rare people
# and words in pretraining, so that the evaluation analogues have headroom); its base
# model continues the second's (gin/miniature/pretrain_v3.gin) and passed its gate, headroom
# included (docs/miniature/base_model_check.json).
BASE_MODEL_V3 = BASE_MODEL + '_v3'
# world -> (task name prefix, task module, default base model).
WORLDS = {'v1': ('mini_', MODULE, BASE_MODEL),
          'v2': ('mini2_', 'promot_t5x_tasks.synthetic.tasks_v2', BASE_MODEL_V2),
          'v3': ('mini3_', 'promot_t5x_tasks.synthetic.tasks_v3', BASE_MODEL_V3)}
FINETUNE_TASKS = ('rte', 'enfr')
# Each world's recipe (the defaults of `--world`), with which its committed results were made:
# - model_learning_rate: the rate the world's grid chose on fine-tuning's validation score
#   (v3: docs/miniature/lr_grid.json; v2: world_v2/lr_grid.json; v1: world_v1/lr_grid.json);
# - stage1_steps: the first world's 150 (stage 2's); the second and third worlds' 5 x stage
#   2's, the paper's ratio (5,000 to 1,000), as their gate's probe (promot_t5x.base_model_check);
# - stage1_unregularized: the second and third worlds train stage 1 without the protocol's
#   dropout and label smoothing (either alone keeps the second world's frozen model's prompt at
#   one label; docs/results.md; the third world keeps the second's recipe).
WORLD_RECIPES = {
    'v1': {'model_learning_rate': 0.03, 'stage1_steps': 150, 'stage1_unregularized': False},
    'v2': {'model_learning_rate': 0.01, 'stage1_steps': 750, 'stage1_unregularized': True},
    'v3': {'model_learning_rate': 0.003, 'stage1_steps': 750, 'stage1_unregularized': True},
}
# The fine-tuned tasks' label words (format specialization is measured against them).
FORMAT_LABELS = {'rte': ('True', 'False'), 'enfr': None}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the miniature trains and evaluates (the defaults are the README's run)."""

  output_dir: str = 'runs/miniature'
  # '' = the world's committed base model (WORLDS).
  base_model: str = ''
  # 'v3': the third synthetic world (the fine-tuning skills latent in pretraining, rare
  # people and words, `world.WORLD_V3`; its base model passed its gate); 'v2': the
  # second (no headroom on the QA and translation analogues); 'v1': the first.
  world: str = 'v3'
  tasks: tuple[str, ...] = FINETUNE_TASKS
  # Five seeds, paired across methods (every method of a seed is scored on the same examples).
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  # Stage 1's steps, the model learning rate and stage 1's regularization: None =
  # the world's recipe (WORLD_RECIPES).
  stage1_steps: int | None = None
  stage2_steps: int = 150
  finetune_steps: int = 150
  prompt_length: int = 20
  # Stage 1's start (gin/runs/_prompt.gin PROMPT_INIT): rows of the embedding table
  # ('vocab_sample'), which small models learn from faster than the paper's uniform.
  prompt_init: str = 'vocab_sample'
  batch_size: int = 32
  # The paper's prompt learning rate. The model's (fine-tuning, stage 2, joint,
  # random prompt) is the one the world's learning-rate grid chose on fine-tuning's
  # validation score (0.001, 0.003, 0.01, 0.03; 3 seeds; WORLD_RECIPES). With
  # Adafactor's parameter scaling a step is lr x RMS(weight) at any model size, so
  # 0.03 (v1) and 0.01 (v2) are 30x and 10x larger relative steps than the paper's 1e-3.
  prompt_learning_rate: float = 0.2
  model_learning_rate: float | None = None
  # Few-shot evaluation: the first max_examples of each evaluation task (1-shot;
  # 4-shot too with four_shot), and the first task_examples of the fine-tuned task's
  # test split (all it has, where fewer: the first world has 128 per task).
  max_examples: int = 128
  task_examples: int = 256
  four_shot: bool = False
  # The curves: evaluated every curve_period steps of fine-tuning / stage 2, on the first
  # curve_max_examples of the task's validation split and of each QA analogue; those
  # checks also select fine-tuning's and stage 2's best checkpoint where curves run.
  curve_period: int = 30
  curve_max_examples: int = 32
  conjugate: bool = True
  curves: bool = True
  # The model's products: XLA's (False, every model gin's default) or the optional CPU
  # kernels (gin/options/cpu_kernels.gin; docs/cpu_kernels.md). Recorded in summary.json.
  cpu_kernels: bool = False
  extras: bool = False
  # Processes that split the (task, seed) units, each pinned to one CPU (None: one
  # per CPU this process may use; 1: everything in this process).
  # The small model's steps barely use a second core (a fine-tuning step takes
  # the same time on one core as on two). On the 2-core machine of the README
  # the gain is ~15 % (18.3 vs 21.7 min), as each worker slows the other down.
  workers: int | None = None
  # Multi-task ProMoT (one prompt per task, stage 2 on the mixture of all
  # `tasks`); needs two or more tasks. `extras` turns it on too.
  multitask: bool = False
  # The paper's control: fine-tuning and ProMoT on mini_rte with shuffled labels.
  controls: bool = False
  # ProMoT + 1-shot training (promot_1shot, the paper's fourth column; claim C6):
  # both stages on 1-shot inputs. Behind a flag: it is the costliest method (inputs
  # twice as long) and with the protocol make run would pass its 30 minutes.
  one_shot_training: bool = False
  # The paper's protocol (gin/miniature/protocol.gin): dropout and label smoothing
  # 0.1, validation every 50 steps, each run evaluated at its best checkpoint and
  # stage 2 started from stage 1's best prompt.
  protocol: bool = True
  # Stage 1 (prompt tuning, model frozen) without the protocol's dropout and label
  # smoothing (STAGE1_DROPOUT_RATE, STAGE1_LABEL_SMOOTHING = 0); the other runs keep them.
  stage1_unregularized: bool | None = None
  # Validation (protocol): every validation_period steps (and at the last), on the
  # first validation_examples of the fine-tuned task's validation split.
  validation_period: int = 50
  validation_examples: int = 128
  # The model learning-rate grid (--lr_grid): fine-tuning at each rate, every seed,
  # selected on its validation score (lr_grid.json; the chosen rate is the world's
  # default model_learning_rate, WORLD_RECIPES).
  lr_grid: tuple[float, ...] = ()
  # The stage-1 dose-response (--dose_response): ProMoT on mini_enfr with stage 2
  # started from prompts trained these many steps (0: the initial prompt, never
  # trained), stage 2 from the last step (dose_response.json).
  dose_steps: tuple[int, ...] = ()
  # Only these variants (and the pretrained model, every comparison's baseline);
  # empty: all. E.g. the grid alone: only=('finetune_lr0.001', ...).
  only: tuple[str, ...] = ()

  def __post_init__(self):
    for name in ('tasks', 'seeds', 'lr_grid', 'dose_steps', 'only'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.world not in WORLDS:
      raise ValueError(f'Unknown world {self.world!r}; choose from {tuple(WORLDS)}.')
    if not self.base_model:
      object.__setattr__(self, 'base_model', WORLDS[self.world][2])
    for name, value in WORLD_RECIPES[self.world].items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    unknown = [t for t in self.tasks if t not in FINETUNE_TASKS]
    if unknown or not self.tasks:
      raise ValueError(f'Unknown fine-tuning task(s) {unknown}; choose from {FINETUNE_TASKS}.')
    if not self.seeds:
      raise ValueError('The miniature needs at least one seed.')
    for name in ('max_examples', 'task_examples', 'curve_max_examples', 'stage1_steps', 'stage2_steps',
                 'finetune_steps'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    for name in ('model_learning_rate', 'prompt_learning_rate'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} must be > 0, got {getattr(self, name)}.')
    if self.workers is not None and self.workers < 1:
      raise ValueError(f'workers must be >= 1 (or None: automatic), got {self.workers}.')
    if self.multitask and len(self.tasks) < 2:
      raise ValueError(f'Multi-task ProMoT needs two fine-tuning tasks, got tasks={self.tasks}; '
                       f'run with --tasks={",".join(FINETUNE_TASKS)} or without --multitask.')

  def runs(self, *variants: str) -> bool:
    """Whether every one of `variants` is run (not left out by `only`)."""
    return not self.only or all(v in self.only for v in variants)

  @property
  def with_multitask(self) -> bool:
    return self.multitask or (self.extras and len(self.tasks) > 1)

  @property
  def prefix(self) -> str:
    """The world's task-name prefix ('mini_' or 'mini2_')."""
    return WORLDS[self.world][0]

  @property
  def module(self) -> str:
    """The module that registers the world's tasks."""
    return WORLDS[self.world][1]

  def train_buckets(self, task: str, shots: int = 0) -> tuple[int, ...]:
    """TRAIN_LENGTH_BUCKETS of a fine-tuning task (shots: 0, or 1 for its 1-shot training)."""
    return TRAIN_BUCKETS[self.world][task, shots]

  def target_length(self, task: str) -> int:
    """The training target length of a fine-tuning task."""
    return TARGET_LENGTH[self.world][task]


QUICK = dict(tasks=('rte',), seeds=(0, 1), controls=True, one_shot_training=True, stage1_steps=4,
             stage2_steps=4, finetune_steps=4, prompt_length=4, batch_size=8, max_examples=4, task_examples=6,
             curve_period=2, curve_max_examples=4, validation_period=2, validation_examples=4)


def _log(msg: str) -> None:
  print(f'[miniature {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# Training batches are cut to the smallest of these encoder lengths that holds
# them (TRAIN_LENGTH_BUCKETS; the feature length is always the last bucket).
# Just above the longest train input of each task, measured on 1,000 examples
# (tokens, max): mini_rte 43, mini_rte_1shot_train 85, mini_enfr 15,
# mini_enfr_1shot_train 39; so no batch is padded to 64 or 128 tokens. The second
# world, on 2,000: mini2_rte 63, mini2_rte_1shot_train 113, mini2_enfr 15,
# mini2_enfr_1shot_train 58.
TRAIN_BUCKETS = {
    'v1': {('rte', 0): (48,), ('rte', 1): (88,), ('enfr', 0): (16,), ('enfr', 1): (40,)},
    'v2': {('rte', 0): (64,), ('rte', 1): (120,), ('enfr', 0): (16,), ('enfr', 1): (64,)}}
# The third world's lengths fit the second's (on 2,000: mini3_rte 62, mini3_rte_1shot_train
# 116, mini3_enfr 15, mini3_enfr_1shot_train 57; targets: mini3_enfr 30, mini3_ende 32).
TRAIN_BUCKETS['v3'] = TRAIN_BUCKETS['v2']
# Training target lengths: just above the longest target with its EOS (mini_rte 2
# tokens, mini_enfr 12, on 2,000 examples; mini2_enfr 33, its sentences longer). The
# decoder's cost follows this length: padding mini_rte's two tokens to 16 made a third
# of each step's work.
TARGET_LENGTH = {'v1': {'rte': 4, 'enfr': 16}, 'v2': {'rte': 4, 'enfr': 36}, 'v3': {'rte': 4, 'enfr': 36}}
# Evaluation target (decode) length: the longest reference of any evaluated task with
# its EOS fits (first world: mini_enro 15 tokens; second: mini2_ende 37, mini2_enfr 33).
EVAL_TARGET_LENGTH = {'v1': 16, 'v2': 40, 'v3': 40}


def experiment(settings: Settings, task: str) -> experiment_lib.Experiment:
  """The (variants x seeds) experiment of one fine-tuning analogue."""
  name = f'{settings.prefix}{task}'
  lengths = {'inputs': 128, 'targets': settings.target_length(task)}
  shared = [
      f'MIXTURE_OR_TASK_NAME = {name!r}',
      f'MIXTURE_OR_TASK_MODULE = {settings.module!r}',
      f'TASK_FEATURE_LENGTHS = {lengths!r}',
      f'BATCH_SIZE = {settings.batch_size}',
      f'INITIAL_CHECKPOINT_PATH = {settings.base_model!r}',
      f'PROMPT_LENGTH = {settings.prompt_length}',
      f'PROMPT_INIT = {settings.prompt_init!r}',
      f'TRAIN_LENGTH_BUCKETS = {settings.train_buckets(task)!r}',
      'CHECKPOINT_PERIOD = 100000',  # the final step only (train() always saves it)
      'STAGE1_CHECKPOINT_PERIOD = 100000',
      'STAGE2_CHECKPOINT_PERIOD = 100000',
      'KEEP_CHECKPOINTS = 1',
      *best_metric(settings, task),
  ] + ([f'EVAL_PERIOD = {settings.validation_period}',
        f'VALIDATION_MAX_EXAMPLES = {settings.validation_examples}',
        f'VALIDATION_PERIOD = {settings.validation_period}'] if settings.protocol else [])
  promot = [f'STAGE1_STEPS = {settings.stage1_steps}', f'STAGE2_STEPS = {settings.stage2_steps}',
            f'PROMPT_LEARNING_RATE = {settings.prompt_learning_rate}',
            f'MODEL_LEARNING_RATE = {settings.model_learning_rate}']
  if settings.protocol and settings.stage1_unregularized:
    # Stage 1's model built in its own scope: `%MODEL` (a macro) is evaluated in the
    # macro's scope, where the stage1/ bindings of protocol.gin do not reach.
    promot += ['STAGE1_DROPOUT_RATE = 0.0', 'STAGE1_LABEL_SMOOTHING = 0.0',
               'stage1/train.train.model = @promot_t5x.models.encoder_decoder.EncoderDecoderModel()']
  curves = settings.curves and task == 'rte'
  P = protocol_gins(settings)
  curve_overrides = (f'EVAL_PERIOD = {settings.curve_period}',
                     f'CURVE_MAX_EXAMPLES = {settings.curve_max_examples}',
                     f"CURVE_FEWSHOT = ['{settings.prefix}triviaqa_1shot', '{settings.prefix}webqa_1shot']"
                     ) if curves else ()
  variants = [
      experiment_lib.Variant('pretrained', train=False, seeds=(settings.seeds[0],)),
      # Standard fine-tuning; on mini_rte it also records the curves.
      experiment_lib.Variant(
          'finetune', gin_files=('runs/finetune.gin',) + P + (('miniature/curves.gin',) if curves else ()),
          overrides=(f'TRAIN_STEPS = {settings.finetune_steps}',
                     f'LEARNING_RATE = {settings.model_learning_rate}') + curve_overrides),
      # ProMoT (stage 1 then stage 2); on mini_rte stage 2 records the curves.
      experiment_lib.Variant(
          'promot', gin_files=('promot/promot.gin',) + P + (('miniature/curves_stage2.gin',) if curves else ()),
          overrides=tuple(promot) + curve_overrides),
      # Prompt tuning alone is ProMoT's stage 1 (same seed, same settings): evaluated, not retrained.
      experiment_lib.Variant(
          'prompt_tuning', train=False,
          overrides=("INITIAL_CHECKPOINT_PATH = '{output_dir}/promot/seed_{seed}/stage1'",)),
  ]
  if settings.one_shot_training:
    variants.append(experiment_lib.Variant('promot_1shot', gin_files=('promot/promot.gin',) + P, overrides=(
        *promot,
        f"MIXTURE_OR_TASK_NAME = '{name}_1shot_train'",
        *best_metric(settings, f'{task}_1shot_train'),
        f"TASK_FEATURE_LENGTHS = {{'inputs': 192, 'targets': {settings.target_length(task)}}}",
        f'TRAIN_LENGTH_BUCKETS = {settings.train_buckets(task, 1)!r}')))
  if settings.extras:
    variants += [
        experiment_lib.Variant('joint', gin_files=('runs/joint.gin',) + P,
                               overrides=(f'TRAIN_STEPS = {settings.finetune_steps}',
                                          f'LEARNING_RATE = {settings.model_learning_rate}',
                                          f'PROMPT_LEARNING_RATE = {settings.prompt_learning_rate}')),
        random_prompt_variant(settings, P),
    ]
  if settings.controls and task == 'rte':
    # The paper's control: the same training on shuffled labels, scored on the real ones.
    shuffled = f"MIXTURE_OR_TASK_NAME = '{settings.prefix}{task}_shuffled'"
    variants += [
        experiment_lib.Variant(SHUFFLED, gin_files=('runs/finetune.gin',) + P, overrides=(
            f'TRAIN_STEPS = {settings.finetune_steps}', f'LEARNING_RATE = {settings.model_learning_rate}',
            shuffled, *best_metric(settings, f'{task}_shuffled'))),
        experiment_lib.Variant(PROMOT_SHUFFLED, gin_files=('promot/promot.gin',) + P,
                               overrides=tuple(promot) + (shuffled, *best_metric(settings, f'{task}_shuffled'))),
    ]
  if settings.with_multitask:
    variants += multitask_variants(settings, task, promot)
  variants += [experiment_lib.Variant(
      grid_variant(lr), gin_files=('runs/finetune.gin',) + P,
      overrides=(f'TRAIN_STEPS = {settings.finetune_steps}', f'LEARNING_RATE = {lr}'))
      for lr in settings.lr_grid]
  if task == dose_task(settings):
    for n in settings.dose_steps:
      if n == 0:  # the initial prompt, never trained: the fixed-random-prompt run
        if not any(v.name == RANDOM_PROMPT for v in variants):
          variants.append(random_prompt_variant(settings, P))
      else:
        variants.append(experiment_lib.Variant(dose_variant(n), gin_files=('promot/promot.gin',) + P, overrides=(
            *promot, f'STAGE1_STEPS = {n}', "train.promot.stage2_from = 'latest'",
            'STAGE1_STOP_AT_BEST = None')))  # its stage 2 starts from step n, whatever the best
  if settings.only:
    variants = [v for v in variants if v.name in settings.only or v.name == 'pretrained']
  labels = FORMAT_LABELS[task]
  shots = ('1shot', '4shot') if settings.four_shot else ('1shot',)
  world_eval = (f'EVAL_SUITE = {[f"{settings.prefix}eval_{k}" for k in shots]!r}',
                f'EVAL_SUITE_NAMES = {[f"fewshot_{k}" for k in shots]!r}') + eval_world_overrides(settings)
  return experiment_lib.Experiment(
      name=f'ProMoT miniature: {name}',
      output_dir=os.path.join(settings.output_dir, task),
      variants=tuple(variants),
      model_gin_files=model_gin_files(settings),
      overrides=tuple(shared),
      eval_gin_files=('eval/fewshot_miniature.gin',),
      eval_overrides=(f'MIXTURE_OR_TASK_NAME = {name!r}', f'MAX_EXAMPLES = {settings.max_examples}',
                      f'TARGET_MAX_EXAMPLES = {settings.task_examples}',
                      f'FORMAT_LABELS = {labels!r}') + world_eval,
      seeds=settings.seeds)


# The metric each task's checkpoints are selected on (gin/miniature/protocol.gin).
BEST_METRIC = {'rte': 'accuracy', 'enfr': 'bleu'}


def protocol_gins(settings: Settings) -> tuple[str, ...]:
  """The paper's protocol (dropout, label smoothing, best-checkpoint selection), if on."""
  return ('miniature/protocol.gin',) if settings.protocol else ()


def best_metric(settings: Settings, task_name: str) -> tuple[str, ...]:
  """The CHECKPOINT_BEST_METRIC override of a task ('rte_1shot_train' -> its accuracy)."""
  if not settings.protocol:
    return ()
  return (f'CHECKPOINT_BEST_METRIC = {task_name + "/" + BEST_METRIC[task_name.split("_")[0]]!r}',)


def eval_world_overrides(settings: Settings) -> tuple[str, ...]:
  """Evaluation bindings of a world other than the first: its task module, its decode length."""
  if settings.world == 'v1':
    return ()
  return (f'MIXTURE_OR_TASK_MODULE = {settings.module!r}',
          f"TASK_FEATURE_LENGTHS = {{'inputs': 256, 'targets': {EVAL_TARGET_LENGTH[settings.world]}}}")


def model_gin_files(settings: Settings) -> tuple[str, ...]:
  """The miniature's model gin, with the CPU kernels' option gin where `settings.cpu_kernels`."""
  return ('miniature/model.gin',) + (('options/cpu_kernels.gin',) if settings.cpu_kernels else ())


def dose_task(settings: Settings) -> str:
  """The dose-response's task: mini_enfr (prompt tuning learns its format) if run, else the first."""
  return 'enfr' if 'enfr' in settings.tasks else settings.tasks[0]


def grid_variant(lr: float) -> str:
  return f'finetune_lr{lr:g}'


def dose_variant(steps: int) -> str:
  """0 steps: stage 2 from the initial prompt, i.e. fine-tuning with a fixed random prompt."""
  return f'promot_stage1_{steps}' if steps else RANDOM_PROMPT


RANDOM_PROMPT = 'finetune_random_prompt'


def random_prompt_variant(settings: Settings, gins: tuple[str, ...]) -> experiment_lib.Variant:
  """Fine-tuning with a fixed random prompt: ProMoT's stage 2 from the initial (PROMPT_INIT)
  prompt, never trained (the ablation, and the dose-response's 0 steps)."""
  return experiment_lib.Variant(RANDOM_PROMPT, gin_files=('runs/promot_stage2.gin',) + gins, overrides=(
      f'TRAIN_STEPS = {settings.stage2_steps}', f'LEARNING_RATE = {settings.model_learning_rate}',
      "manager.restore_config.fallback_to_init = ['prompt/.*']"))


MULTITASK = 'promot_multitask'
MULTITASK_FINETUNE = 'finetune_multitask'
SHUFFLED = 'finetune_shuffled'
PROMOT_SHUFFLED = 'promot_shuffled'


def multitask_mixture(tasks: Sequence[str], prefix: str = 'mini_') -> str:
  """The registered mixture of the fine-tuning tasks (`mini_rte_enfr`)."""
  return prefix + '_'.join(t for t in FINETUNE_TASKS if t in tasks)


def multitask_variants(settings: Settings, task: str, promot: Sequence[str]) -> list[experiment_lib.Variant]:
  """Multi-task ProMoT and its baseline, multi-task fine-tuning, on the mixture of the tasks.

  Both train in the first task's experiment and are evaluated from there in
  the others. ProMoT's stage 1 trains one prompt per task (each example
  routed to its task's prompt: `train.train.prompt_for_task`, both stages);
  stage 2 fine-tunes the model on the mixture with those prompts frozen. The
  evaluation attaches the prompt named like the target task (`rte`, `enfr`)
  and removes it for the few-shot suites. Fine-tuning trains the plain model
  on the same mixture for the same steps (the paper's multi-task baseline).
  """
  first = settings.tasks[0]
  if task != first:
    return [experiment_lib.Variant(name, train=False, overrides=(
        f"INITIAL_CHECKPOINT_PATH = {os.path.join(settings.output_dir, first, name, 'seed_{seed}', *sub)!r}",))
            for name, sub in ((MULTITASK_FINETUNE, ()), (MULTITASK, ('stage2',)))]
  mixture = f'MIXTURE_OR_TASK_NAME = {multitask_mixture(settings.tasks, settings.prefix)!r}'
  buckets = f'TRAIN_LENGTH_BUCKETS = {tuple(sorted({settings.train_buckets(t)[0] for t in settings.tasks}))!r}'
  target_length = max(settings.target_length(t) for t in settings.tasks)
  lengths = f"TASK_FEATURE_LENGTHS = {{'inputs': 128, 'targets': {target_length}}}"
  routing = {f'{settings.prefix}{t}': t for t in settings.tasks}
  return [
      experiment_lib.Variant(
          MULTITASK_FINETUNE, gin_files=('runs/finetune.gin',) + protocol_gins(settings),
          overrides=(f'TRAIN_STEPS = {settings.finetune_steps}',
                     f'LEARNING_RATE = {settings.model_learning_rate}', mixture, buckets, lengths)),
      experiment_lib.Variant(
          MULTITASK, gin_files=('promot/promot.gin',) + protocol_gins(settings),
          overrides=tuple(promot) + (mixture, buckets, lengths, f'PROMPT_NAMES = {tuple(settings.tasks)!r}',
                                     f'train.train.prompt_for_task = {routing!r}')),
  ]


# -- curves ---------------------------------------------------------------------------
CURVE_METRICS = {
    'accuracy': 'eval/rte/accuracy',
    'qa_exact_match': 'eval/fewshot/triviaqa/exact_match',
    'qa_true_false': 'eval/fewshot/triviaqa/format_specialization',
    'grad_alignment': 'eval/grad_alignment/cosine',
    # Per module of the last decoder layer, as the paper reports it (mean over 4 batches).
    **{f'grad_alignment_{m}': f'eval/grad_alignment/{m}/cosine' for m in ('mlp', 'query', 'key', 'value')},
}
CURVE_PANELS = {
    'accuracy': '{prefix}rte accuracy (with prompt)',
    'qa_exact_match': 'TriviaQA analogue EM, 1-shot',
    'qa_true_false': '% QA outputs True/False',
    'grad_alignment': 'gradient cosine, real vs shuffled labels',
    **{f'grad_alignment_{m}': f'gradient cosine, {m} (last decoder layer)' for m in ('mlp', 'query', 'key', 'value')},
}


def curves(settings: Settings, rte: experiment_lib.Experiment) -> dict[str, Any]:
  """Reads the curves the finetune and promot (stage 2) runs recorded; writes curves.json/png."""
  from promot_t5x import reports

  by_name = {v.name: v for v in rte.variants}
  dirs = {'finetune': lambda seed: rte.run_dir(by_name['finetune'], seed),
          'promot_stage2': lambda seed: os.path.join(rte.run_dir(by_name['promot'], seed), 'stage2')}
  out: dict[str, Any] = {}
  for kind, run_dir in dirs.items():
    per_seed = []
    for seed in settings.seeds:
      metrics = reports.read_metrics_jsonl(os.path.join(run_dir(seed), 'metrics.jsonl'), prefix='')
      per_seed.append({key: {int(s): float(v) for s, v in metrics.get(name, {}).items()}
                       for key, name in CURVE_METRICS.items()})
    out[kind] = per_seed
  panels = {CURVE_PANELS[key].format(prefix=settings.prefix): {kind: [seed[key] for seed in out[kind]] for kind in out}
            for key in CURVE_METRICS}
  reports.plot_curves(panels, os.path.join(settings.output_dir, 'curves.png'), ncols=2,
                      title=f'{settings.prefix}rte: standard fine-tuning vs ProMoT stage 2 (mean ± std over seeds)')
  with open(os.path.join(settings.output_dir, 'curves.json'), 'w') as f:
    json.dump(out, f, indent=1)
  return out


def curve_markdown(data: Mapping[str, Sequence[Mapping[str, Mapping[int, float]]]]) -> str:
  """The curves as a table: mean over seeds per step, per run kind and metric."""
  import numpy as np

  keys = list(CURVE_METRICS)
  lines = ['| run | step | ' + ' | '.join(keys) + ' |', '|---|---|' + '---|' * len(keys)]
  for kind, seeds in data.items():
    steps = sorted(set.intersection(*(set(s[keys[0]]) for s in seeds))) if seeds else []
    for step in steps:
      cells = []
      for key in keys:
        values = [s[key][step] for s in seeds if step in s[key]]
        cells.append(f'{np.mean(values):.2f}' if values else '–')
      lines.append(f'| {kind} | {step} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# -- conjugate prompting --------------------------------------------------------------
def conjugate_section(settings: Settings, rte: experiment_lib.Experiment) -> Any:
  """Pretrained, fine-tuned and ProMoT models on the 1-shot suite under each transform."""
  import importlib

  from promot_t5x import conjugate, gin_utils, reports

  scores: dict[str, dict[str, dict[str, float]]] = {}
  models = {'pretrained': [(settings.seeds[0], settings.base_model)],
            'finetune': [], 'promot': []}
  by_name = {v.name: v for v in rte.variants}
  for seed in settings.seeds:
    models['finetune'].append((seed, rte.run_dir(by_name['finetune'], seed)))
    models['promot'].append((seed, os.path.join(rte.run_dir(by_name['promot'], seed), 'stage2')))
  # The world's own transforms, registered by its task module (`TRANSFORM_NAMES`).
  transforms = tuple(importlib.import_module(settings.module).TRANSFORM_NAMES)
  suites = [f'{settings.prefix}eval_1shot__{t}' for t in transforms]
  for model_name, checkpoints in models.items():
    per_seed: list[dict[str, dict[str, float]]] = []
    for seed, checkpoint in checkpoints:
      out = os.path.join(settings.output_dir, 'conjugate', model_name, f'seed_{seed}')
      if not os.path.exists(os.path.join(out, 'results.json')):
        _log(f'conjugate: {model_name} seed {seed} under {", ".join(transforms)}')
        gin_utils.parse([*model_gin_files(settings), 'eval/fewshot_miniature.gin'], [
            f'CHECKPOINT_PATH = {checkpoint!r}', f'EVAL_OUTPUT_DIR = {out!r}',
            f'RUN_NAME = {model_name!r}', f'EVAL_SUITE = {suites!r}',
            f'EVAL_SUITE_NAMES = {list(transforms)!r}', 'MIXTURE_OR_TASK_NAME = None',
            f'MAX_EXAMPLES = {settings.max_examples}', *eval_world_overrides(settings)], (),
            finalize=False)
        gin_utils.bind_and_call('promot_t5x.eval.evaluate', '')
      result = reports.read_results(os.path.join(out, 'results.json'))
      entry = {t: _plain_task_scores(result.suites[t].scores) for t in transforms}
      # The untransformed prompt: the same model's 1-shot suite from the main table.
      variant = 'pretrained' if model_name == 'pretrained' else model_name
      main = reports.read_results(rte.results_path(by_name[variant], seed))
      entry[conjugate.IDENTITY] = _plain_task_scores(main.suites["fewshot_1shot"].scores)
      per_seed.append(entry)
    scores[model_name] = {t: {task: sum(s[t][task] for s in per_seed) / len(per_seed)
                              for task in per_seed[0][t]} for t in per_seed[0]}
  return conjugate.conjugate_report(
      scores, os.path.join(settings.output_dir, 'conjugate'), reference='pretrained',
      title=f'Conjugate prompting, {settings.prefix}rte models, 1-shot suite (mean over seeds)')


def _plain_task_scores(scores: Mapping[str, float]) -> dict[str, float]:
  """{'cb__toylang': x} or {'cb': x} -> {'cb': x}."""
  return {task.split('__')[0]: float(v) for task, v in scores.items()}


# -- the whole experiment ---------------------------------------------------------------
def _configure_jax(settings: Settings) -> None:
  import jax

  # Repeated shapes (seeds, tasks, stages) compile once across runs, workers and re-runs.
  jax.config.update('jax_compilation_cache_dir',
                    os.environ.get('JAX_COMPILATION_CACHE_DIR',
                                   os.path.join(settings.output_dir, '.jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def _cpus() -> list[int]:
  return sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []


Share = tuple[tuple[str, int], ...]  # (fine-tuning task, seed) units of one worker


def worker_shares(settings: Settings) -> list[Share]:
  """The (task, seed) units of each worker process (one share: everything runs in this process).

  Units are dealt out in turn, every seed of the first task and then of the next, so
  that 5 seeds of two tasks split 5/5 rather than 3 seeds/2 seeds. Multi-task runs
  train in the first task's experiment and are evaluated from the others: there each
  worker keeps all tasks of its seeds, in order.
  """
  units = [(task, seed) for task in settings.tasks for seed in settings.seeds]
  if settings.with_multitask:
    n = min(settings.workers or len(_cpus()) or 1, len(settings.seeds))
    return [tuple((t, s) for t in settings.tasks for s in settings.seeds[i::n]) for i in range(n)]
  n = min(settings.workers or len(_cpus()) or 1, len(units))
  return [tuple(units[i::n]) for i in range(n)]


def watch_parent(parent: int, period: float = 2.0, exit_fn: Any = None) -> threading.Thread:
  """Ends this worker once its parent is gone (killed, its workers would train on unseen).

  A daemon thread compares the parent's pid with `parent` every `period` seconds and
  calls `exit_fn` (default `os._exit(1)`) when it changed (the worker was re-parented).
  """
  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(period)
    (exit_fn or (lambda: os._exit(1)))()

  thread = threading.Thread(target=watch, name='watch-parent', daemon=True)
  thread.start()
  return thread


def _share_text(share: Share) -> str:
  """'rte seeds [0, 2], enfr seeds [1]'."""
  tasks = list(dict.fromkeys(t for t, _ in share))
  return ', '.join(f'{t} seeds {[s for u, s in share if u == t]}' for t in tasks)


def _worker(settings_dict: dict[str, Any], share: Share, cpu: int | None, log_path: str) -> None:
  """One worker process: its (task, seed) units, pinned to one CPU, logging to a file.

  The run's milestones (`[i/n] variant seed s: ...`) also go to the console.
  """
  watch_parent(os.getppid())
  host_memory.configure(inline_cpu_dispatch=False)  # millisecond steps: keep async dispatch
  if cpu is not None:
    os.sched_setaffinity(0, {cpu})
  console = os.fdopen(os.dup(1), 'w', buffering=1)
  log_file = open(log_path, 'a', buffering=1)  # noqa: SIM115 (open for the process's life)
  os.dup2(log_file.fileno(), 1)
  os.dup2(log_file.fileno(), 2)
  sys.stdout = sys.stderr = log_file
  tag = f'[worker {_share_text(share)}]'

  def log(msg: str) -> None:
    print(msg, flush=True)
    console.write(f'{tag} {msg}\n')

  settings = Settings(**settings_dict)
  _configure_jax(settings)
  for task in settings.tasks:
    seeds = tuple(s for t, s in share if t == task)
    if not seeds:
      continue
    exp = experiment(settings, task)
    log(f'{exp.name} -> {exp.output_dir}')
    experiment_lib.run(exp, seeds=seeds, merge_table=False, log=log)


def _run_workers(settings: Settings, shares: Sequence[Share]) -> None:
  """Runs the shares in parallel processes; raises naming the log of a worker that failed."""
  import multiprocessing

  from promot_t5x import miniature as module  # the importable name, also under `python -m`

  log_dir = os.path.join(settings.output_dir, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  cpus = _cpus()
  ctx = multiprocessing.get_context('spawn')
  procs = []
  for i, share in enumerate(shares):
    log_path = os.path.join(log_dir, f'worker_{i}.log')
    cpu = cpus[i % len(cpus)] if len(cpus) >= len(shares) else None
    _log(f'worker {i}: {_share_text(share)}' + (f' on CPU {cpu}' if cpu is not None else '')
         + f'; full log {log_path}')
    proc = ctx.Process(target=module._worker,  # pylint: disable=protected-access
                       args=(dataclasses.asdict(settings), tuple(share), cpu, log_path))
    proc.start()
    procs.append((proc, log_path))
  failed = []
  for proc, log_path in procs:
    proc.join()
    if proc.exitcode != 0:
      failed.append(f'{log_path} (exit code {proc.exitcode})')
  if failed:
    raise RuntimeError(f'Miniature worker(s) failed; see {", ".join(failed)}. Finished runs are '
                       'kept: re-running the command resumes.')


def run(settings: Settings) -> str:
  """Runs every part not yet done; writes summary.md/json; returns summary.md's path."""
  if not os.path.isdir(settings.base_model):
    raise FileNotFoundError(
        f'No base model at {settings.base_model}. Every world\'s is committed with the project '
        '(tasks/synthetic/data/: base_model, base_model_v2, base_model_v3); a clone without them '
        'regenerates one with its gin/miniature/pretrain*.gin recipe (docs/miniature/README.md) and '
        '`python -m promot_t5x.base_model_check --world=<world>`, or pass --base_model.')
  os.makedirs(settings.output_dir, exist_ok=True)
  _configure_jax(settings)
  start = time.time()
  timings: dict[str, float] = {}
  tables: dict[str, str] = {}
  experiments = {task: experiment(settings, task) for task in settings.tasks}
  # (runs done before this invocation, all runs): their time is not in `timings`.
  units = [(exp, v, seed) for exp in experiments.values() for v in exp.variants for seed in exp.seeds_of(v)]
  done_before = (sum(os.path.exists(exp.results_path(v, seed)) for exp, v, seed in units), len(units))
  # Workers only for the seeds with runs left to do (a finished experiment just re-merges).
  shares = [share for share in worker_shares(settings)
            if any(not os.path.exists(experiments[task].results_path(v, seed)) for task, seed in share
                   for v in experiments[task].variants if seed in experiments[task].seeds_of(v))]
  if len(shares) > 1:
    t0 = time.time()
    _run_workers(settings, shares)
    timings['runs'] = time.time() - t0
  for task, exp in experiments.items():
    t0 = time.time()
    n = sum(len(exp.seeds_of(v)) for v in exp.variants)
    _log(f'{exp.name}: {len(exp.variants)} variants, {n} runs -> {exp.output_dir}')
    experiment_lib.run(exp)  # with workers: every run is done; this merges the table
    with open(os.path.join(exp.output_dir, 'table.md')) as f:
      tables[task] = f.read()
    timings[f'experiment_{task}'] = time.time() - t0
  curve_data = None
  if settings.curves and 'rte' in experiments and settings.runs('finetune', 'promot'):
    t0 = time.time()
    curve_data = curves(settings, experiments['rte'])
    timings['curves'] = time.time() - t0
  conj = None
  if settings.conjugate and 'rte' in experiments and settings.runs('finetune', 'promot'):
    t0 = time.time()
    conj = conjugate_section(settings, experiments['rte'])
    timings['conjugate'] = time.time() - t0
  timings['total'] = time.time() - start
  path = write_summary(settings, tables, curve_data, conj, timings, done_before)
  write_claims(settings, curve_data)
  if settings.lr_grid:
    write_lr_grid(settings)
  if settings.dose_steps:
    write_dose_response(settings)
  _log(f'done in {timings["total"] / 60:.1f} min; results: {path}')
  return path


RUN_ORDER = ('pretrained', 'prompt_tuning', 'finetune', 'promot', 'promot_1shot', 'joint',
             'finetune_random_prompt', SHUFFLED, PROMOT_SHUFFLED, MULTITASK_FINETUNE, MULTITASK)
TARGET_METRIC = {'rte': 'rte/accuracy', 'enfr': 'enfr/bleu'}


def _mean_std(values: Sequence[float]) -> str:
  """'m ± s' over seeds (reports' statistics), '–' when there are none."""
  from promot_t5x import reports

  if not values:
    return '–'
  mean, std = reports._mean_std(values)  # pylint: disable=protected-access
  return f'{mean:.1f}' if std is None else f'{mean:.1f} ± {std:.1f}'


def overview_table(output_dir: str, tasks: Sequence[str], prefix: str = 'mini_') -> str:
  """The paper's Table 1 layout: per fine-tuning task and run, the task's score (with its
  prompt) and Norm. Avg. at each evaluated shot count (prompt removed; 1, and 4 with
  --four_shot) with the change from pretrained; mean ± std over seeds."""
  import numpy as np

  tables = {}
  for task in tasks:
    with open(os.path.join(output_dir, task, 'table.json')) as f:
      tables[task] = json.load(f)
  shots = [k for k in (1, 4) if any(f'fewshot_{k}shot/norm_avg' in r for t in tables.values()
                                    for rows in t.values() for r in rows)]
  lines = ['| fine-tuned on | run | seeds | task score | '
           + ' | '.join(f'Norm. Avg. {k}-shot | Δ {k}-shot' for k in shots) + ' |',
           '|---|---|---:|---:|' + '---:|---:|' * len(shots)]
  for task, table in tables.items():
    base = {k: float(np.mean([r[f'fewshot_{k}shot/norm_avg'] for r in table['pretrained']]))
            for k in shots} if 'pretrained' in table else None
    order = [v for v in RUN_ORDER if v in table] + sorted(v for v in table if v not in RUN_ORDER)
    for run in order:
      seeds = table[run]
      cells = [_mean_std([r[TARGET_METRIC[task]] for r in seeds if TARGET_METRIC[task] in r])]
      for k in shots:
        values = [r[f'fewshot_{k}shot/norm_avg'] for r in seeds]
        cells.append(_mean_std(values))
        cells.append(f'{np.mean(values) - base[k]:+.1f}' if base and run != 'pretrained' else '')
      lines.append(f'| {prefix}{task} | {run} | {len(seeds)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_summary(settings: Settings, tables: Mapping[str, str], curve_data: Any, conj: Any,
                  timings: Mapping[str, float], done_before: tuple[int, int] = (0, 0)) -> str:
  reused = (f' {done_before[0]} of the {done_before[1]} runs were done before this invocation; their '
            'time is not in it (the first invocation\'s log has it).' if done_before[0] else '')
  parts = [f'# ProMoT miniature ({time.strftime("%Y-%m-%d %H:%M")})', '',
           f'Settings: {json.dumps(portable_settings(settings))}', '',
           'Wall time of this invocation (finished parts are not re-run): '
           + ', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items()) + '.' + reused, '']
  parts += ['## Overview', '', f'Task score: accuracy ({settings.prefix}rte) or BLEU ({settings.prefix}enfr) on the '
            'fine-tuned task with the run\'s prompt; Norm. Avg.: mean of the 8 analogues with '
            'the prompt removed; Δ: change from pretrained. Mean ± std over seeds.', '',
            overview_table(settings.output_dir, list(tables), settings.prefix), '']
  for task, table in tables.items():
    parts += [f'## {settings.prefix}{task}', '', f'Plot: `{task}/norm_avg.png`', '',
              table.replace('\n# ', '\n### ', 1).lstrip('# ').split('\n', 1)[-1], '']
  if curve_data is not None:
    parts += [f'## Format specialization and gradient alignment ({settings.prefix}rte)', '',
              'Plot: `curves.png`. Mean over seeds:', '', curve_markdown(curve_data), '']
  if conj is not None:
    parts += [f'## Conjugate prompting ({settings.prefix}rte models)', '', 'Plot: `conjugate/conjugate_report.png`',
              '', conj.markdown, '']
  path = os.path.join(settings.output_dir, 'summary.md')
  with open(path, 'w') as f:
    f.write('\n'.join(parts))
  with open(os.path.join(settings.output_dir, 'summary.json'), 'w') as f:
    json.dump({'settings': portable_settings(settings), 'timings_s': dict(timings),
               'runs_done_before': {'runs': done_before[0], 'of': done_before[1]},
               'examples_scored': scored_examples(settings),
               'tables': {t: json.load(open(os.path.join(settings.output_dir, t, 'table.json')))
                          for t in tables},
               'curves': curve_data,
               'conjugate': json.loads(conj.json_path.read_text()) if conj is not None else None},
              f, indent=1)
  return path


def portable_settings(settings: Settings) -> dict[str, Any]:
  """The settings as written to results: paths relative to the working directory, never a machine's."""
  out = dataclasses.asdict(settings)
  for key in ('output_dir', 'base_model'):
    path = out[key]
    if os.path.isabs(path):
      rel = os.path.relpath(path)
      package = os.path.dirname(os.path.dirname(os.path.abspath(_synthetic.__file__)))
      out[key] = rel if not rel.startswith('..') else os.path.relpath(path, os.path.dirname(package))
  return out


def write_claims(settings: Settings, curve_data: Any) -> str:
  """claims.json and claims.md in the output folder: the paper's claims, verdicts from intervals."""
  from promot_t5x import claims

  tables = {}
  for task in settings.tasks:
    with open(os.path.join(settings.output_dir, task, 'table.json')) as f:
      tables[task] = json.load(f)
  curve_runs = {'finetune': (curve_data or {}).get('finetune', []),
                'promot': (curve_data or {}).get('promot_stage2', [])}
  found = claims.miniature_claims(tables, curve_runs if curve_data else None, prefix=settings.prefix)
  counts = scored_examples(settings)
  info = {'seeds': list(settings.seeds),
          'eval_examples_per_task': min(counts['eval'].values(), default=0),
          'task_test_examples': min(counts['task'].values(), default=0),
          'examples_scored': counts, 'world': settings.world,
          'base_model': portable_settings(settings)['base_model'],
          'model_learning_rate': settings.model_learning_rate,
          'interval': claims.INTERVAL,
          'command': 'promot-miniature ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else 'promot-miniature'}
  path = claims.write_claims(os.path.join(settings.output_dir, 'claims.json'), found, info)
  _log(f'claims: {path} (' + ', '.join(f'{c.id} {c.verdict}' for c in found) + ')')
  return path


def _best_value(run_dir: str) -> float | None:
  from promot_t5x import selection

  record = selection.read_best(os.path.join(run_dir, 'checkpoints'))
  return None if record is None else float(record.value)


def _write_json_md(settings: Settings, name: str, doc: Mapping[str, Any], markdown: str) -> str:
  path = os.path.join(settings.output_dir, f'{name}.json')
  with open(path, 'w') as f:
    json.dump(doc, f, indent=1)
    f.write('\n')
  with open(os.path.join(settings.output_dir, f'{name}.md'), 'w') as f:
    f.write(markdown)
  return path


def write_lr_grid(settings: Settings) -> str:
  """lr_grid.json/md: fine-tuning's best validation score at each model learning rate.

  The rate chosen is the one with the highest validation score averaged over the
  seeds and the tasks (both on 0-100); it is meant to be the default
  `Settings.model_learning_rate`, shared by fine-tuning, stage 2, joint and
  random-prompt runs.
  """
  import numpy as np

  from promot_t5x import claims

  rows: dict[str, dict[str, Any]] = {}
  for lr in settings.lr_grid:
    row: dict[str, Any] = {}
    for task in settings.tasks:
      values = [v for seed in settings.seeds
                if (v := _best_value(os.path.join(settings.output_dir, task, grid_variant(lr),
                                                  f'seed_{seed}'))) is not None]
      if values:
        row[task] = claims.Estimate.of(values).as_dict()
    if row:
      row['mean_over_tasks'] = float(np.mean([row[t]['mean'] for t in settings.tasks if t in row]))
      rows[f'{lr:g}'] = row
  chosen = max(rows, key=lambda k: rows[k]['mean_over_tasks']) if rows else None
  doc = {'measure': 'fine-tuning\'s best validation score (accuracy / BLEU, on the validation split, '
                    'every 50 steps) per model learning rate; mean and 95 % t-interval over seeds',
         'steps': settings.finetune_steps, 'seeds': list(settings.seeds), 'rates': rows,
         'chosen': None if chosen is None else float(chosen),
         'command': 'promot-miniature ' + ' '.join(sys.argv[1:])}
  lines = ['# Model learning-rate grid', '', f'Fine-tuning, {settings.finetune_steps} steps, seeds '
           f'{list(settings.seeds)}: best validation score (mean [95 % CI]).', '',
           '| learning rate | ' + ' | '.join(settings.tasks) + ' | mean |',
           '|---:|' + '---:|' * (len(settings.tasks) + 1)]
  for k, row in rows.items():
    cells = [claims.estimate_text(row[t], 1) if t in row else '–' for t in settings.tasks]
    lines.append(f'| {k}{" (chosen)" if k == chosen else ""} | ' + ' | '.join(cells)
                 + f' | {row["mean_over_tasks"]:.1f} |')
  path = _write_json_md(settings, 'lr_grid', doc, '\n'.join(lines) + '\n')
  _log(f'learning-rate grid: {path} (chosen {chosen})')
  return path


def write_dose_response(settings: Settings) -> str:
  """dose_response.json/md: ProMoT with stage 2 started from prompts trained n steps.

  Per dose (stage-1 steps): the prompt's task score (stage 1's best validation
  score; none for 0 steps), ProMoT's 1-shot Norm. Avg. change from the
  pretrained model and its task score, each a mean with its 95 % interval
  over seeds. If protection follows the prompt, the change rises with the
  prompt's score.
  """
  from promot_t5x import claims

  out: dict[str, Any] = {}
  lines = ['# Stage-1 dose-response', '']
  for task in (dose_task(settings),):
    with open(os.path.join(settings.output_dir, task, 'table.json')) as f:
      table = json.load(f)
    base = [r[claims.NORM_AVG] for r in table.get('pretrained', ()) if claims.NORM_AVG in r]
    doses = {}
    for n in settings.dose_steps:
      runs = table.get(dose_variant(n), ())
      deltas = [r[claims.NORM_AVG] - base[0] for r in runs if base and claims.NORM_AVG in r]
      scores = [r[claims.TASK_SCORE[task]] for r in runs if claims.TASK_SCORE[task] in r]
      prompt = [v for seed in settings.seeds if n and (v := _best_value(os.path.join(
          settings.output_dir, task, dose_variant(n), f'seed_{seed}', 'stage1'))) is not None]
      doses[str(n)] = {k: claims.Estimate.of(v).as_dict() for k, v in (
          ('prompt_validation_score', prompt), ('norm_avg_change', deltas), ('task_score', scores)) if v}
    out[task] = doses
    lines += [f'## {settings.prefix}{task}', '', '| stage-1 steps | prompt\'s validation score | Norm. Avg. change '
              '(1-shot) | task score |', '|---:|---:|---:|---:|']
    for n, d in doses.items():
      cells = [claims.estimate_text(d[k], 1) if k in d else '–'
               for k in ('prompt_validation_score', 'norm_avg_change', 'task_score')]
      lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  doc = {'measure': 'ProMoT with stage 2 (from the last stage-1 step) after n stage-1 steps; '
                    'mean and 95 % t-interval over seeds', 'seeds': list(settings.seeds),
         'stage2_steps': settings.stage2_steps, 'tasks': out,
         'command': 'promot-miniature ' + ' '.join(sys.argv[1:])}
  path = _write_json_md(settings, 'dose_response', doc, '\n'.join(lines))
  _log(f'dose-response: {path}')
  return path


def scored_examples(settings: Settings) -> dict[str, dict[str, int]]:
  """The examples each task was scored on, read from the pretrained model's results.

  {'task': {fine-tuned task: n}, 'eval': {evaluation task (1-shot): smallest n over the runs}}.
  """
  out: dict[str, dict[str, int]] = {'task': {}, 'eval': {}}
  for task in settings.tasks:
    path = os.path.join(settings.output_dir, task, 'pretrained', f'seed_{settings.seeds[0]}', 'eval',
                        'results.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      suites = json.load(f)['suites']
    for name, result in suites.get('target', {}).get('tasks', {}).items():
      out['task'][name] = int(result['num_examples'])
    for name, result in suites.get('fewshot_1shot', {}).get('tasks', {}).items():
      n = int(result['num_examples'])
      out['eval'][name] = min(n, out['eval'].get(name, n))
  return out


def export_base(run_dir: str, output: str = BASE_MODEL) -> str:
  """The latest params of a pretraining run -> a params folder (the committed base model)."""
  import shutil

  from promot_t5x import checkpoints
  from promot_t5x.checkpoints import manager

  params = manager.load_run_params(run_dir, 'latest')
  if os.path.exists(output):
    shutil.rmtree(output)
  checkpoints.save_params(output, params)
  return output


def main(argv: Sequence[str] | None = None) -> int:
  # Millisecond steps: keep JAX's asynchronous dispatch.
  return cli.main('promot-miniature', __doc__, _main, argv, add_flags=_flags,
                  inline_cpu_dispatch=False)


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--quick', action='store_true', help='a few steps of every part (tests)')
  parser.add_argument('--output_dir', default=None,
                      help='default runs/miniature (runs/miniature_quick with --quick)')
  parser.add_argument('--seeds', default=None, help='comma-separated, default 0,1,2,3,4')
  parser.add_argument('--four_shot', action='store_true',
                      help='also evaluate every run 4-shot (the default run: 1-shot, as the claims)')
  parser.add_argument('--max_examples', type=int, default=None,
                      help=f'examples per evaluation task (default {Settings.max_examples})')
  parser.add_argument('--task_examples', type=int, default=None,
                      help=f'test examples of the fine-tuned task (default {Settings.task_examples}, '
                           'or all its test split has)')
  parser.add_argument('--curve_examples', type=int, default=None, metavar='N',
                      help='examples per curve check, of each QA analogue (format specialization, C4 '
                           "and C5) and of the task's validation split (the checks select fine-tuning's "
                           "and stage 2's best checkpoint on the binary-inference analogue; default "
                           f'{Settings.curve_max_examples}: one answer moves the share by '
                           f'{100 / Settings.curve_max_examples:.2f} points)')
  parser.add_argument('--tasks', default=None, help=f'comma-separated subset of {FINETUNE_TASKS}')
  parser.add_argument('--extras', action='store_true',
                      help='also joint tuning, fine-tuning with a fixed random prompt and '
                           '(with both tasks) what --multitask adds')
  parser.add_argument('--multitask', action='store_true',
                      help='also multi-task ProMoT (one prompt per task, trained on both tasks) '
                           'and its baseline, multi-task fine-tuning')
  parser.add_argument('--workers', type=int, default=None,
                      help='processes splitting the (task, seed) units, one CPU each (default: one per '
                           'CPU; 1: all in this process)')
  parser.add_argument('--world', default='v3', choices=tuple(WORLDS),
                      help="the synthetic world, each with its committed base model and recipe (WORLD_RECIPES): "
                           "'v3' (default: the fine-tuning skills latent in pretraining, rare facts and words; "
                           "the base model passed its gate, headroom included), 'v2' (the second world; "
                           "docs/miniature/world_v2/) or 'v1' (the first; docs/miniature/world_v1/)")
  parser.add_argument('--controls', action='store_true',
                      help='also the controls: fine-tuning and ProMoT on the binary-inference analogue (the '
                           "world's <prefix>rte: " + ', '.join(f'{w} {p}rte' for w, (p, _, _) in WORLDS.items())
                           + ') with shuffled labels')
  parser.add_argument('--cpu_kernels', action='store_true',
                      help='run the model\'s products through the optional CPU kernels '
                           '(gin/options/cpu_kernels.gin; needs the cpu extra and g++)')
  parser.add_argument('--lr_grid', default=None, metavar='RATES',
                      help='comma-separated model learning rates: fine-tune at each (every seed) and '
                           'write lr_grid.json/md, the rate with the best validation score')
  parser.add_argument('--model_learning_rate', type=float, default=None, metavar='LR',
                      help='the model learning rate of fine-tuning, stage 2, joint and random-prompt runs '
                           '(default: the world\'s grid\'s choice, WORLD_RECIPES: '
                           + ', '.join(f'{w} {r["model_learning_rate"]}' for w, r in WORLD_RECIPES.items()) + ')')
  parser.add_argument('--dose_response', default=None, metavar='STEPS',
                      help='comma-separated stage-1 steps (e.g. 0,30,100,300): ProMoT on the En-Fr analogue with '
                           'stage 2 started from those prompts; writes dose_response.json/md')
  parser.add_argument('--one_shot_training', action='store_true',
                      help='also ProMoT + 1-shot training (both stages on 1-shot inputs; claim C6)')
  parser.add_argument('--only', default=None, metavar='VARIANTS',
                      help='comma-separated variants to run (besides the pretrained model), e.g. the '
                           'grid alone: --lr_grid=0.001,0.01 --only=finetune_lr0.001,finetune_lr0.01')
  parser.add_argument('--no_protocol', action='store_true',
                      help='train without the paper\'s protocol (gin/miniature/protocol.gin: dropout and '
                           'label smoothing 0.1, best checkpoint by validation)')
  parser.add_argument('--stage1_unregularized', action=argparse.BooleanOptionalAction, default=None,
                      help="stage 1 (prompt tuning) without the protocol's dropout and label smoothing; "
                           'the other runs keep them (STAGE1_DROPOUT_RATE, STAGE1_LABEL_SMOOTHING = 0). '
                           "Default: the world's recipe (" + ', '.join(
                               f'{w} {"yes" if r["stage1_unregularized"] else "no"}'
                               for w, r in WORLD_RECIPES.items()) + ')')
  parser.add_argument('--stage1_steps', type=int, default=None, metavar='STEPS',
                      help="stage 1's steps (default: the world's recipe, " + ', '.join(
                          f'{w} {r["stage1_steps"]}' for w, r in WORLD_RECIPES.items())
                      + f"; stage 2 has {Settings.stage2_steps}: v1 trains stage 1 as long, the later worlds "
                        "5 x, the paper's ratio of 5,000 to 1,000)")
  parser.add_argument('--no_curves', action='store_true')
  parser.add_argument('--no_conjugate', action='store_true')
  parser.add_argument('--base_model', default=None, help='a params or run folder to start from')
  parser.add_argument('--export_base', default=None, metavar='RUN_DIR',
                      help='write the latest params of a pretraining run (gin/miniature/'
                           'pretrain.gin) to the base model folder, then exit')


def _main(args: argparse.Namespace) -> int:
  if args.export_base:
    print(f'wrote {export_base(args.export_base, args.base_model or WORLDS[args.world][2])}')
    return 0
  kwargs: dict[str, Any] = dict(QUICK) if args.quick else {}
  kwargs['output_dir'] = args.output_dir or ('runs/miniature_quick' if args.quick else 'runs/miniature')
  if args.seeds:
    kwargs['seeds'] = tuple(int(s) for s in args.seeds.split(','))
  if args.tasks:
    kwargs['tasks'] = tuple(args.tasks.split(','))
  for name in ('max_examples', 'task_examples'):
    if getattr(args, name) is not None:
      kwargs[name] = getattr(args, name)
  if args.curve_examples is not None:
    kwargs['curve_max_examples'] = args.curve_examples
  if args.four_shot:
    kwargs['four_shot'] = True
  if args.only:
    kwargs['only'] = tuple(args.only.split(','))
  if args.lr_grid:
    kwargs['lr_grid'] = tuple(float(x) for x in args.lr_grid.split(','))
  if args.model_learning_rate is not None:
    kwargs['model_learning_rate'] = args.model_learning_rate
  if args.stage1_steps is not None:
    kwargs['stage1_steps'] = args.stage1_steps
  if args.dose_response:
    kwargs['dose_steps'] = tuple(int(x) for x in args.dose_response.split(','))
  if args.base_model:
    kwargs['base_model'] = os.path.abspath(args.base_model)
  kwargs.update(world=args.world, controls=args.controls or bool(kwargs.get('controls')),
                one_shot_training=args.one_shot_training or bool(kwargs.get('one_shot_training')))
  kwargs.update(cpu_kernels=args.cpu_kernels, extras=args.extras, multitask=args.multitask, curves=not args.no_curves,
                protocol=not args.no_protocol, conjugate=not args.no_conjugate, workers=args.workers,
                stage1_unregularized=args.stage1_unregularized)
  try:
    settings = Settings(**kwargs)
  except ValueError as e:
    raise cli.UsageError(str(e)) from e
  run(settings)
  return 0


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()
