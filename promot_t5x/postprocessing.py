"""Turning decoded model outputs into answers, as the paper scores them.

A few-shot prompt invites the model to go on writing the next demonstration
after its answer (`Paris Q: Who wrote ...`). Every output is therefore cut at
the first demonstration prefix (`templates.DEMONSTRATION_PREFIXES`: `Q:`,
`Translate`, `Article:`); classification then reads the first word, without
surrounding punctuation (`True.` -> `True`). Comparisons stay case-sensitive:
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


def cut_at_prefixes(text: str, prefixes: Sequence[str]) -> str:
  """`text` up to the first prefix that starts it or follows whitespace, stripped.

  `'Paris Q: Who'` -> `'Paris'`; `'Le chat. Translate English'` -> `'Le chat.'`.
  A word that merely starts with a prefix (`'Translated'`) cuts too; a prefix
  in the middle of a word (`'reQ:'`) does not.
  """
  if not prefixes:
    return text.strip()
  pattern = r'(?:^|(?<=\s))(?:' + '|'.join(re.escape(p) for p in prefixes) + ')'
  match = re.search(pattern, text)
  return (text[:match.start()] if match else text).strip()


def first_word(text: str) -> str:
  """The first whitespace-separated word without leading/trailing punctuation ('' if none)."""
  words = text.split()
  return words[0].strip(_PUNCTUATION) if words else ''


def classification_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                 is_target: bool = False, *,
                                 prefixes: Sequence[str]) -> str:
  """Predictions: first word after the cut. Targets (the label word): unchanged."""
  del example
  if is_target:
    return _text(output)
  return first_word(cut_at_prefixes(_text(output), prefixes))


def text_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                       is_target: bool = False, *, prefixes: Sequence[str]) -> str:
  """Translation and summaries: predictions cut at the next demonstration; targets as is."""
  del example
  if is_target:
    return _text(output)
  return cut_at_prefixes(_text(output), prefixes)


def qa_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                     is_target: bool = False, *, prefixes: Sequence[str],
                     answers_key: str = 'answers') -> str | list[str]:
  """QA: predictions cut at the next demonstration; targets become all acceptable answers.

  For a target, `example[answers_key]` (every alias) is returned when the
  example has it, else the single target text in a list.
  """
  if is_target:
    if example is not None and answers_key in example:
      return [_text(a) for a in example[answers_key]]
    return [_text(output)]
  return cut_at_prefixes(_text(output), prefixes)
