"""seqio tasks and mixtures of the miniature (prefix `mini_`), from the synthetic world.

Importing this module registers, with the miniature's vocabulary
(`vocabulary.get_vocabulary()`), for the default `WorldConfig`:

| name | what |
|---|---|
| `mini_rte`, `mini_enfr` | the fine-tuning tasks (0-shot) |
| `mini_rte_1shot_train`, `mini_enfr_1shot_train` | the same, one train demonstration |
| `mini_rte_shuffled` | `mini_rte` with its labels permuted within each split (the paper's control) |
| `mini_{family}_{k}shot`, k in 0, 1, 4 | the 8 evaluation analogues (below) |
| `mini_eval_{k}shot` | mixture of the 8 at k shots |
| `mini_rte_enfr` | multi-task fine-tuning mixture (rates 1:1) |
| `mini_pretrain_{component}` | documents, episodes, lumic, cipher |
| `mini_pretrain` | the pretraining mixture (`world.PRETRAIN_RATES`) |
| `mini_{family}_{k}shot__{transform}` | the 8 under a conjugate transform |
| `mini_eval_{k}shot__{transform}` | their mixture (transforms: `toylang`, `cipher`) |

Evaluation families: cb, wic, triviaqa, webqa, ende, enro, xsum, wikilingua
(`world.EVAL_FAMILIES`). Pretraining components: see
`world.pretraining_example`; transforms: `transforms.py`.

Splits: `train`, `validation`, `test`, and `eval` (= `test`, the scored split,
as in `promot_t5x_tasks.paper`). Demonstrations come from `train` through
`promot_t5x_tasks.fewshot` (fixed seed, never the query itself). QA splits
partition the facts, so a validation/test question is never asked in
pretraining: its fact is only stated in world documents. Pretraining
components have a `train` stream (large, generated lazily) and a small
`validation` split.

Metrics (0-100, `promot_t5x.metrics`) and postprocessors
(`promot_t5x.postprocessing`, cutting at the next demonstration prefix) are
attached in one place, `FAMILY_METRIC` / `postprocessor()`. Non-classification
evaluation tasks also report `format_specialization`: the percent of outputs
whose first word is a binary-inference label (True/False), the paper's measure
of format specialization after fine-tuning on RTE.

`register_mini_tasks(world_config, prefix=...)` registers the same set for
another world (e.g. a smaller one for tests) under another prefix.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import seqio
import tensorflow as tf
from promot_t5x_tasks import fewshot as fewshot_lib
from promot_t5x_tasks import preprocessors, templates
from promot_t5x_tasks import vocab as vocab_lib
from promot_t5x_tasks.synthetic import transforms as transforms_lib
from promot_t5x_tasks.synthetic import vocabulary as vocabulary_lib
from promot_t5x_tasks.synthetic import world as world_lib

from promot_t5x import conjugate, metrics, postprocessing

DEFAULT_PREFIX = 'mini_'
# This world's conjugate transforms (the default world's: 'toylang', 'cipher').
TRANSFORM_NAMES = transforms_lib.TRANSFORM_NAMES
SHOTS = (0, 1, 4)
EVAL_SPLIT = world_lib.EVAL_SPLIT  # scored: test (and validation for QA; `World.items`)
SCORED_SPLIT = 'test'
SOURCE_SPLITS = world_lib.SPLITS + (EVAL_SPLIT,)
# Pretraining streams: examples per split (the train stream is never exhausted
# by the miniature's runs; seqio mixtures repeat it anyway).
PRETRAIN_SPLIT_SIZES = {'train': 2_000_000, 'validation': 512}
# Demonstrations: the whole train split is the pool (it is small).
FEWSHOT = fewshot_lib.FewshotConfig(pool_size=5000, pool_candidates=5000)

# The one place metrics and postprocessors are attached, per family kind.
FAMILY_METRIC = {
    'classification': metrics.accuracy,
    'qa': metrics.exact_match,
    'translation': metrics.bleu,
    'summary': metrics.rouge2,
}
_FAMILY_POSTPROCESSOR = {
    'classification': postprocessing.classification_postprocessor,
    'qa': postprocessing.qa_postprocessor,
    'translation': postprocessing.text_postprocessor,
    'summary': postprocessing.text_postprocessor,
}


def metric_name(family: str) -> str:
  """The key of a family's score in its metric dict ('accuracy', 'exact_match', ...)."""
  return FAMILY_METRIC[world_lib.family_kind(family)].__name__


def postprocessor(family: str) -> Callable[..., object]:
  """The family's seqio postprocessor, cutting at `templates.DEMONSTRATION_PREFIXES`."""
  return functools.partial(_FAMILY_POSTPROCESSOR[world_lib.family_kind(family)],
                           prefixes=templates.DEMONSTRATION_PREFIXES)


def metric_fns(family: str) -> list[Callable[..., dict[str, float]]]:
  """The family's metric (first) and, for non-classification evaluation tasks, the
  format-specialization rate against the binary labels."""
  fns = [FAMILY_METRIC[world_lib.family_kind(family)]]
  if family in world_lib.EVAL_FAMILIES and world_lib.family_kind(family) != 'classification':
    fns.append(metrics.format_specialization_metric(templates.BINARY_LABELS,
                                                    templates.DEMONSTRATION_PREFIXES))
  return fns


# -- names ---------------------------------------------------------------------------
def task_name(family: str, num_shots: int | None = None, prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_rte` / `mini_enfr` (fine-tuning, num_shots None) or `mini_{family}_{k}shot`."""
  if num_shots is None:
    return f'{prefix}{family}'
  return f'{prefix}{family}_{num_shots}shot'


def one_shot_train_name(family: str, prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_rte_1shot_train`: the fine-tuning task with one train demonstration."""
  return f'{prefix}{family}_1shot_train'


def eval_mixture_name(num_shots: int, prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_eval_{k}shot`: the eight evaluation analogues at k shots."""
  return f'{prefix}eval_{num_shots}shot'


def pretrain_task_name(component: str, prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_pretrain_{component}` (documents, episodes, lumic, cipher)."""
  return f'{prefix}pretrain_{component}'


def pretrain_mixture_name(prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_pretrain`: the components at `world.PRETRAIN_RATES`."""
  return f'{prefix}pretrain'


def multitask_mixture_name(prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_rte_enfr`: both fine-tuning tasks at equal rates."""
  return f'{prefix}rte_enfr'


# -- sources -------------------------------------------------------------------------
_TEXT_SIGNATURE = {'inputs': tf.TensorSpec([], tf.string),
                   'targets': tf.TensorSpec([], tf.string)}


def _family_source(world: world_lib.World, family: str) -> seqio.FunctionDataSource:
  """The 0-shot rendered examples of a family (the few-shot source adds demonstrations)."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples if asked.
    examples = world.examples(family, split)  # EVAL_SPLIT: the scored items (World.items)
    return tf.data.Dataset.from_tensor_slices({
        'inputs': tf.constant([e.inputs for e in examples], tf.string),
        'targets': tf.constant([e.targets for e in examples], tf.string)})

  sizes = {s: len(world.items(family, s)) for s in SOURCE_SPLITS}
  return seqio.FunctionDataSource(dataset_fn, splits=SOURCE_SPLITS, num_input_examples=sizes)


def _shuffled_label_source(world: world_lib.World, family: str) -> seqio.FunctionDataSource:
  """A family's examples with its targets permuted within each split (fixed seed).

  The paper's control (fine-tuning on RTE with shuffled labels): the label words
  and their balance stay, their relation to the inputs is gone.
  """

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    split = SCORED_SPLIT if split == EVAL_SPLIT else split
    examples = world.examples(family, split)
    order = world._rng('shuffled_labels', family, split).permutation(len(examples))  # pylint: disable=protected-access
    return tf.data.Dataset.from_tensor_slices({
        'inputs': tf.constant([e.inputs for e in examples], tf.string),
        'targets': tf.constant([examples[int(i)].targets for i in order], tf.string)})

  sizes = {s: len(world.items(family, s)) for s in world_lib.SPLITS}
  sizes[EVAL_SPLIT] = sizes[SCORED_SPLIT]
  return seqio.FunctionDataSource(dataset_fn, splits=SOURCE_SPLITS, num_input_examples=sizes)


def shuffled_label_name(family: str, prefix: str = DEFAULT_PREFIX) -> str:
  """`mini_rte_shuffled`: the fine-tuning task with its labels shuffled (the paper's control)."""
  return f'{prefix}{family}_shuffled'


def _pretrain_source(world: world_lib.World, component: str) -> seqio.FunctionDataSource:
  """A lazily generated pretraining stream (a pure function of the index)."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    size = PRETRAIN_SPLIT_SIZES[split]

    def generate():
      for i in range(size):
        ex = world.pretraining_example(component, i, split)
        yield {'inputs': ex.inputs, 'targets': ex.targets}

    return tf.data.Dataset.from_generator(generate, output_signature=_TEXT_SIGNATURE)

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(PRETRAIN_SPLIT_SIZES),
                                  num_input_examples=dict(PRETRAIN_SPLIT_SIZES))


def _identity_render(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset


# -- registration ----------------------------------------------------------------------
def _replace_mixture(name: str, tasks: Sequence[tuple[str, float]]) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks))


def register_mini_tasks(world_config: world_lib.WorldConfig | None = None,
                        prefix: str = DEFAULT_PREFIX, *,
                        vocabulary: seqio.Vocabulary | None = None,
                        shots: Sequence[int] = SHOTS,
                        transforms: Sequence[str] | None = None) -> list[str]:
  """Registers (replacing) every task and mixture of the miniature; returns their names.

  Args:
    world_config: the world (default `WorldConfig()`).
    prefix: prepended to every name.
    vocabulary: default: the committed miniature vocabulary.
    shots: shot counts of the evaluation tasks and mixtures.
    transforms: conjugate transforms to derive the evaluation suite under.
      Default: the transforms registered for this world
      (`transforms.register_transforms`): `toylang` and `cipher` for the
      default world, none for another world until its own are registered.
      A transform registered for another world is an error: each world's
      Lumic and cipher follow its own vocabulary.
  """
  config = world_config or world_lib.WorldConfig()
  if transforms is None:
    transforms = transforms_lib.registered_for(config)
  for name in transforms:
    owner = transforms_lib.world_of(name)
    if owner is not None and owner != config:
      mine = transforms_lib.registered_for(config)
      raise ValueError(
          f'Conjugate transform {name!r} was registered for another world; its Lumic and cipher '
          f'follow that world\'s words. Register this world\'s own with '
          f"transforms.register_transforms(world, suffix='_...') and pass those names"
          + (f' (registered for this world: {mine})' if mine else '') + '.')
  world = world_lib.get_world(world_config)
  vocabulary = vocabulary or vocabulary_lib.get_vocabulary()
  names: list[str] = []

  def add(name, family, num_shots):
    fewshot_lib.add_text_task(
        name, _family_source(world, family), _identity_render, vocabulary=vocabulary,
        fewshot=dataclasses.replace(FEWSHOT, num_shots=num_shots),
        metric_fns=metric_fns(family), postprocess_fn=postprocessor(family), overwrite=True)
    names.append(name)

  for family in world_lib.FINETUNE_FAMILIES:
    add(task_name(family, None, prefix), family, 0)
    add(one_shot_train_name(family, prefix), family, 1)
  for family in world_lib.CLASSIFICATION_FAMILIES[:1]:  # rte
    name = shuffled_label_name(family, prefix)
    fewshot_lib.add_text_task(
        name, _shuffled_label_source(world, family), _identity_render, vocabulary=vocabulary,
        fewshot=dataclasses.replace(FEWSHOT, num_shots=0), metric_fns=metric_fns(family),
        postprocess_fn=postprocessor(family), overwrite=True)
    names.append(name)
  for family in world_lib.EVAL_FAMILIES:
    for k in shots:
      add(task_name(family, k, prefix), family, k)

  output_features = vocab_lib.output_features(vocabulary)
  for component in world.pretrain_components:
    name = pretrain_task_name(component, prefix)
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
    # Episodes keep their query when too long: the oldest demonstration is trimmed.
    seqio.TaskRegistry.add(name, source=_pretrain_source(world, component),
                           preprocessors=preprocessors.text_to_text_preprocessors(num_shots=1),
                           output_features=output_features)
    names.append(name)

  mixtures = {eval_mixture_name(k, prefix): [(task_name(f, k, prefix), 1.0)
                                             for f in world_lib.EVAL_FAMILIES] for k in shots}
  mixtures[multitask_mixture_name(prefix)] = [(task_name(f, None, prefix), 1.0)
                                              for f in world_lib.FINETUNE_FAMILIES]
  mixtures[pretrain_mixture_name(prefix)] = [(pretrain_task_name(c, prefix), rate)
                                             for c, rate in world.pretrain_rates.items()]
  for name, tasks in mixtures.items():
    _replace_mixture(name, tasks)
    names.append(name)

  # Conjugate forms of the evaluation suite (task by task, then the mixtures).
  for transform in transforms:
    for k in shots:
      names.append(conjugate.register_conjugate(eval_mixture_name(k, prefix), transform))
      names += [conjugate.conjugate_name(task_name(f, k, prefix), transform)
                for f in world_lib.EVAL_FAMILIES]
  return names


register_mini_tasks()
