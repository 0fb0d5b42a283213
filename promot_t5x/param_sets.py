"""Named parameter sets and the stages of ProMoT, declared in one place.

Every run is one `Stage`: which named sets train, which stay frozen, and
whether training batches go through a soft prompt. The table of DESIGN.md:

| stage            | trains          | frozen            | prompt in training |
|------------------|-----------------|-------------------|--------------------|
| PROMPT_TUNING    | prompt          | model             | yes                |
| PROMOT_STAGE2    | model           | prompt            | yes                |
| FINETUNE         | model           | -                 | no                 |
| JOINT            | model + prompt  | -                 | yes                |
| PRETRAIN         | model           | -                 | no                 |

Sets are regular expressions over '/'-joined parameter paths
(`encoder/layers_0/mlp/wi_0/kernel`, `prompt/rte`). The built-in sets are
`model` (everything outside `prompt/`), `prompt` (every soft prompt) and
`prompt/<name>` (one task's prompt). Gradients are taken only with respect to
the trainable leaves, and the optimizer only ever sees those leaves.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flax import traverse_util

PROMPT_ROOT = 'prompt'


@dataclasses.dataclass(frozen=True)
class ParamSet:
  """A named set of parameters: the leaves whose path fully matches `pattern`."""

  name: str
  pattern: str

  def __post_init__(self):
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f'ParamSet {self.name!r}: bad regex {self.pattern!r}: {e}') from e

  def matches(self, path: str) -> bool:
    return re.fullmatch(self.pattern, path) is not None


MODEL_SET = ParamSet('model', rf'(?!{PROMPT_ROOT}/).*')
PROMPT_SET = ParamSet('prompt', rf'{PROMPT_ROOT}/.*')


def prompt_set(name: str) -> ParamSet:
  """The set holding only the prompt called `name` (one task's prompt)."""
  return ParamSet(f'{PROMPT_ROOT}/{name}', rf'{PROMPT_ROOT}/{re.escape(name)}')


@dataclasses.dataclass(frozen=True)
class Stage:
  """Which parameter sets a run trains and which it keeps frozen.

  `trainable` and `frozen` name sets; every parameter must fall in exactly one
  of the two groups. `use_prompt` says whether training (and evaluation on the
  fine-tuned task) runs through the soft prompt; `prompt_name` picks which
  prompt when the model has several and the data does not say (None: the
  first, or per example from the batch's `prompt_index`).
  """

  name: str
  trainable: tuple[str, ...]
  frozen: tuple[str, ...] = ()
  use_prompt: bool = False
  prompt_name: str | None = None
  extra_sets: tuple[ParamSet, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, 'trainable', tuple(self.trainable))
    object.__setattr__(self, 'frozen', tuple(self.frozen))
    object.__setattr__(self, 'extra_sets', tuple(self.extra_sets))
    if not self.trainable:
      raise ValueError(f'Stage {self.name!r} trains nothing: name at least one set.')
    both = set(self.trainable) & set(self.frozen)
    if both:
      raise ValueError(f'Stage {self.name!r} lists {sorted(both)} as both trainable and frozen.')
    if self.prompt_name is not None and not self.use_prompt:
      raise ValueError(f'Stage {self.name!r} names prompt {self.prompt_name!r} but use_prompt=False.')

  def replace(self, **changes) -> Stage:
    return dataclasses.replace(self, **changes)


PROMPT_TUNING = Stage('prompt_tuning', trainable=('prompt',), frozen=('model',), use_prompt=True)
PROMOT_STAGE2 = Stage('promot_stage2', trainable=('model',), frozen=('prompt',), use_prompt=True)
FINETUNE = Stage('finetune', trainable=('model',), use_prompt=False)
JOINT = Stage('joint', trainable=('model', 'prompt'), use_prompt=True)
PRETRAIN = Stage('pretrain', trainable=('model',), use_prompt=False)

STAGES = {s.name: s for s in (PROMPT_TUNING, PROMOT_STAGE2, FINETUNE, JOINT, PRETRAIN)}


def stage_by_name(name: str) -> Stage:
  if name not in STAGES:
    raise ValueError(f'Unknown stage {name!r}; known stages: {sorted(STAGES)}.')
  return STAGES[name]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  return traverse_util.flatten_dict(dict(tree), sep='/')


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def available_sets(paths: Sequence[str], stage: Stage) -> dict[str, ParamSet]:
  """Built-in sets (model, prompt, prompt/<name>) plus the stage's extra sets."""
  sets = {MODEL_SET.name: MODEL_SET, PROMPT_SET.name: PROMPT_SET}
  for path in paths:
    if path.startswith(PROMPT_ROOT + '/'):
      s = prompt_set(path.split('/')[1])
      sets[s.name] = s
  for s in stage.extra_sets:
    sets[s.name] = s
  return sets


def trainable_paths(params: Mapping[str, Any], stage: Stage) -> dict[str, bool]:
  """{path: trainable?} for every leaf, validated against the stage.

  Errors name the problem: a set that matches nothing, a leaf in no declared
  set, or a prompt-tuning stage on a model without a prompt.
  """
  flat = flatten(params)
  paths = sorted(flat)
  sets = available_sets(paths, stage)
  for name in stage.trainable + stage.frozen:
    if name not in sets:
      raise ValueError(f'Stage {stage.name!r} names parameter set {name!r}, which does not '
                       f'exist; known sets: {sorted(sets)}.')
    if not any(sets[name].matches(p) for p in paths):
      hint = ''
      if name.startswith(PROMPT_ROOT):
        hint = (' The model has no soft prompt: set PROMPT_LENGTH and use a model gin '
                'with a prompt (T5Config.prompt = @prompts.PromptConfig()).')
      raise ValueError(f'Stage {stage.name!r}: parameter set {name!r} matches no parameter.{hint}')
  result = {}
  for p in paths:
    train = any(sets[n].matches(p) for n in stage.trainable)
    freeze = any(sets[n].matches(p) for n in stage.frozen)
    if train and freeze:
      raise ValueError(f'Parameter {p} is in both a trainable and a frozen set of stage '
                       f'{stage.name!r}.')
    result[p] = train
  if stage.use_prompt and not any(p.startswith(PROMPT_ROOT + '/') for p in paths):
    raise ValueError(f'Stage {stage.name!r} trains through a soft prompt but the model has '
                     'none: set PROMPT_LENGTH / T5Config.prompt in the model gin.')
  return result


def split(params: Mapping[str, Any], stage: Stage) -> tuple[dict, dict]:
  """Nested params -> (trainable, frozen) nested trees with disjoint leaves."""
  mask = trainable_paths(params, stage)
  flat = flatten(params)
  trainable = {p: v for p, v in flat.items() if mask[p]}
  frozen = {p: v for p, v in flat.items() if not mask[p]}
  return unflatten(trainable), unflatten(frozen)


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `split`."""
  flat = flatten(frozen)
  flat.update(flatten(trainable))
  return unflatten(flat)


def set_of_each_param(params: Mapping[str, Any], stage: Stage) -> dict[str, str]:
  """{path: most specific declared set name}, for model-info.txt."""
  flat = flatten(params)
  sets = available_sets(sorted(flat), stage)
  out = {}
  for p in flat:
    names = [n for n, s in sets.items() if s.matches(p)]
    # Most specific = longest name (prompt/rte beats prompt).
    out[p] = max(names, key=len) if names else '-'
  return out
