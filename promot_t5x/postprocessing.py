"""Turning decoded model outputs into answers, as the paper scores them.

A few-shot prompt invites the model to go on writing the next demonstration
after its answer (`Paris Q: Who wrote ...`). Every output is therefore cut at
a demonstration prefix (`templates.DEMONSTRATION_PREFIXES`: `Q:`,
`Translate`, `Article:`): at its first occurrence by default, after the
second (`occurrence=2`) for the paper's tasks, as the paper's appendix B.2
cuts, reading the output's own start as the first occurrence (see
`cut_at_prefixes`);
classification then reads the first word, without surrounding punctuation
(`True.` -> `True`). Sentinel-format outputs are first reduced to their span
by the evaluator (`promot_t5x.sentinel.span`). Comparisons stay case-sensitive:
the labels are `True`, `False`, `Neither`.

The prefixes are an argument, not imported from the task package, so the
library does not depend on the registrations (tasks bind them with
`functools.partial`). The three `*_postprocessor` functions have seqio's
postprocessor signature `(output, example=None, is_target=False)`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

_PUNCTUATION = string.punctuation + '\u201c\u201d\u2018\u2019\u00ab\u00bb'


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def cut_at_prefixes(text: str, prefixes: Sequence[str], occurrence: int = 1) -> str:
  """`text` up to the `occurrence`-th prefix that starts it or follows whitespace, stripped.

  `'Paris Q: Who'` -> `'Paris'`; `'Le chat. Translate English'` -> `'Le chat.'`.
  With `occurrence=2` (the paper's "cut after the second occurrence") the
  output's start counts as the first occurrence unless a prefix stands there:
  `'Paris Q: Who'` -> `'Paris'` still, and an output that echoes a prefix
  first keeps it, `'Q: Who? A: Paris Q: Who'` -> `'Q: Who? A: Paris'`.
  A word that merely starts with a prefix (`'Translated'`) cuts too; a prefix
  in the middle of a word (`'reQ:'`) does not.
  """
  if occurrence < 1:
    raise ValueError(f'occurrence counts from 1, got {occurrence}.')
  text = text.strip()
  if not prefixes:
    return text
  pattern = r'(?:^|(?<=\s))(?:' + '|'.join(re.escape(p) for p in prefixes) + ')'
  starts = [m.start() for m in re.finditer(pattern, text)]
  if occurrence > 1 and (not starts or starts[0] != 0):
    starts.insert(0, 0)  # the answer itself opens the output, as a prefix would
  if len(starts) >= occurrence:
    text = text[:starts[occurrence - 1]]
  return text.strip()


def first_word(text: str) -> str:
  """The first whitespace-separated word without leading/trailing punctuation ('' if none)."""
  words = text.split()
  return words[0].strip(_PUNCTUATION) if words else ''


def classification_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                 is_target: bool = False, *,
                                 prefixes: Sequence[str], occurrence: int = 1) -> str:
  """Predictions: first word after the cut. Targets (the label word): unchanged."""
  del example
  if is_target:
    return _text(output)
  return first_word(cut_at_prefixes(_text(output), prefixes, occurrence))


def text_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                       is_target: bool = False, *, prefixes: Sequence[str],
                       occurrence: int = 1) -> str:
  """Translation and summaries: predictions cut at the next demonstration; targets as is."""
  del example
  if is_target:
    return _text(output)
  return cut_at_prefixes(_text(output), prefixes, occurrence)


def qa_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                     is_target: bool = False, *, prefixes: Sequence[str],
                     answers_key: str = 'answers', occurrence: int = 1) -> str | list[str]:
  """QA: predictions cut at the next demonstration; targets become all acceptable answers.

  For a target, `example[answers_key]` (every alias) is returned when the
  example has it, else the single target text in a list.
  """
  if is_target:
    if example is not None and answers_key in example:
      return [_text(a) for a in example[answers_key]]
    return [_text(output)]
  return cut_at_prefixes(_text(output), prefixes, occurrence)
