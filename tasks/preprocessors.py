"""Rendering raw examples through the paper's templates, tokenizing, truncating.

A *render* is a function `tf.data.Dataset -> tf.data.Dataset` that turns a
data source's raw examples into `{'inputs': str, 'targets': str, ...}` with
the query rendered 0-shot by a function of `promot_t5x_tasks.templates`.
`promot_t5x_tasks.fewshot.FewshotSource` applies a render to the evaluated
split and to the train-split pool the demonstrations come from, so one render
serves 0-shot and k-shot tasks alike. The render factories below cover the
paper's families; a new family needs only a new template function and a
render built with `render_template`.

Extra features a render may add (they pass through seqio and are dropped by
the feature converter, but the evaluator and postprocessors can read them):
`answers` ([n] strings, every acceptable answer; QA families) and
`article_truncated` (bool; summarization).

Truncation (inputs longer than the task feature length):
- summarization inputs are cut to 1024 tokens as a whole, as the paper does
  (`text_to_text_preprocessors(max_input_tokens=...)`, `cut_inputs`): a k-shot
  input keeps its end (the query), a 0-shot one its start. Cutting each
  article to a per-shot budget instead (`summarization_render(max_article_tokens=...)`,
  sized by `article_token_budget`) is still available for other uses;
- k-shot inputs that are still too long lose their *beginning*
  (`trim_inputs_from_left`): the oldest demonstration goes first, the query is
  kept; 0-shot inputs are cut at the end by seqio's usual trim;
- `count_long_inputs` counts, for a task and split, how many tokenized
  examples exceed given feature lengths (and how many articles were cut), so
  an evaluation can report how much it truncated.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf
from promot_t5x_tasks import templates

Render = Callable[[tf.data.Dataset], tf.data.Dataset]
AUTOTUNE = tf.data.AUTOTUNE

# Placeholders that stand for tensors while a template function runs on Python
# strings; NUL never occurs in the templates' literal text.
_PLACEHOLDER = '\x00{}\x00'
_PLACEHOLDER_RE = re.compile('\x00(\\d+)\x00')


def render_template(template_fn: Callable[..., str], *args: Any) -> tf.Tensor:
  """Applies a Python string template to scalar tf.string tensors, in graph.

  The template function runs once on placeholders; its literal text and the
  tensors are then joined with `tf.strings.join`. The result is therefore
  exactly what `template_fn` returns on the tensors' values, and the template
  text has a single source: `promot_t5x_tasks.templates`.

  Args:
    template_fn: a function of `len(args)` strings that inserts each argument
      verbatim (as every function in `templates` does).
    *args: scalar tf.string tensors (or Python strings).

  Returns:
    A scalar tf.string tensor.
  """
  text = template_fn(*[_PLACEHOLDER.format(i) for i in range(len(args))])
  pieces = _PLACEHOLDER_RE.split(text)
  used = {int(i) for i in pieces[1::2]}
  if used != set(range(len(args))):
    raise ValueError(
        f'Template {getattr(template_fn, "__name__", template_fn)!r} did not insert '
        f'arguments {sorted(set(range(len(args))) - used)} verbatim; render_template '
        'needs a template that inserts each argument unchanged.')
  parts = []
  for position, piece in enumerate(pieces):
    if position % 2:
      parts.append(tf.convert_to_tensor(args[int(piece)], tf.string))
    elif piece:
      parts.append(tf.constant(piece))
  if not parts:
    return tf.constant('')
  return tf.strings.join(parts)


# ----------------------------------------------------------------------------
# Renders, one factory per template family.
# ----------------------------------------------------------------------------


def _labelled(dataset: tf.data.Dataset, label_key: str) -> tf.data.Dataset:
  # Unlabelled splits (SuperGLUE test) and SNLI's no-consensus pairs carry -1.
  @tf.autograph.experimental.do_not_convert
  def has_label(ex):
    return ex[label_key] >= 0
  return dataset.filter(has_label)


def inference_render(template_fn: Callable[[str, str], str], label_words: Sequence[str],
                     premise_key: str = 'premise', hypothesis_key: str = 'hypothesis',
                     label_key: str = 'label') -> Render:
  """RTE / CB / SNLI: `template_fn(premise, hypothesis)` -> `label_words[label]`.

  Args:
    template_fn: `templates.binary_inference` or `templates.three_way_inference`.
    label_words: target word per integer label, in the dataset's label order
      (RTE: ('True', 'False') for entailment, not_entailment).
    premise_key, hypothesis_key, label_key: raw feature names.
  """
  words = tf.constant(list(label_words))

  def render(dataset: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert
    def one(ex):
      return {'inputs': render_template(template_fn, ex[premise_key], ex[hypothesis_key]),
              'targets': tf.gather(words, ex[label_key])}
    return _labelled(dataset, label_key).map(one, num_parallel_calls=AUTOTUNE)
  return render


def word_in_context_render(label_words: Sequence[str] = ('False', 'True')) -> Render:
  """WiC (super_glue/wic: label 0 = 'False', 1 = 'True')."""
  words = tf.constant(list(label_words))

  def render(dataset: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert
    def one(ex):
      return {'inputs': render_template(templates.word_in_context, ex['sentence1'],
                                        ex['sentence2'], ex['word']),
              'targets': tf.gather(words, ex['label'])}
    return _labelled(dataset, 'label').map(one, num_parallel_calls=AUTOTUNE)
  return render


def question_answering_render(question_fn: Callable[[dict], tf.Tensor],
                              answers_fn: Callable[[dict], tf.Tensor]) -> Render:
  """Closed-book QA: `Q: [question] A:` -> the first answer.

  Args:
    question_fn: raw example -> scalar tf.string question.
    answers_fn: raw example -> [n] tf.string acceptable answers; the first is
      the training target and the demonstration answer, all of them count for
      exact match (kept as the `answers` feature). Examples without an answer
      are dropped.
  """
  def render(dataset: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert
    def one(ex):
      answers = tf.reshape(answers_fn(ex), [-1])
      return {'inputs': render_template(templates.question_answering, question_fn(ex)),
              'targets': answers[0], 'answers': answers}
    @tf.autograph.experimental.do_not_convert
    def has_answer(ex):
      return tf.size(answers_fn(ex)) > 0
    dataset = dataset.filter(has_answer)
    return dataset.map(one, num_parallel_calls=AUTOTUNE)
  return render


def multiple_choice_render(stem_fn: Callable[[dict], tf.Tensor],
                           choices_fn: Callable[[dict], Sequence[tf.Tensor]],
                           answer_index_fn: Callable[[dict], tf.Tensor]) -> Render:
  """OpenbookQA as the paper has it: `Q: [stem] A) [c1] B) [c2] C) [c3] D) [c4] A:` -> the letter.

  The target is the correct choice's letter (`templates.CHOICE_LETTERS`),
  scored by accuracy on the first output word, like a classification task.
  """
  letters = tf.constant(list(templates.CHOICE_LETTERS))

  def render(dataset: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert
    def one(ex):
      choices = list(choices_fn(ex))
      question = render_template(
          lambda stem, *c: templates.multiple_choice_question(stem, c), stem_fn(ex), *choices)
      return {'inputs': render_template(templates.question_answering, question),
              'targets': tf.gather(letters, answer_index_fn(ex))}
    return dataset.map(one, num_parallel_calls=AUTOTUNE)
  return render


def translation_render(source_key: str, target_key: str, source_language: str,
                       target_language: str) -> Render:
  """`Translate [source language] to [target language]: [sentence]` -> the translation."""
  def render(dataset: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert
    def one(ex):
      return {'inputs': render_template(templates.translation, tf.constant(source_language),
                                        tf.constant(target_language), ex[source_key]),
              'targets': ex[target_key]}
    return dataset.map(one, num_parallel_calls=AUTOTUNE)
  return render


def article_token_budget(input_length: int, num_shots: int, template_tokens: int = 16,
                         summary_tokens: int = 64) -> int:
  """Tokens each article may keep so a k-shot summarization input fits `input_length`.

  The input holds k+1 articles, k demonstration summaries and k+1 copies of
  the template's text; with EOS it must fit `input_length` tokens:
  `(input_length - 1 - (k+1) * template_tokens - k * summary_tokens) // (k+1)`.
  With the paper's 1024: 1007 tokens 0-shot, 463 1-shot, 137 4-shot. Longer
  demonstration summaries are rare; what still overflows is trimmed from the
  left and counted (`count_long_inputs`).
  """
  budget = (input_length - 1 - (num_shots + 1) * template_tokens
            - num_shots * summary_tokens) // (num_shots + 1)
  if budget <= 0:
    raise ValueError(f'An input length of {input_length} tokens leaves no room for the '
                     f'articles of a {num_shots}-shot summarization input; raise it.')
  return budget


def summarization_render(article_key: str, summary_key: str,
                         vocabulary: seqio.Vocabulary | None = None,
                         max_article_tokens: int | None = None) -> Render:
  """`Article: [article] One sentence summary:` -> the summary.

  Args:
    article_key, summary_key: raw feature names.
    vocabulary: the task's vocabulary; needed when `max_article_tokens` is set.
    max_article_tokens: cut every article to this many tokens of `vocabulary`
      (decoding the kept tokens back to text), so the template's suffix is
      never truncated away. None keeps articles whole.
  """
  if max_article_tokens is not None and vocabulary is None:
    raise ValueError('summarization_render needs the vocabulary to cut articles to '
                     'max_article_tokens tokens.')

  def cut(article):
    tokens = vocabulary.encode_tf(article)
    too_long = tf.size(tokens) > max_article_tokens
    article = tf.cond(too_long, lambda: vocabulary.decode_tf(tokens[:max_article_tokens]),
                      lambda: article)
    return article, too_long

  def render(dataset: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert
    def one(ex):
      article = ex[article_key]
      truncated = tf.constant(False)
      if max_article_tokens is not None:
        article, truncated = cut(article)
      return {'inputs': render_template(templates.summarization, article),
              'targets': ex[summary_key], 'article_truncated': truncated}
    return dataset.map(one, num_parallel_calls=AUTOTUNE)
  return render


# ----------------------------------------------------------------------------
# Tokenization and truncation.
# ----------------------------------------------------------------------------


def trim_inputs_from_left(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                          sequence_length: Mapping[str, int] | None = None) -> tf.data.Dataset:
  """Keeps the *last* tokens of `inputs` that fit `sequence_length['inputs']` (EOS included).

  A seqio preprocessor for k-shot tasks, placed between tokenization and
  `seqio.preprocessors.append_eos_after_trim`: the query and its instruction
  are at the end of a k-shot input, the oldest demonstration at the start.
  Without a sequence length (e.g. `count_long_inputs`) nothing is cut.
  """
  if not sequence_length or sequence_length.get('inputs') is None:
    return dataset
  keep = sequence_length['inputs'] - (1 if output_features['inputs'].add_eos else 0)
  if keep <= 0:
    raise ValueError(f"sequence_length['inputs']={sequence_length['inputs']} leaves no room "
                     'for input tokens.')

  @tf.autograph.experimental.do_not_convert
  def one(ex):
    ex = dict(ex)
    ex['inputs'] = ex['inputs'][-keep:]
    return ex
  return dataset.map(one, num_parallel_calls=AUTOTUNE)


def cut_inputs(dataset: tf.data.Dataset, max_tokens: int, keep_end: bool) -> tf.data.Dataset:
  """Cuts every tokenized `inputs` (EOS not yet added) to `max_tokens - 1` tokens, EOS's room left.

  The paper's summarization inputs are cut to 1024 tokens as a whole,
  whatever the feature length: `keep_end` keeps the last tokens (k-shot: the
  query and its template), else the first (0-shot: the article's start).
  """
  keep = max_tokens - 1
  if keep <= 0:
    raise ValueError(f'max_input_tokens={max_tokens} leaves no room for input tokens.')

  @tf.autograph.experimental.do_not_convert
  def one(ex):
    ex = dict(ex)
    ex['inputs'] = ex['inputs'][-keep:] if keep_end else ex['inputs'][:keep]
    return ex
  return dataset.map(one, num_parallel_calls=AUTOTUNE)


def text_to_text_preprocessors(num_shots: int, max_input_tokens: int | None = None
                               ) -> list[Callable[..., tf.data.Dataset]]:
  """The task preprocessors after a render: tokenize, trim, append EOS.

  `inputs_pretokenized` / `targets_pretokenized` keep the rendered text (the
  evaluator reads targets from them). k-shot tasks trim from the left.
  `max_input_tokens` (summarization: 1024) cuts every input to that many
  tokens (EOS included) before the feature-length trim (`cut_inputs`).
  """
  steps = [seqio.preprocessors.tokenize]
  if max_input_tokens is not None:
    steps.append(functools.partial(cut_inputs, max_tokens=max_input_tokens,
                                   keep_end=num_shots > 0))
  if num_shots > 0:
    steps.append(trim_inputs_from_left)
  steps.append(seqio.preprocessors.append_eos_after_trim)
  return steps


@dataclasses.dataclass(frozen=True)
class LengthReport:
  """How many tokenized examples of a task/split exceed the feature lengths."""

  task: str
  split: str
  num_examples: int
  feature_lengths: Mapping[str, int]
  num_over_length: Mapping[str, int]  # feature -> examples longer than its length (EOS included)
  num_articles_cut: int  # summarization queries whose article was cut to the token budget

  def fraction_over_length(self, feature: str = 'inputs') -> float:
    """In [0, 1]; 0.0 for an empty split."""
    return self.num_over_length[feature] / self.num_examples if self.num_examples else 0.0


def count_long_inputs(task: str | seqio.Task, split: str, feature_lengths: Mapping[str, int],
                      max_examples: int | None = None) -> LengthReport:
  """Counts examples whose tokenized features exceed `feature_lengths`.

  The task's dataset is read without trimming (EOS appended, deterministic
  order), so a count is what `trim_output_features` / `trim_inputs_from_left`
  would cut at these lengths.

  Args:
    task: a seqio Task or its registered name.
    split: the split to read.
    feature_lengths: e.g. {'inputs': 1024, 'targets': 128}.
    max_examples: read at most this many examples (None: the whole split).
  """
  task_obj = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
  if not isinstance(task_obj, seqio.Task):
    raise ValueError(f'count_long_inputs works on one task; {task!r} is a mixture. '
                     'Call it for each of its tasks.')
  dataset = task_obj.get_dataset(sequence_length=None, split=split, shuffle=False,
                                 trim_output_features=False, try_in_mem_cache=False)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  over = {name: 0 for name in feature_lengths}
  num_examples = articles_cut = 0
  for ex in dataset.as_numpy_iterator():
    num_examples += 1
    for name, length in feature_lengths.items():
      over[name] += int(len(ex[name]) > length)
    articles_cut += int(bool(ex.get('article_truncated', False)))
  return LengthReport(task=task_obj.name, split=split, num_examples=num_examples,
                      feature_lengths=dict(feature_lengths), num_over_length=over,
                      num_articles_cut=articles_cut)
