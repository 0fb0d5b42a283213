"""Sentinel-format prompting: mT5 asked in its span-corruption style (the paper's appendix B.2).

mT5 was pretrained only on span corruption: an input with sentinels
(`<extra_id_0>`, `<extra_id_1>`, ...) where spans were removed, and a target
that lists the removed spans, each after its sentinel:

  input:  `Thank you <extra_id_0> me to your party <extra_id_1> week.`
  target: `<extra_id_0> for inviting <extra_id_1> last <extra_id_2>`

The paper prompts a pretrained mT5 the same way: the input ends with
`<extra_id_0>`, so the answer is "the missing span", and the answer is read
as the text between `<extra_id_0>` and `<extra_id_1>` of the output.
Fine-tuning targets take the same form (`<extra_id_0> True <extra_id_1>`), so
a fine-tuned model and the pretrained one are asked and read alike.

The format is applied to tokenized examples (after the task has trimmed them
to the feature lengths), so it serves every task without touching its
registration, and the sentinels are always kept:

  * inputs:  `tokens... <extra_id_0> EOS`; an input that filled its length
    loses its first token(s) (a k-shot input's oldest demonstration; the query
    at the end is kept);
  * targets: `<extra_id_0> tokens... <extra_id_1> EOS`, cut at the end to fit.

One switch turns it on everywhere (`SENTINEL_FORMAT = True` in the paper's
gins): `data.DatasetConfig.sentinel_format` for training,
`evaluation.EvalSettings.sentinel_format` for evaluation (which also decodes
with `decode` and reads the answer with `span` before the task's
postprocessor). The vocabulary must have sentinels (seqio's `extra_ids`,
100 for mT5); `sentinel_ids` says so clearly when it has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

SENTINEL_0 = '<extra_id_0>'
SENTINEL_1 = '<extra_id_1>'
_SENTINEL = re.compile(r'<extra_id_(\d+)>')


def sentinel_id(vocabulary: Any, index: int) -> int:
  """The id of `<extra_id_{index}>` in a seqio vocabulary (seqio numbers them from the top).

  Raises:
    ValueError: the vocabulary has no such sentinel (no `extra_ids`).
  """
  extra_ids = int(getattr(vocabulary, 'extra_ids', 0) or 0)
  if index >= extra_ids:
    raise ValueError(
        f'Sentinel-format prompting needs the sentinel <extra_id_{index}>, but the vocabulary '
        f'{vocabulary!r} has {extra_ids} extra ids. Use a vocabulary with sentinels (mT5: '
        'seqio.SentencePieceVocabulary(..., extra_ids=100)) or set SENTINEL_FORMAT = False.')
  return int(vocabulary.vocab_size) - 1 - index


def sentinel_ids(vocabulary: Any) -> tuple[int, int]:
  """(`<extra_id_0>`, `<extra_id_1>`) ids of `vocabulary`."""
  return sentinel_id(vocabulary, 0), sentinel_id(vocabulary, 1)


def format_inputs(tokens: Any, sentinel0: int, eos_id: int, length: int) -> Any:
  """`[n]` tokens (EOS-terminated or not) -> `tokens <extra_id_0> EOS`, at most `length` long.

  A tf function on one example; tokens beyond the length go from the start.
  """
  import tensorflow as tf

  if length < 3:
    raise ValueError(f'An input length of {length} leaves no room for tokens, <extra_id_0> '
                     'and EOS; raise TASK_FEATURE_LENGTHS["inputs"].')
  tokens = tf.convert_to_tensor(tokens)
  body = _without_eos(tokens, eos_id)
  body = body[tf.maximum(tf.size(body) - (length - 2), 0):]
  return tf.concat([body, tf.constant([sentinel0, eos_id], tokens.dtype)], axis=0)


def format_targets(tokens: Any, sentinel0: int, sentinel1: int, eos_id: int, length: int) -> Any:
  """`[n]` tokens -> `<extra_id_0> tokens <extra_id_1> EOS`, cut at the end to `length`."""
  import tensorflow as tf

  if length < 4:
    raise ValueError(f'A target length of {length} leaves no room for <extra_id_0>, a token, '
                     '<extra_id_1> and EOS; raise TASK_FEATURE_LENGTHS["targets"].')
  tokens = tf.convert_to_tensor(tokens)
  body = _without_eos(tokens, eos_id)[:length - 3]
  return tf.concat([tf.constant([sentinel0], tokens.dtype), body,
                    tf.constant([sentinel1, eos_id], tokens.dtype)], axis=0)


def _without_eos(tokens: Any, eos_id: int) -> Any:
  import tensorflow as tf

  ends_with_eos = tf.reduce_any(tf.equal(tokens[-1:], eos_id))  # False for no tokens
  return tf.cond(ends_with_eos, lambda: tokens[:-1], lambda: tokens)


def format_dataset(dataset: Any, output_features: Mapping[str, Any],
                   task_feature_lengths: Mapping[str, int]) -> Any:
  """Puts tokenized seqio examples (`inputs`, `targets`) into sentinel format.

  Args:
    dataset: a task's or mixture's tokenized, trimmed examples.
    output_features: the task's features (their vocabulary gives the sentinels).
    task_feature_lengths: {'inputs': n, 'targets': m}, the lengths to fit.

  Returns:
    The dataset with both features in sentinel format (other features untouched).
  """
  import tensorflow as tf

  ids = {}
  for key in ('inputs', 'targets'):
    vocabulary = output_features[key].vocabulary
    ids[key] = (*sentinel_ids(vocabulary), int(vocabulary.eos_id))
  s0_in, _, eos_in = ids['inputs']
  s0, s1, eos = ids['targets']
  input_length = int(task_feature_lengths['inputs'])
  target_length = int(task_feature_lengths['targets'])
  format_inputs(tf.constant([eos_in]), s0_in, eos_in, input_length)  # checks the lengths early
  format_targets(tf.constant([eos]), s0, s1, eos, target_length)

  @tf.autograph.experimental.do_not_convert
  def one(ex):
    ex = dict(ex)
    ex['inputs'] = format_inputs(ex['inputs'], s0_in, eos_in, input_length)
    ex['targets'] = format_targets(ex['targets'], s0, s1, eos, target_length)
    return ex
  return dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE)


def decode(vocabulary: Any, ids: Iterable[int]) -> str:
  """Token ids -> text with every sentinel id written as `<extra_id_N>` (never "⁇").

  Reads up to the first EOS; padding and ids beyond the vocabulary are
  dropped. The pieces between sentinels are decoded by the vocabulary.
  """
  eos_id = int(vocabulary.eos_id)
  size = int(vocabulary.vocab_size)
  first_sentinel = size - int(getattr(vocabulary, 'extra_ids', 0) or 0)
  parts: list[str] = []
  run: list[int] = []

  def flush():
    if run:
      text = vocabulary.decode(run).strip()
      if text:
        parts.append(text)
      run.clear()

  for token in ids:
    token = int(token)
    if token == eos_id:
      break
    if token == 0 or token >= size:
      continue
    if token >= first_sentinel:
      flush()
      parts.append(f'<extra_id_{size - 1 - token}>')
    else:
      run.append(token)
  flush()
  return ' '.join(parts)


def span(text: str) -> str:
  """The answer in a sentinel-format output: the text after `<extra_id_0>`, up to the next sentinel.

  `'<extra_id_0> True <extra_id_1> False'` -> `'True'`. Without `<extra_id_0>`
  the text from its start is read; without a closing sentinel, to its end.
  """
  start = text.find(SENTINEL_0)
  rest = text[start + len(SENTINEL_0):] if start >= 0 else text
  end = _SENTINEL.search(rest)
  return (rest[:end.start()] if end else rest).strip()
