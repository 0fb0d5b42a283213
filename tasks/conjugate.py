"""Conjugate transforms of the natural-language prompts, and the ICL-vs-instruction probe.

Importing this module registers, in `promot_t5x.conjugate`'s registry:

- `french`, `spanish`, `dutch`, `hungarian`: template scaffolding and label
  words translated in the input, label words in the target; the inverse maps
  a leading label word and the demonstration prefixes back to English.
  Invertible.
- `leetspeak`: a e i o s t -> 4 3 1 0 5 7 (both cases) in input and target;
  best-effort inverse (`from_leetspeak`). Not invertible.
- `pig_latin`: word-level Pig Latin (`to_pig_latin`) in input and target;
  best-effort inverse, exact on a lexicon (`from_pig_latin`). Not invertible.

and the probe tasks of Kotha et al. (below) with mT5's vocabulary under the
prefix `promot` (`register_probe_tasks` registers them with another).

Translation: what is and is not translated. The transform rewrites the
paper's template scaffolding (tasks/templates.py: `question:`, `Is it true or
false? answer:`, the WiC sentence, `Q:`/`A:`, `Translate X to Y:`,
`Article:`/`One sentence summary:`, OpenbookQA's `Options:`) and the label
words after `answer:` (in demonstrations) and in targets, from the data files
`data/conjugate/templates_<language>.json`. The *content* of TFDS examples
(premises, questions, articles) cannot be machine-translated offline, so it
stays English unless a `content_table` {English text: translation} is given
(exact matches of whole strings are replaced). A "French" RTE prompt is
therefore a French frame around English sentences: a weaker move away from
the fine-tuning distribution than the paper's fully translated prompts. The
probe below has no such gap: its sentences ship with translations.

The probe (Kotha, Springer, Raghunathan, "Understanding Catastrophic
Forgetting in Language Models via Implicit Inference"): two demonstrations
of a simple text task, then a query that is itself an instruction:

  Capitalize every character. Input: The dog sleeps under the table. Output:
  THE DOG SLEEPS UNDER THE TABLE. Input: ... Output: ... Input: What is 12
  plus 7? Output:

The output follows the in-context task when it is the capitalized (or, for
"Repeat the input.", the repeated) query; answering `19` follows the
instruction instead. Tasks: {capitalize, repeat} x {arithmetic, blank}
(`Fill in the blank: ___ dog sleeps under the table.`, whose instruction
answer is the blanked first word), 100 prompts each with a fixed seed, in
English, French, Spanish, Dutch, Hungarian (rendered from the parallel
sentence pool `data/conjugate/probe_sentences.tsv`, 200 short sentences we
wrote, and `probe.json`) and in Leetspeak and Pig Latin (every piece of the
English prompt encoded, the in-context task acting on the encoded text).
Prompt i draws the same sentences and numbers in every rendering. Encoded
renderings are scored in the encoded space: the target is the in-context
answer on the encoded query.

Names: `{prefix}_icl_probe_{capitalize|repeat}_{arithmetic|blank}` (English)
and `<that>__<transform>` for the others, so `register_conjugate(name,
'french')` finds them; mixtures `{prefix}_icl_probe` and
`{prefix}_icl_probe__<transform>`. Split: `validation`. Metric:
`follows_in_context_task` (0-100) and `answered_instruction` (0-100).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf
from promot_t5x_tasks import templates
from promot_t5x_tasks import vocab as vocab_lib

from promot_t5x import conjugate

DATA_DIR = pathlib.Path(__file__).resolve().parent / 'data' / 'conjugate'
LANGUAGES = ('french', 'spanish', 'dutch', 'hungarian')
ENCODINGS = ('leetspeak', 'pig_latin')

# ----------------------------------------------------------------------------
# Translation of the templates.
# ----------------------------------------------------------------------------

# The English scaffolding of tasks/templates.py, as regular expressions over
# rendered text (demonstrations included). Keys match the data files'.
_ENGLISH_SCAFFOLDING = {
    'three_way_answer': r' Is it true or false or neither\? answer:',
    'binary_answer': r' Is it true or false\? answer:',
    'word_in_context': r'The word (?P<word>.+?) is used in the same way in the two sentences\.',
    'question': r' question: ',
    'qa_question': r'(?<!\S)Q: ',
    'qa_answer': r' A:(?=\s|$)',
    'options': r' Options: ',
    'translation': r'(?<!\S)Translate (?P<source>[^\s:]+) to (?P<target>[^\s:]+):',
    'article': r'(?<!\S)Article: ',
    'summary': r' One sentence summary:',
}
_ENGLISH_LABELS = tuple(dict.fromkeys(templates.BINARY_LABELS + templates.THREE_WAY_LABELS))
# A label word right after an answer marker: the answer of a demonstration.
_DEMONSTRATION_LABEL = (r'(?<=answer:) (?P<label>' + '|'.join(_ENGLISH_LABELS)
                        + r')(?=[\s.,;:!?]|$)')
_PLACEHOLDERS = {'word_in_context': ('{word}',), 'translation': ('{source}', '{target}')}


@dataclasses.dataclass(frozen=True)
class TemplateTranslation:
  """The paper's templates in one language (a `templates_<language>.json` file).

  Attributes:
    language: 'French', ...
    transform: the registry name ('french').
    labels: English label word -> translation ('True' -> 'Vrai').
    scaffolding: key of `_ENGLISH_SCAFFOLDING` -> translated text (with
      `{word}`, `{source}`, `{target}` where the English has them).
    language_names: English language name -> {'source': 'de l'anglais',
      'target': 'en anglais'}: the forms that fill `translation`.
    unknown_language_name: the same with `{name}` for names not listed (the
      miniature's toy languages): the English name is kept inside it.
  """

  language: str
  transform: str
  labels: Mapping[str, str]
  scaffolding: Mapping[str, str]
  language_names: Mapping[str, Mapping[str, str]]
  unknown_language_name: Mapping[str, str]

  def __post_init__(self):
    where = f'template translation {self.language!r}'
    if set(self.labels) != set(_ENGLISH_LABELS):
      raise ValueError(f'{where}: labels must translate exactly {_ENGLISH_LABELS}, got '
                       f'{sorted(self.labels)}.')
    if set(self.scaffolding) != set(_ENGLISH_SCAFFOLDING):
      raise ValueError(f'{where}: scaffolding keys must be {sorted(_ENGLISH_SCAFFOLDING)}, got '
                       f'{sorted(self.scaffolding)}.')
    for key, placeholders in _PLACEHOLDERS.items():
      for p in placeholders:
        if p not in self.scaffolding[key]:
          raise ValueError(f'{where}: scaffolding[{key!r}] must contain {p}.')
    for forms in list(self.language_names.values()) + [self.unknown_language_name]:
      if set(forms) != {'source', 'target'}:
        raise ValueError(f'{where}: language-name forms need "source" and "target", got {forms}.')
    if not all('{name}' in v for v in self.unknown_language_name.values()):
      raise ValueError(f'{where}: unknown_language_name forms must contain {{name}}.')

  def language_name(self, english_name: str, role: str) -> str:
    """The form of `english_name` as translation `role` ('source' or 'target')."""
    forms = self.language_names.get(english_name)
    if forms is None:
      return self.unknown_language_name[role].format(name=english_name)
    return forms[role]

  @functools.cached_property
  def demonstration_prefixes(self) -> dict[str, str]:
    """Translated demonstration prefix -> English (`templates.DEMONSTRATION_PREFIXES`)."""
    translation = self.scaffolding['translation']
    return {
        self.scaffolding['qa_question'].strip(): 'Q:',
        translation[:translation.index('{')].strip(): 'Translate',
        self.scaffolding['article'].strip(): 'Article:',
    }


@functools.cache
def load_template_translation(language: str) -> TemplateTranslation:
  """`data/conjugate/templates_<language>.json` (language: 'french', ...)."""
  path = DATA_DIR / f'templates_{language}.json'
  if not path.exists():
    known = sorted(p.stem.removeprefix('templates_') for p in DATA_DIR.glob('templates_*.json'))
    raise ValueError(f'No template translation for {language!r} ({path} is missing); known: '
                     f'{known}.')
  data = json.loads(path.read_text(encoding='utf-8'))
  return TemplateTranslation(**data)


def _scaffolding_regex(content_table: Mapping[str, str] | None) -> re.Pattern[str]:
  # One pass over the English text: no replacement can be matched again by a
  # later pattern (Dutch ' A:' is also the English QA marker, for instance).
  alternatives = []
  if content_table:
    keys = sorted(content_table, key=len, reverse=True)
    alternatives.append('(?P<content>' + '|'.join(re.escape(k) for k in keys) + ')')
  alternatives += [f'(?P<{key}>{pattern})' for key, pattern in _ENGLISH_SCAFFOLDING.items()]
  alternatives.append(f'(?P<demonstration_label>{_DEMONSTRATION_LABEL})')
  return re.compile('|'.join(alternatives))


_ALTERNATIVES = ('content', *_ENGLISH_SCAFFOLDING, 'demonstration_label')


def translate_prompt(text: str, translation: TemplateTranslation,
                     content_table: Mapping[str, str] | None = None) -> str:
  """The rendered English prompt with its scaffolding and label words translated.

  Content (premises, questions, articles, sentences) stays as it is, except
  exact matches of `content_table` keys.
  """
  regex = _scaffolding_regex(content_table)

  def replace(m: re.Match[str]) -> str:
    key = next(k for k in _ALTERNATIVES if k in regex.groupindex and m.group(k) is not None)
    if key == 'content':
      return content_table[m.group(0)]
    if key == 'demonstration_label':
      return ' ' + translation.labels[m.group('label')]
    out = translation.scaffolding[key]
    if key == 'word_in_context':
      return out.format(word=m.group('word'))
    if key == 'translation':
      return out.format(source=translation.language_name(m.group('source'), 'source'),
                        target=translation.language_name(m.group('target'), 'target'))
    return out

  return regex.sub(replace, text)


def translate_target(text: str, translation: TemplateTranslation) -> str:
  """A label-word target translated (' True' -> ' Vrai'); any other target unchanged."""
  word = text.strip()
  if word in translation.labels:
    return text.replace(word, translation.labels[word])
  return text


def untranslate_output(text: str, translation: TemplateTranslation) -> str:
  """Output back to the English task's conventions, for its postprocessor.

  Translated demonstration prefixes ('Q :', 'Traduisez', 'Article :') become
  the English ones, so the original postprocessor cuts at them; a translated
  label word that starts the output (any case) becomes the English label.
  Everything else is left as it is.
  """
  prefixes = translation.demonstration_prefixes
  pattern = r'(?<!\S)(?:' + '|'.join(re.escape(p) for p in prefixes) + r')(?=\s|$)'
  text = re.sub(pattern, lambda m: prefixes[m.group(0)], text)
  lead = len(text) - len(text.lstrip())
  body = text[lead:]
  for english, translated in sorted(translation.labels.items(), key=lambda kv: -len(kv[1])):
    n = len(translated)
    if body[:n].casefold() == translated.casefold() and (len(body) == n or not body[n].isalnum()):
      return text[:lead] + english + body[n:]
  return text


def translation_transform(language: str, content_table: Mapping[str, str] | None = None,
                          name: str | None = None) -> conjugate.Transform:
  """The template-translation transform for `language` ('french', ...).

  `content_table` ({English text: translated text}) also translates content
  that matches a key exactly; register such a variant under its own `name`.
  """
  t = load_template_translation(language)
  table = dict(content_table) if content_table else None
  return conjugate.Transform(
      name=name or t.transform,
      forward_input=functools.partial(translate_prompt, translation=t, content_table=table),
      forward_target=functools.partial(translate_target, translation=t),
      inverse_output=functools.partial(untranslate_output, translation=t),
      invertible=True,
      description=(f'Template scaffolding and label words in {t.language}; example content '
                   'stays English' + (' except the content table.' if table else '.')))


# ----------------------------------------------------------------------------
# Leetspeak.
# ----------------------------------------------------------------------------

# The basic leet alphabet: six letters, both cases, so that encoding commutes
# with upper-casing (the capitalization probe relies on it).
LEET_MAP = {'a': '4', 'e': '3', 'i': '1', 'o': '0', 's': '5', 't': '7'}
_LEET_TABLE = str.maketrans({**LEET_MAP, **{k.upper(): v for k, v in LEET_MAP.items()}})
_UNLEET = {v: k for k, v in LEET_MAP.items()}
_ALNUM_RUN = re.compile(r'[^\W_]+')


def to_leetspeak(text: str) -> str:
  """a e i o s t (and A E I O S T) -> 4 3 1 0 5 7; everything else unchanged."""
  return text.translate(_LEET_TABLE)


def _starts_sentence(prefix: str) -> bool:
  before = prefix.rstrip()
  return not before or before[-1] in '.!?'


def from_leetspeak(text: str) -> str:
  """Best-effort inverse of `to_leetspeak`.

  Leetspeak loses two things: the case of the six letters, and the
  difference between an original digit and an encoded letter. The inverse
  decides per run of letters and digits:
  - a run without letters is a number and stays (so '15' from 'is' stays
    '15', while '12' and '19' survive; numbers matter more in the outputs we
    score than the words a/I/is/it/to/at/as/so that encode to digits only);
  - otherwise its digits 4 3 1 0 5 7 become letters: upper case when the
    run's letters are all upper case (and there are two, or the run starts
    with a digit: '7H3' -> 'THE'; or every letter of the text is upper case:
    '7H3 C47' -> 'THE CAT'), else lower case, with a capital when the run
    starts with a digit at the start of a sentence ('7ru3' -> 'True').
  Exact for text without digits whose mapped letters are lower case except
  in all-caps words and at sentence starts, and which has no word made only
  of a, e, i, o, s, t.
  """
  text_letters = [c for c in text if c.isalpha()]
  all_caps_text = len(text_letters) > 1 and all(c.isupper() for c in text_letters)

  def decode(m: re.Match[str]) -> str:
    run = m.group(0)
    letters = [c for c in run if c.isalpha()]
    if not letters:
      return run
    upper = all_caps_text or (all(c.isupper() for c in letters)
                              and (len(letters) > 1 or run[0].isdigit()))
    out = ''.join((_UNLEET[c].upper() if upper else _UNLEET[c]) if c in _UNLEET else c
                  for c in run)
    if not upper and run[0] in _UNLEET and _starts_sentence(text[:m.start()]):
      out = out[0].upper() + out[1:]
    return out

  return _ALNUM_RUN.sub(decode, text)


# ----------------------------------------------------------------------------
# Pig Latin.
# ----------------------------------------------------------------------------

_VOWELS = frozenset('aeiouàáâäæèéêëìíîïòóôöõőœùúûüű')
_LETTER_RUN = re.compile(r'[^\W\d_]+')
# Common English onsets: the inverse's guess at how many consonants moved.
_ONSETS = frozenset(
    'bl br ch cl cr dr dw fl fr gl gn gr kl kn kr ph pl pr ps qu rh sc sch scr sh shr sk sl sm '
    'sn sp sph spl spr squ st str sw th thr tr tw wh wr'.split())


def _match_case(original: str, word: str) -> str:
  if len(original) > 1 and original.isupper():
    return word.upper()
  if original[0].isupper():
    return word[0].upper() + word[1:]
  return word


def _pig_latin_word(word: str) -> str:
  lower = word.lower()
  k = next((i for i, c in enumerate(lower) if c in _VOWELS or (c == 'y' and i > 0)),
           len(lower))
  if 0 < k < len(lower) and lower[k] == 'u' and lower[k - 1] == 'q':
    k += 1  # 'qu' moves together: queen -> eenquay.
  pig = lower + 'way' if k == 0 else lower[k:] + lower[:k] + 'ay'
  return _match_case(word, pig)


def to_pig_latin(text: str) -> str:
  """Word-level Pig Latin; non-letters (digits, punctuation, spaces) unchanged.

  Rules, per maximal run of letters: a word starting with a vowel (a e i o u,
  accented ones too) gets 'way' (apple -> appleway); otherwise its leading
  consonants move to the end and 'ay' follows (string -> ingstray), 'y' being
  a consonant only at the start (yellow -> ellowyay, rhythm -> ythmrhay) and
  'qu' moving as one (queen -> eenquay); a word without vowels gets 'ay'.
  Case: ALL-CAPS words stay all caps (HELLO -> ELLOHAY), Capitalized ones
  stay capitalized (Hello -> Ellohay), other mixed case is lost.
  """
  return _LETTER_RUN.sub(lambda m: _pig_latin_word(m.group(0)), text)


def _unpig_word(word: str, lexicon: Mapping[str, int]) -> str:
  lower = word.lower()
  vowel_rule = []
  if lower.endswith('way') and len(lower) > 3 and lower[0] in _VOWELS:
    vowel_rule.append(lower[:-3])
  moved = []  # (number of consonants moved, candidate)
  if lower.endswith('ay') and len(lower) > 2:
    stem = lower[:-2]
    moved = [(k, stem[-k:] + stem[:-k]) for k in range(1, len(stem) + 1)]
  # Keep only candidates that encode back to the word: this enforces the
  # vowel, 'y' and 'qu' rules without restating them.
  valid = [c for c in vowel_rule if _pig_latin_word(c) == lower]
  valid_moved = [(k, c) for k, c in moved if _pig_latin_word(c) == lower]
  candidates = valid + [c for _, c in valid_moved]
  if not candidates:
    return word
  known = [c for c in candidates if c in lexicon]
  choice = min(known, key=lexicon.__getitem__) if known else None
  if choice is None:
    onsets = [(k, c) for k, c in valid_moved if c[:k] in _ONSETS]
    if valid:
      choice = valid[0]
    elif onsets:
      choice = max(onsets)[1]
    else:
      choice = min(valid_moved)[1]
  return _match_case(word, choice)


def from_pig_latin(text: str, lexicon: Iterable[str] | None = None) -> str:
  """Best-effort inverse of `to_pig_latin`.

  Standard Pig Latin is ambiguous: 'orldway' is 'world' or 'orld', 'ingstray'
  is 'string' or 'tringst', and even real words collide ('armway': arm or
  warm; 'asway': as or was). Each word's candidates are those that encode
  back to it; a candidate in `lexicon` wins (the earliest in the lexicon when
  several are), else the vowel rule, else the longest common English onset
  ('str'), else one consonant. Exact for lexicon words that no earlier
  lexicon word collides with; case as in `to_pig_latin`.
  """
  return _from_pig_latin(text, _lexicon_ranks(lexicon or ()))


def _lexicon_ranks(lexicon: Iterable[str]) -> dict[str, int]:
  ranks: dict[str, int] = {}
  for word in lexicon:
    ranks.setdefault(word.lower(), len(ranks))
  return ranks


def _from_pig_latin(text: str, ranks: Mapping[str, int]) -> str:
  return _LETTER_RUN.sub(lambda m: _unpig_word(m.group(0), ranks), text)


# ----------------------------------------------------------------------------
# The probe's data.
# ----------------------------------------------------------------------------

PROBE_LANGUAGES = ('english',) + LANGUAGES
PROBE_RENDERINGS = PROBE_LANGUAGES + ENCODINGS
ICL_TASKS = ('capitalize', 'repeat')
QUERY_KINDS = ('arithmetic', 'blank')
BLANK = '___'
PROBE_SPLIT = 'validation'
NUM_PROBE_PROMPTS = 100
PROBE_SEED = 0
# Operands of the arithmetic query: two-digit-or-less sums the model may know.
_OPERAND_RANGE = (2, 49)


@functools.cache
def load_sentence_pool() -> dict[str, tuple[str, ...]]:
  """{language: sentences}, parallel (row i is one sentence in every language)."""
  path = DATA_DIR / 'probe_sentences.tsv'
  with path.open(encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
  if not rows or set(rows[0]) != set(PROBE_LANGUAGES):
    raise ValueError(f'{path}: the header must name the columns {PROBE_LANGUAGES}.')
  return {lang: tuple(r[lang] for r in rows) for lang in PROBE_LANGUAGES}


@functools.cache
def load_probe_scaffolding() -> dict[str, dict[str, str]]:
  """{language: {'capitalize', 'repeat', 'input', 'output', 'arithmetic', 'blank'}}."""
  data = json.loads((DATA_DIR / 'probe.json').read_text(encoding='utf-8'))
  for lang in PROBE_LANGUAGES:
    missing = {'capitalize', 'repeat', 'input', 'output', 'arithmetic', 'blank'} - set(data[lang])
    if missing:
      raise ValueError(f'probe.json: {lang!r} lacks {sorted(missing)}.')
  return data


@functools.cache
def default_pig_latin_lexicon() -> tuple[str, ...]:
  """Lower-case words, in order of preference for `from_pig_latin`'s ties.

  First the English probe pool's, probe scaffolding's, templates' and labels'
  words (no two of them share an encoding), then common English words
  (data/conjugate/english_words.txt).
  """
  texts = list(load_sentence_pool()['english'])
  texts += load_probe_scaffolding()['english'].values()
  texts += [templates.binary_inference('', ''), templates.three_way_inference('', ''),
            templates.word_in_context('', '', ''), templates.question_answering(''),
            templates.translation('English', 'French', ''), templates.summarization(''),
            'Options', 'neither', 'German', 'Romanian', 'Spanish', 'Dutch', 'Hungarian']
  texts += _ENGLISH_LABELS
  lines = (DATA_DIR / 'english_words.txt').read_text(encoding='utf-8').splitlines()
  texts += [line for line in lines if not line.startswith('#')]
  words = (w.lower() for text in texts for w in _LETTER_RUN.findall(text))
  return tuple(dict.fromkeys(words))


@functools.cache
def _default_lexicon_ranks() -> dict[str, int]:
  return _lexicon_ranks(default_pig_latin_lexicon())


def from_pig_latin_default_lexicon(text: str) -> str:
  """`from_pig_latin` with `default_pig_latin_lexicon()`: the `pig_latin` inverse."""
  return _from_pig_latin(text, _default_lexicon_ranks())


# A number standing alone: no letter or digit on either side.
_NUMBER = re.compile(r'(?<![^\W_])\d+(?![^\W_])')


@functools.cache
def _ambiguous_sums() -> frozenset[int]:
  # Numbers the arithmetic query shows in some rendering besides its operands
  # (Leetspeak writes 'is' as 15): a copied query must never contain the sum,
  # or following the in-context task would read as answering. Excluded in
  # every rendering, so renderings stay parallel.
  numbers = set()
  for rendering in PROBE_RENDERINGS:
    language = rendering if rendering in PROBE_LANGUAGES else 'english'
    query = load_probe_scaffolding()[language]['arithmetic'].format(a='', b='')
    if rendering in ENCODINGS:
      query = conjugate.get_transform(rendering).apply_to_input(query)
    numbers.update(int(n) for n in _NUMBER.findall(query))
  return frozenset(numbers)


def transform_of_rendering(rendering: str) -> str:
  """The conjugate transform a probe rendering stands for ('english' -> 'identity')."""
  if rendering not in PROBE_RENDERINGS:
    raise ValueError(f'Unknown probe rendering {rendering!r}; one of {PROBE_RENDERINGS}.')
  return conjugate.IDENTITY if rendering == 'english' else rendering


@dataclasses.dataclass(frozen=True)
class ProbeExample:
  """One probe prompt.

  Attributes:
    inputs: the prompt: instruction, two demonstrations, the query.
    targets: the output that follows the in-context task.
    instruction_answer: what answering the query's instruction gives (the sum,
      or the blanked first word), in the rendering's form (encoded for
      Leetspeak / Pig Latin).
    instruction_answer_plain: the same before encoding.
    query_kind: 'arithmetic' or 'blank'.
  """

  inputs: str
  targets: str
  instruction_answer: str
  instruction_answer_plain: str
  query_kind: str


def probe_examples(icl_task: str, query_kind: str, rendering: str = 'english',
                   num_prompts: int = NUM_PROBE_PROMPTS, seed: int = PROBE_SEED
                   ) -> list[ProbeExample]:
  """The probe's prompts; prompt i uses the same sentences and numbers in every rendering."""
  if icl_task not in ICL_TASKS:
    raise ValueError(f'Unknown in-context task {icl_task!r}; one of {ICL_TASKS}.')
  if query_kind not in QUERY_KINDS:
    raise ValueError(f'Unknown query kind {query_kind!r}; one of {QUERY_KINDS}.')
  if num_prompts <= 0:
    raise ValueError(f'num_prompts must be positive, got {num_prompts}.')
  transform_of_rendering(rendering)  # Validates the name.
  language = rendering if rendering in PROBE_LANGUAGES else 'english'
  # Languages are rendered from their own data; encodings encode each piece of
  # the English prompt, and the in-context task acts on the encoded text
  # (capitalizing Pig Latin, not encoding capitals: 'AWAY', not 'Away').
  encode = (conjugate.get_transform(rendering).apply_to_input if rendering in ENCODINGS
            else str)
  sentences = load_sentence_pool()[language]
  words = load_probe_scaffolding()[language]
  apply = str.upper if icl_task == 'capitalize' else str
  # Seeded by the task, not the rendering: renderings are parallel.
  rng = random.Random(f'{seed}:{icl_task}:{query_kind}')
  examples = []
  for _ in range(num_prompts):
    first, second, query_index = rng.sample(range(len(sentences)), 3)
    a, b = rng.randint(*_OPERAND_RANGE), rng.randint(*_OPERAND_RANGE)
    while a + b in _ambiguous_sums():
      b = rng.randint(*_OPERAND_RANGE)
    if query_kind == 'arithmetic':
      query, answer = words['arithmetic'].format(a=a, b=b), str(a + b)
    else:
      answer, rest = sentences[query_index].split(' ', 1)
      query = words['blank'].format(sentence=f'{BLANK} {rest}')
    query = encode(query)
    marker_in, marker_out = encode(words['input']), encode(words['output'])
    parts = [encode(words[icl_task])]
    parts += [f'{marker_in} {s} {marker_out} {apply(s)}'
              for s in (encode(sentences[first]), encode(sentences[second]))]
    parts.append(f'{marker_in} {query} {marker_out}')
    examples.append(ProbeExample(
        inputs=' '.join(parts),  # The project's joining rule (templates.py).
        targets=apply(query), instruction_answer=encode(answer),
        instruction_answer_plain=answer, query_kind=query_kind))
  return examples


def probe_stop_marker(rendering: str) -> str:
  """The input marker a continuing output is cut at ('Input:', 'Entrée :', '1npu7:')."""
  language = rendering if rendering in PROBE_LANGUAGES else 'english'
  marker = load_probe_scaffolding()[language]['input']
  return conjugate.get_transform(transform_of_rendering(rendering)).apply_to_input(marker)


# ----------------------------------------------------------------------------
# The probe's scoring.
# ----------------------------------------------------------------------------


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if hasattr(value, 'item'):  # numpy scalar
    value = value.item()
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)
  return str(value)


def _normalize_space(text: str) -> str:
  return ' '.join(text.split())


def probe_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                        is_target: bool = False, *, stop_marker: str) -> Any:
  """seqio postprocessor of the probe.

  Predictions: cut at the next input marker (any case), whitespace collapsed.
  Targets: a dict {'in_context', 'instruction', 'instruction_plain',
  'query_kind'} read from the example, for `follows_in_context_task`.
  """
  text = _text(output)
  if is_target:
    if example is None or 'instruction_answer' not in example:
      raise ValueError('probe_postprocessor needs the example (with instruction_answer, '
                       'instruction_answer_plain, query_kind) to postprocess a target; '
                       'evaluate the probe through seqio, which passes it.')
    return {'in_context': _normalize_space(text),
            'instruction': _text(example['instruction_answer']),
            'instruction_plain': _text(example['instruction_answer_plain']),
            'query_kind': _text(example['query_kind'])}
  match = re.search(re.escape(stop_marker), text, flags=re.IGNORECASE)
  return _normalize_space(text[:match.start()] if match else text)


_EDGE_PUNCTUATION = '.,;:!?¿¡"\'()«»“”'


def answers_instruction(prediction: str, target: Mapping[str, str]) -> bool:
  """Whether `prediction` gives the instruction's answer (either form).

  Arithmetic: the sum appears as a number (not inside a longer number or a
  word: '126' and Leetspeak 'Wh47' do not contain 26 and 47). Blank: the first word (without
  edge punctuation, any case) is the blanked word.
  """
  answers = {target['instruction'], target['instruction_plain']}
  if target['query_kind'] == 'arithmetic':
    return any(re.search(rf'(?<![^\W_]){re.escape(a)}(?![^\W_])', prediction) for a in answers)
  words = prediction.split()
  if not words:
    return False
  first = words[0].strip(_EDGE_PUNCTUATION).casefold()
  return any(first == a.strip(_EDGE_PUNCTUATION).casefold() for a in answers)


def follows_in_context_task(targets: Sequence[Mapping[str, str]],
                            predictions: Sequence[str]) -> dict[str, float]:
  """seqio metric (0-100): outputs that follow the in-context task, and that answer instead.

  `follows_in_context_task`: the prediction is exactly the in-context answer
  (whitespace collapsed). `answered_instruction`: it is not, and it gives
  the instruction's answer (`answers_instruction`). The rest is neither.
  """
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  if not targets:
    return {'follows_in_context_task': 0.0, 'answered_instruction': 0.0}
  follows = [_normalize_space(p) == t['in_context'] for t, p in zip(targets, predictions)]
  instruction = [not f and answers_instruction(p, t)
                 for f, t, p in zip(follows, targets, predictions)]
  n = len(targets)
  return {'follows_in_context_task': 100.0 * sum(follows) / n,
          'answered_instruction': 100.0 * sum(instruction) / n}


# ----------------------------------------------------------------------------
# Registration.
# ----------------------------------------------------------------------------

DEFAULT_PROBE_PREFIX = 'promot'


def probe_task_name(icl_task: str, query_kind: str, rendering: str = 'english',
                    prefix: str = DEFAULT_PROBE_PREFIX) -> str:
  """`{prefix}_icl_probe_{icl_task}_{query_kind}`, plus `__<transform>` if not English."""
  return conjugate.conjugate_name(f'{prefix}_icl_probe_{icl_task}_{query_kind}',
                                  transform_of_rendering(rendering))


def probe_mixture_name(rendering: str = 'english', prefix: str = DEFAULT_PROBE_PREFIX) -> str:
  return conjugate.conjugate_name(f'{prefix}_icl_probe', transform_of_rendering(rendering))


def examples_source(make_examples: Callable[[], Sequence[Any]], source_split: str,
                    num_examples: int) -> seqio.FunctionDataSource:
  """A local seqio source of dataclass examples, built on each read (one column per field; nothing on disk)."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    # One fixed split, in example order; seqio's shuffling seed does not change the examples.
    del split, shuffle_files, seed
    examples = make_examples()
    columns = {f.name: [getattr(e, f.name) for e in examples] for f in dataclasses.fields(examples[0])}
    return tf.data.Dataset.from_tensor_slices(columns)

  return seqio.FunctionDataSource(dataset_fn, splits=(source_split,),
                                  num_input_examples={source_split: num_examples})


def register_probe_family(*, vocabulary: seqio.Vocabulary | None, renderings: Sequence[str],
                          pairs: Sequence[tuple[str, str]], task_name_fn: Callable[[str, str, str], str],
                          mixture_name_fn: Callable[[str], str],
                          examples_fn: Callable[[str, str, str], Sequence[Any]], split: str,
                          num_examples: int, postprocessor_for: Callable[[str], Callable[..., Any]],
                          metric_fn: Callable[..., Any]) -> list[str]:
  """Registers a probe: one task per (ICL task, query kind) and rendering, one mixture per rendering.

  The English tasks are the base; the other renderings are registered as their
  native conjugates (`conjugate.add_native_conjugate`). Registering again
  replaces them.

  Args:
    vocabulary: the model's vocabulary; default `vocab.default_vocabulary()`.
    renderings: some of `PROBE_RENDERINGS` ('english' is always registered).
    pairs: the (ICL task, query kind) pairs.
    task_name_fn: (icl_task, query_kind, rendering) -> task name.
    mixture_name_fn: rendering -> mixture name.
    examples_fn: (icl_task, query_kind, rendering) -> the dataclass examples.
    split: the one split of the sources.
    num_examples: examples per task.
    postprocessor_for: rendering -> the tasks' postprocess function.
    metric_fn: the tasks' metric.

  Returns:
    The registered task and mixture names.
  """
  vocabulary = vocabulary or vocab_lib.default_vocabulary()
  renderings = ['english'] + [r for r in renderings if r != 'english']
  names = []
  for rendering in renderings:
    task_names = []
    for icl_task, query_kind in pairs:
      name = task_name_fn(icl_task, query_kind, rendering)
      task = seqio.Task(
          name,
          source=examples_source(functools.partial(examples_fn, icl_task, query_kind, rendering), split,
                                 num_examples),
          preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
          output_features=vocab_lib.output_features(vocabulary),
          postprocess_fn=postprocessor_for(rendering), metric_fns=[metric_fn])
      transform = transform_of_rendering(rendering)
      if transform == conjugate.IDENTITY:
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add_provider(name, task)
      else:
        conjugate.add_native_conjugate(task, task_name_fn(icl_task, query_kind, 'english'), transform)
      task_names.append(name)
    mixture = mixture_name_fn(rendering)
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(t, 1.0) for t in task_names])
    names += task_names + [mixture]
  return names


def register_probe_tasks(vocabulary: seqio.Vocabulary | None = None, *,
                         prefix: str = DEFAULT_PROBE_PREFIX,
                         renderings: Sequence[str] = PROBE_RENDERINGS,
                         num_prompts: int = NUM_PROBE_PROMPTS,
                         seed: int = PROBE_SEED) -> list[str]:
  """Registers the probe tasks and one mixture per rendering; returns the names.

  Registering again replaces them. The English tasks are the base; the
  others are registered as their native conjugates, so
  `conjugate.register_conjugate(probe_mixture_name(), 'french')` returns the
  French probe.

  Args:
    vocabulary: the model's vocabulary; default `vocab.default_vocabulary()`.
    prefix: task names start with `{prefix}_icl_probe`.
    renderings: some of `PROBE_RENDERINGS` ('english' is always registered,
      it is the base of the others).
    num_prompts: prompts per task (the paper's 100).
    seed: fixes the sentences and numbers drawn.
  """
  return register_probe_family(
      vocabulary=vocabulary, renderings=renderings,
      pairs=[(t, q) for t in ICL_TASKS for q in QUERY_KINDS],
      task_name_fn=lambda t, q, r: probe_task_name(t, q, r, prefix),
      mixture_name_fn=lambda r: probe_mixture_name(r, prefix),
      examples_fn=lambda t, q, r: probe_examples(t, q, r, num_prompts, seed), split=PROBE_SPLIT,
      num_examples=num_prompts,
      postprocessor_for=lambda r: functools.partial(probe_postprocessor, stop_marker=probe_stop_marker(r)),
      metric_fn=follows_in_context_task)


# ----------------------------------------------------------------------------
# What importing this module registers.
# ----------------------------------------------------------------------------

for _language in LANGUAGES:
  # overwrite: re-importing (importlib.reload) registers the same names again.
  conjugate.register_transform(translation_transform(_language), overwrite=True)

conjugate.register_transform(conjugate.Transform(
    name='leetspeak', forward_input=to_leetspeak, forward_target=to_leetspeak,
    inverse_output=from_leetspeak, invertible=False,
    description=('a e i o s t -> 4 3 1 0 5 7 (both cases) on the whole prompt and the target. '
                 'The inverse cannot tell encoded letters from original digits or recover '
                 'their case: numbers (runs without letters) are kept, letters decoded lower '
                 'case except in all-caps words and at sentence starts.')), overwrite=True)

conjugate.register_transform(conjugate.Transform(
    name='pig_latin', forward_input=to_pig_latin, forward_target=to_pig_latin,
    inverse_output=from_pig_latin_default_lexicon,
    invertible=False,
    description=('Word-level Pig Latin (consonant onset moved + "ay", vowel-initial + "way") '
                 'on the whole prompt and the target. Standard Pig Latin is ambiguous '
                 '(orldway: world or orld); the inverse is exact for words of the probe pool '
                 'and templates and guesses from common English onsets otherwise.')),
    overwrite=True)

register_probe_tasks(vocab_lib.default_vocabulary(), prefix=DEFAULT_PROBE_PREFIX)
