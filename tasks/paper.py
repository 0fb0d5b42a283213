"""The paper's seqio tasks and mixtures: fine-tuning tasks and the few-shot suites.

Importing this module registers every task and mixture below under the
prefix `promot_`, with mT5's vocabulary (`promot_t5x_tasks.vocab`).
`register_paper_tasks(vocabulary, prefix=...)` registers the same set again
with another vocabulary under another prefix.

Datasets (TFDS name and version, split the paper's evaluation scores,
metric). The scored split is the labelled test split where one is public,
else the dev split:

| stem | TFDS | scored split | metric |
|---|---|---|---|
| rte | super_glue/rte:1.0.2 | validation | accuracy |
| wmt14_enfr | wmt14_translate/fr-en:1.0.0 | test (newstest2014) | bleu |
| snli | snli:1.1.0 | test | accuracy |
| openbookqa | openbookqa:0.1.0 | test | accuracy |
| cb | super_glue/cb:1.0.2 | validation | accuracy |
| wic | super_glue/wic:1.0.2 | validation | accuracy |
| triviaqa | trivia_qa/rc.nocontext:1.1.0 | validation | exact_match |
| webquestions | web_questions:1.0.0 | test | exact_match |
| wmt16_ende | wmt16_translate/de-en:1.0.0 | test (newstest2016) | bleu |
| wmt16_enro | wmt16_translate/ro-en:1.0.0 | test (newstest2016) | bleu |
| xsum | xsum:1.1.0 | test | rouge2 |
| wikilingua_en | gem/wiki_lingua_english_en:1.1.0 | test | rouge2 |

The first four are the fine-tuning tasks (RTE and En-Fr in the main text,
SNLI and OpenbookQA in the appendix); the last eight are the evaluation suite.

Naming. Every dataset is registered at 0, 1 and 4 shots:
`{prefix}{stem}` (0-shot: the plain fine-tuning task) and
`{prefix}{stem}_{k}shot` (k demonstrations from the train split, see
`promot_t5x_tasks.fewshot`); `promot_rte_1shot` on split `train` is the
"ProMoT + 1-shot training" data. Splits are the TFDS splits plus `eval`
(= the scored split above), so one split name evaluates a whole suite.
Mixtures:

- `{prefix}paper_{k}shot_eval`, k in 0, 1, 4: the eight evaluation tasks;
- `{prefix}paper_multitask` and `{prefix}paper_multitask_1shot`: RTE + En-Fr
  at equal rates (proportional rates would all but drop RTE's 2,490 examples
  beside En-Fr's 40M).

Labels: RTE entailment/not_entailment -> True/False; CB entailment/
contradiction/neutral and SNLI entailment/contradiction/neutral ->
True/False/Neither; WiC 1/0 -> True/False; OpenbookQA `Q: [stem] A) [c1]
B) [c2] C) [c3] D) [c4] A:` -> the letter (accuracy); translation is English to the other
language; TriviaQA's target is the answer's value, scored against its value
and aliases; WebQuestions' the first answer, scored against all.

Truncation: summarization inputs are cut to `SUMMARIZATION_INPUT_LENGTH`
(1024) tokens as a whole, as the paper does (k-shot inputs keep their end, the
query; 0-shot ones their start); see `promot_t5x_tasks.preprocessors` (and
`count_long_inputs` there to count what a feature length truncates).

Post-processing: outputs are cut at the *second* occurrence of a
demonstration prefix (`PREFIX_OCCURRENCE`, the paper's appendix B.2).
Sentinel-format prompting (`<extra_id_0>` at the end of every input) is not
part of the registration: it is the run's switch (`SENTINEL_FORMAT`, on in
the paper's gins; `promot_t5x.sentinel`).

WMT14 En-Fr: TFDS `wmt14_translate/fr-en` trains on every WMT14 corpus
(about 40.8M pairs); the paper's table 8 gives 15,786,979 training examples.
See docs/fidelity.md for the difference and why it hardly matters at 1,000
steps of batch 64.
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

from promot_t5x import metrics, postprocessing

DEFAULT_PREFIX = 'promot_'
EVAL_SPLIT = 'eval'
SHOTS = (0, 1, 4)
SUMMARIZATION_INPUT_LENGTH = 1024
# Outputs are cut at this occurrence of a demonstration prefix (the paper: the second).
PREFIX_OCCURRENCE = 2

CLASSIFICATION, QA, TRANSLATION, SUMMARIZATION = (
    'classification', 'qa', 'translation', 'summarization')

# Per family: the metric, and the postprocessor (bound to the demonstration prefixes).
_FAMILY_METRIC = {
    CLASSIFICATION: metrics.accuracy,
    QA: metrics.exact_match,
    TRANSLATION: metrics.bleu,
    SUMMARIZATION: metrics.rouge2,
}
_FAMILY_POSTPROCESSOR = {
    CLASSIFICATION: postprocessing.classification_postprocessor,
    QA: postprocessing.qa_postprocessor,
    TRANSLATION: postprocessing.text_postprocessor,
    SUMMARIZATION: postprocessing.text_postprocessor,
}

# (vocabulary, num_shots, summarization input length) -> render.
RenderFactory = Callable[[seqio.Vocabulary, int, int], preprocessors.Render]


@dataclasses.dataclass(frozen=True)
class PaperDataset:
  """One dataset of the paper and how it is rendered and scored."""

  stem: str  # task names are built from it
  tfds_name: str  # 'name/config:version'
  tfds_splits: tuple[str, ...]
  scored_split: str  # what the `eval` split maps to
  family: str
  make_render: RenderFactory
  label_words: tuple[str, ...] | None = None  # classification: the label set

  def __post_init__(self):
    if self.family not in _FAMILY_METRIC:
      raise ValueError(f'Unknown family {self.family!r}; one of {sorted(_FAMILY_METRIC)}.')
    if self.scored_split not in self.tfds_splits:
      raise ValueError(f'{self.stem}: scored split {self.scored_split!r} is not among '
                       f'{self.tfds_splits}.')

  @property
  def metric_name(self) -> str:
    """The key of the task's score in its metric dict ('accuracy', 'bleu', ...)."""
    return _FAMILY_METRIC[self.family].__name__


def _inference(template_fn, label_words) -> RenderFactory:
  return lambda vocabulary, k, length: preprocessors.inference_render(template_fn, label_words)


def _translation(source: str, target: str, source_language: str, target_language: str
                 ) -> RenderFactory:
  return lambda vocabulary, k, length: preprocessors.translation_render(
      source, target, source_language, target_language)


def _summarization(article_key: str, summary_key: str) -> RenderFactory:
  # Whole articles; the input is cut to the summarization length as a whole (the paper).
  return lambda vocabulary, k, length: preprocessors.summarization_render(article_key,
                                                                          summary_key)


def _triviaqa_answers(ex):
  # The value first (the target), then its aliases; exact match takes the best.
  return tf.concat([tf.reshape(ex['answer']['value'], [1]), ex['answer']['aliases']], axis=0)


_TRAIN_DEV_TEST = ('train', 'validation', 'test')
_TRAIN_TEST = ('train', 'test')

PAPER_DATASETS: dict[str, PaperDataset] = {d.stem: d for d in [
    # Fine-tuning tasks.
    PaperDataset('rte', 'super_glue/rte:1.0.2', _TRAIN_DEV_TEST, 'validation', CLASSIFICATION,
                 _inference(templates.binary_inference, ('True', 'False')),
                 label_words=templates.BINARY_LABELS),
    PaperDataset('wmt14_enfr', 'wmt14_translate/fr-en:1.0.0', _TRAIN_DEV_TEST, 'test',
                 TRANSLATION, _translation('en', 'fr', 'English', 'French')),
    PaperDataset('snli', 'snli:1.1.0', _TRAIN_DEV_TEST, 'test', CLASSIFICATION,
                 # TFDS order: entailment, neutral, contradiction.
                 _inference(templates.three_way_inference, ('True', 'Neither', 'False')),
                 label_words=templates.THREE_WAY_LABELS),
    PaperDataset('openbookqa', 'openbookqa:0.1.0', _TRAIN_DEV_TEST, 'test', CLASSIFICATION,
                 lambda vocabulary, k, length: preprocessors.multiple_choice_render(
                     lambda ex: ex['question']['stem'],
                     lambda ex: [ex['question'][f'choice_{c}'] for c in 'ABCD'],
                     lambda ex: ex['answerKey']),
                 label_words=templates.CHOICE_LETTERS),
    # The evaluation suite.
    PaperDataset('cb', 'super_glue/cb:1.0.2', _TRAIN_DEV_TEST, 'validation', CLASSIFICATION,
                 # TFDS order: entailment, contradiction, neutral.
                 _inference(templates.three_way_inference, ('True', 'False', 'Neither')),
                 label_words=templates.THREE_WAY_LABELS),
    PaperDataset('wic', 'super_glue/wic:1.0.2', _TRAIN_DEV_TEST, 'validation', CLASSIFICATION,
                 lambda vocabulary, k, length: preprocessors.word_in_context_render(
                     ('False', 'True')),
                 label_words=templates.BINARY_LABELS),
    PaperDataset('triviaqa', 'trivia_qa/rc.nocontext:1.1.0', _TRAIN_DEV_TEST, 'validation',
                 QA, lambda vocabulary, k, length: preprocessors.question_answering_render(
                     lambda ex: ex['question'], _triviaqa_answers)),
    PaperDataset('webquestions', 'web_questions:1.0.0', _TRAIN_TEST, 'test', QA,
                 lambda vocabulary, k, length: preprocessors.question_answering_render(
                     lambda ex: ex['question'], lambda ex: ex['answers'])),
    PaperDataset('wmt16_ende', 'wmt16_translate/de-en:1.0.0', _TRAIN_DEV_TEST, 'test',
                 TRANSLATION, _translation('en', 'de', 'English', 'German')),
    PaperDataset('wmt16_enro', 'wmt16_translate/ro-en:1.0.0', _TRAIN_DEV_TEST, 'test',
                 TRANSLATION, _translation('en', 'ro', 'English', 'Romanian')),
    PaperDataset('xsum', 'xsum:1.1.0', _TRAIN_DEV_TEST, 'test', SUMMARIZATION,
                 _summarization('document', 'summary')),
    PaperDataset('wikilingua_en', 'gem/wiki_lingua_english_en:1.1.0', _TRAIN_DEV_TEST, 'test',
                 SUMMARIZATION, _summarization('source', 'target')),
]}

FINETUNE_DATASETS = ('rte', 'wmt14_enfr', 'snli', 'openbookqa')
EVAL_DATASETS = ('cb', 'wic', 'triviaqa', 'webquestions', 'wmt16_ende', 'wmt16_enro', 'xsum',
                 'wikilingua_en')
MULTITASK_DATASETS = ('rte', 'wmt14_enfr')


def task_name(stem: str, num_shots: int = 0, prefix: str = DEFAULT_PREFIX) -> str:
  """`{prefix}{stem}` at 0 shots, `{prefix}{stem}_{k}shot` otherwise."""
  return f'{prefix}{stem}' if num_shots == 0 else f'{prefix}{stem}_{num_shots}shot'


def eval_mixture_name(num_shots: int, prefix: str = DEFAULT_PREFIX) -> str:
  """`{prefix}paper_{k}shot_eval`: the eight evaluation tasks at k shots."""
  return f'{prefix}paper_{num_shots}shot_eval'


def multitask_mixture_name(num_shots: int = 0, prefix: str = DEFAULT_PREFIX) -> str:
  """`{prefix}paper_multitask` (0-shot) or `{prefix}paper_multitask_{k}shot`: RTE + En-Fr."""
  return f'{prefix}paper_multitask' + ('' if num_shots == 0 else f'_{num_shots}shot')


def postprocessor(family: str) -> Callable[..., object]:
  """The family's seqio postprocessor, cutting at the second `templates.DEMONSTRATION_PREFIXES`."""
  return functools.partial(_FAMILY_POSTPROCESSOR[family],
                           prefixes=templates.DEMONSTRATION_PREFIXES,
                           occurrence=PREFIX_OCCURRENCE)


def tfds_source(dataset: PaperDataset, tfds_data_dir: str | None = None) -> seqio.TfdsDataSource:
  """The dataset's TFDS source: its TFDS splits plus `eval` -> the scored split."""
  splits = {s: s for s in dataset.tfds_splits}
  splits[EVAL_SPLIT] = dataset.scored_split
  return seqio.TfdsDataSource(tfds_name=dataset.tfds_name, tfds_data_dir=tfds_data_dir,
                              splits=splits)


def register_paper_tasks(vocabulary: seqio.Vocabulary | None = None,
                         prefix: str = DEFAULT_PREFIX, *,
                         shots: Sequence[int] = SHOTS,
                         fewshot: fewshot_lib.FewshotConfig | None = None,
                         summarization_input_length: int = SUMMARIZATION_INPUT_LENGTH,
                         tfds_data_dir: str | None = None,
                         overwrite: bool = False) -> list[str]:
  """Registers the paper's tasks and mixtures under `prefix` (names: module docstring).

  Args:
    vocabulary: the model's vocabulary; default `vocab.default_vocabulary()` (mT5).
    prefix: prepended to every task and mixture name.
    shots: the shot counts to register (default 0, 1, 4); an eval mixture is
      registered per count, the multitask mixtures for 0 and 1 if given.
    fewshot: pool and seed of the demonstrations (`num_shots` is set per task;
      default `FewshotConfig()`: 1,000 of the first 10,000 train examples, seed 1234).
    summarization_input_length: summarization inputs are cut to this many tokens as a
      whole (EOS included).
    tfds_data_dir: where the prepared TFDS datasets are (default: TFDS_DATA_DIR).
    overwrite: replace tasks and mixtures already registered under these names.

  Returns:
    The registered names, tasks first.
  """
  if vocabulary is None:
    vocabulary = vocab_lib.default_vocabulary()
  if fewshot is None:
    fewshot = fewshot_lib.FewshotConfig()
  names = []
  for dataset in PAPER_DATASETS.values():
    for k in shots:
      name = task_name(dataset.stem, k, prefix)
      fewshot_lib.add_text_task(
          name, tfds_source(dataset, tfds_data_dir),
          dataset.make_render(vocabulary, k, summarization_input_length),
          vocabulary=vocabulary, fewshot=dataclasses.replace(fewshot, num_shots=k),
          metric_fns=[_FAMILY_METRIC[dataset.family]],
          postprocess_fn=postprocessor(dataset.family),
          max_input_tokens=(summarization_input_length if dataset.family == SUMMARIZATION
                            else None),
          overwrite=overwrite)
      names.append(name)

  mixtures = {eval_mixture_name(k, prefix): [task_name(s, k, prefix) for s in EVAL_DATASETS]
              for k in shots}
  for k in shots:
    if k in (0, 1):
      mixtures[multitask_mixture_name(k, prefix)] = [task_name(s, k, prefix)
                                                     for s in MULTITASK_DATASETS]
  for name, tasks in mixtures.items():
    if name in seqio.MixtureRegistry.names():
      if not overwrite:
        raise ValueError(f'Mixture {name!r} is already registered; pass overwrite=True to '
                         'replace it, or register under another prefix.')
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(t, 1.0) for t in tasks])
    names.append(name)
  return names


register_paper_tasks(vocab_lib.default_vocabulary(), DEFAULT_PREFIX, overwrite=True)
