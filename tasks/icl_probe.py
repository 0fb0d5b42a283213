"""The ICL-vs-instruction probe with the official protocol of Kotha et al.

The probe of `promot_t5x_tasks.conjugate` is our variant (a "Fill in the
blank:" instruction, plus-only arithmetic on 2..49, prompts joined by spaces,
exact match of the whole transformed query). This module renders and scores
the probe as the paper's code does, so its numbers compare with the paper's:

- Query: arithmetic "What is {a} {plus|minus|times} {b}?" with a, b uniform
  in 4..20 and the operation uniform; or a bare sentence whose first word is
  replaced by underscores of that word's length ("___ dog sleeps under the
  table.").
- Prompt: the in-context instruction ("Capitalize every character." /
  "Repeat the input."), a blank line, two demonstrations
  "Input: ...\\nOutput: ..." separated by blank lines, a blank line, then
  "Input: <query>\\nOutput:".
- 100 prompts per (task pair, language), fixed seed; greedy decoding with at
  most 10 new tokens (gin/eval/icl_probe_official.gin).
- Score (`starts_with_icl_answer`): the output starts with the in-context
  answer applied to the query's first word ("WHAT" / "What", or the
  underscores), with or without one leading space. The stricter score of our
  variant is kept beside it (`exact_match_icl_answer`: the output, cut at the
  next input marker or blank line, whitespace collapsed, is the whole
  in-context answer; under a 10-token budget only short answers can match).

Task pairs: (capitalize, math), (repeat, math), (capitalize, blank),
(repeat, blank). Renderings: English, French, Spanish, Dutch, Hungarian
(instructions and markers from `data/conjugate/probe.json`, arithmetic from
`probe_official.json`, sentences from the parallel pool
`probe_sentences.tsv`), Leetspeak and Pig Latin (every piece of the English
prompt encoded; the in-context task acts on the encoded text; a blanked
sentence is encoded first, then its first word blanked). Prompt i draws the
same sentences, operation and numbers in every rendering.

Names: `{prefix}_icl_probe_official_{capitalize|repeat}_{math|blank}`
(English), `<that>__<transform>` for the others (so `register_conjugate`
finds them), mixtures `{prefix}_icl_probe_official[__<transform>]`.
Split: `validation`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import seqio
from promot_t5x_tasks import conjugate as nl
from promot_t5x_tasks import vocab as vocab_lib

from promot_t5x import conjugate

TASK_PAIRS = (('capitalize', 'math'), ('repeat', 'math'), ('capitalize', 'blank'),
              ('repeat', 'blank'))
QUERY_KINDS = ('math', 'blank')
OPERATIONS = ('plus', 'minus', 'times')
OPERAND_RANGE = (4, 20)  # inclusive
NUM_PROMPTS = 100
SEED = 0
SPLIT = 'validation'
DEFAULT_PREFIX = 'promot'
_ICL_ANSWER = {'capitalize': str.upper, 'repeat': str}
_RESULT = {'plus': lambda a, b: a + b, 'minus': lambda a, b: a - b, 'times': lambda a, b: a * b}


@functools.cache
def load_arithmetic_templates() -> dict[str, dict[str, str]]:
  """{language: {'plus' | 'minus' | 'times': template with {a} and {b}}}."""
  path = nl.DATA_DIR / 'probe_official.json'
  data = json.loads(path.read_text(encoding='utf-8'))
  for language in nl.PROBE_LANGUAGES:
    if set(data.get(language, {})) != set(OPERATIONS):
      raise ValueError(f'{path}: {language!r} must have exactly the templates {OPERATIONS}.')
  return data


def blank_first_word(sentence: str) -> tuple[str, str]:
  """(sentence with its first word replaced by underscores of its length, the word).

  'The dog sleeps.' -> ('___ dog sleeps.', 'The').
  """
  word, sep, rest = sentence.partition(' ')
  if not sep:
    raise ValueError(f'A blank query needs a sentence of two or more words, got {sentence!r}.')
  return '_' * len(word) + ' ' + rest, word


def render_prompt(instruction: str, demonstrations: Sequence[tuple[str, str]], query: str,
                  input_marker: str = 'Input:', output_marker: str = 'Output:') -> str:
  """Instruction, blank line, demonstrations separated by blank lines, blank line, query.

  render_prompt('Repeat the input.', [('a b', 'a b')], 'c d') ==
      'Repeat the input.\\n\\nInput: a b\\nOutput: a b\\n\\nInput: c d\\nOutput:'
  """
  blocks = [instruction]
  blocks += [f'{input_marker} {x}\n{output_marker} {y}' for x, y in demonstrations]
  blocks.append(f'{input_marker} {query}\n{output_marker}')
  return '\n\n'.join(blocks)


@dataclasses.dataclass(frozen=True)
class OfficialProbeExample:
  """One prompt of the official probe.

  Attributes:
    inputs: the prompt.
    targets: the in-context answer on the whole query (the exact-match target).
    first_word_answer: the in-context answer on the query's first word, what
      the official score looks for at the start of the output.
    instruction_answer: what answering the query gives (the arithmetic result
      or the blanked word), for reading outputs.
    query_kind: 'math' or 'blank'.
  """

  inputs: str
  targets: str
  first_word_answer: str
  instruction_answer: str
  query_kind: str


def official_probe_examples(icl_task: str, query_kind: str, rendering: str = 'english',
                            num_prompts: int = NUM_PROMPTS, seed: int = SEED
                            ) -> list[OfficialProbeExample]:
  """The probe's prompts for one (task pair, rendering); parallel across renderings.

  Args:
    icl_task: 'capitalize' or 'repeat'.
    query_kind: 'math' or 'blank'.
    rendering: one of `promot_t5x_tasks.conjugate.PROBE_RENDERINGS`.
    num_prompts: the paper's 100.
    seed: fixes sentences, operations and operands (not the rendering).
  """
  if icl_task not in _ICL_ANSWER:
    raise ValueError(f'Unknown in-context task {icl_task!r}; one of {tuple(_ICL_ANSWER)}.')
  if query_kind not in QUERY_KINDS:
    raise ValueError(f'Unknown query kind {query_kind!r}; one of {QUERY_KINDS}.')
  if num_prompts <= 0:
    raise ValueError(f'num_prompts must be positive, got {num_prompts}.')
  transform = nl.transform_of_rendering(rendering)  # Validates the name.
  language = rendering if rendering in nl.PROBE_LANGUAGES else 'english'
  encode = (conjugate.get_transform(transform).apply_to_input if rendering in nl.ENCODINGS
            else str)
  sentences = nl.load_sentence_pool()[language]
  words = nl.load_probe_scaffolding()[language]
  arithmetic = load_arithmetic_templates()[language]
  apply = _ICL_ANSWER[icl_task]
  rng = random.Random(f'official:{seed}:{icl_task}:{query_kind}')
  examples = []
  for _ in range(num_prompts):
    first, second, query_index = rng.sample(range(len(sentences)), 3)
    operation = rng.choice(OPERATIONS)
    a, b = rng.randint(*OPERAND_RANGE), rng.randint(*OPERAND_RANGE)
    if query_kind == 'math':
      query = encode(arithmetic[operation].format(a=a, b=b))
      instruction_answer = str(_RESULT[operation](a, b))
    else:
      query, instruction_answer = blank_first_word(encode(sentences[query_index]))
    demonstrations = [(s, apply(s)) for s in (encode(sentences[first]), encode(sentences[second]))]
    prompt = render_prompt(encode(words[icl_task]), demonstrations, query,
                           encode(words['input']), encode(words['output']))
    examples.append(OfficialProbeExample(
        inputs=prompt, targets=apply(query), first_word_answer=apply(query.split(' ', 1)[0]),
        instruction_answer=instruction_answer, query_kind=query_kind))
  return examples


def starts_with_icl_answer(output: str, first_word_answer: str) -> bool:
  """The official score: `output` starts with the answer, with or without one leading space."""
  return output.startswith(first_word_answer) or output.startswith(' ' + first_word_answer)


def stop_marker(rendering: str) -> str:
  """The input marker of `rendering` ('Input:', 'Entrée :', '1npu7:')."""
  return nl.probe_stop_marker(rendering)


def exact_icl_output(output: str, marker: str) -> str:
  """The output as the exact-match score reads it: cut at the next input marker (any case)
  or blank line, whitespace collapsed."""
  match = re.search(re.escape(marker) + r'|\n\s*\n', output, flags=re.IGNORECASE)
  return ' '.join((output[:match.start()] if match else output).split())


def _text(value: Any) -> str:
  if hasattr(value, 'item'):
    value = value.item()
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def official_probe_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                 is_target: bool = False, *, marker: str) -> Any:
  """seqio postprocessor: predictions stay raw (the leading space matters); targets
  become {'first_word', 'in_context', 'marker'} read from the example."""
  text = _text(output)
  if not is_target:
    return text
  if example is None or 'first_word_answer' not in example:
    raise ValueError('official_probe_postprocessor needs the example (with first_word_answer) '
                     'to postprocess a target; evaluate the probe through seqio, which passes it.')
  return {'first_word': _text(example['first_word_answer']), 'in_context': ' '.join(text.split()),
          'marker': marker}


def official_probe_metric(targets: Sequence[Mapping[str, str]],
                          predictions: Sequence[str]) -> dict[str, float]:
  """seqio metric on 0-100: `starts_with_icl_answer` (official), `exact_match_icl_answer`."""
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  if not targets:
    return {'starts_with_icl_answer': 0.0, 'exact_match_icl_answer': 0.0}
  starts = [starts_with_icl_answer(p, t['first_word']) for t, p in zip(targets, predictions)]
  exact = [exact_icl_output(p, t['marker']) == t['in_context']
           for t, p in zip(targets, predictions)]
  n = len(targets)
  return {'starts_with_icl_answer': 100.0 * sum(starts) / n,
          'exact_match_icl_answer': 100.0 * sum(exact) / n}


def task_name(icl_task: str, query_kind: str, rendering: str = 'english',
              prefix: str = DEFAULT_PREFIX) -> str:
  """`{prefix}_icl_probe_official_{icl_task}_{query_kind}`, plus `__<transform>` if not English."""
  return conjugate.conjugate_name(f'{prefix}_icl_probe_official_{icl_task}_{query_kind}',
                                  nl.transform_of_rendering(rendering))


def mixture_name(rendering: str = 'english', prefix: str = DEFAULT_PREFIX) -> str:
  return conjugate.conjugate_name(f'{prefix}_icl_probe_official',
                                  nl.transform_of_rendering(rendering))


def register_official_probe_tasks(vocabulary: seqio.Vocabulary | None = None, *,
                                  prefix: str = DEFAULT_PREFIX,
                                  renderings: Sequence[str] = nl.PROBE_RENDERINGS,
                                  num_prompts: int = NUM_PROMPTS, seed: int = SEED) -> list[str]:
  """Registers the tasks and one mixture per rendering; returns the names.

  Args:
    vocabulary: the model's vocabulary; default `vocab.default_vocabulary()`.
    prefix: names start with `{prefix}_icl_probe_official`.
    renderings: some of `PROBE_RENDERINGS` ('english' is always registered:
      the others are its native conjugates).
    num_prompts: prompts per task pair and rendering.
    seed: fixes the prompts.
  """
  return nl.register_probe_family(
      vocabulary=vocabulary, renderings=renderings, pairs=TASK_PAIRS,
      task_name_fn=lambda t, q, r: task_name(t, q, r, prefix),
      mixture_name_fn=lambda r: mixture_name(r, prefix),
      examples_fn=lambda t, q, r: official_probe_examples(t, q, r, num_prompts, seed), split=SPLIT,
      num_examples=num_prompts,
      postprocessor_for=lambda r: functools.partial(official_probe_postprocessor, marker=stop_marker(r)),
      metric_fn=official_probe_metric)


register_official_probe_tasks(vocab_lib.default_vocabulary(), prefix=DEFAULT_PREFIX)
