"""Vocabulary constructors for gin (seqio is imported only when one is built).

Importing seqio pulls in TensorFlow (several seconds); building the vocabulary
lazily keeps commands that never tokenize (promot-inspect, memory plans) fast.
"""

from __future__ import annotations

from typing import Any


def sentencepiece_vocabulary(sentencepiece_model_file: str, extra_ids: int = 100) -> Any:
  """A `seqio.SentencePieceVocabulary` (the model file is read on first use)."""
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio.SentencePieceVocabulary(sentencepiece_model_file, extra_ids=extra_ids)
