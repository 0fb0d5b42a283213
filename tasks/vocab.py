"""The one place the paper's tasks take their vocabulary from.

Real runs use mT5's SentencePiece model (the paper's model is mT5 XXL). Two
ways to use another vocabulary (a T5.1.1 model, the miniature's own model,
the test fixture):

- before `promot_t5x_tasks.paper` is imported, set the environment variables
  `PROMOT_SENTENCEPIECE_MODEL` (path of a SentencePiece model) and, if it
  differs from 100, `PROMOT_EXTRA_IDS`; the default `promot_*` tasks then use
  that vocabulary;
- or call `promot_t5x_tasks.paper.register_paper_tasks(vocabulary, prefix=...)`
  with any `seqio.Vocabulary`, which registers the same tasks under another
  name prefix (e.g. from the module named by `MIXTURE_OR_TASK_MODULE`).

The task vocabulary must be the model's (`VOCABULARY` in gin/models/*.gin):
the model gins use the same path and `EXTRA_IDS = 100`.

Vocabularies load lazily: building one never reads the model file, so
importing the task modules never touches `gs://`.
"""

from __future__ import annotations

import os

import seqio

MT5_SENTENCEPIECE_MODEL = 'gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model'
# T5X's mT5 gins add 100 sentinel ids (vocabulary size 250100, padded to 250112).
MT5_EXTRA_IDS = 100

SENTENCEPIECE_MODEL_ENV = 'PROMOT_SENTENCEPIECE_MODEL'
EXTRA_IDS_ENV = 'PROMOT_EXTRA_IDS'


def sentencepiece_vocabulary(path: str, extra_ids: int = MT5_EXTRA_IDS) -> seqio.Vocabulary:
  """A lazily loaded `seqio.SentencePieceVocabulary`."""
  if not path:
    raise ValueError('The SentencePiece model path is empty; pass a path such as '
                     f'{MT5_SENTENCEPIECE_MODEL!r}.')
  if extra_ids < 0:
    raise ValueError(f'extra_ids must be >= 0, got {extra_ids}.')
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def default_vocabulary() -> seqio.Vocabulary:
  """mT5's vocabulary, or the one named by `PROMOT_SENTENCEPIECE_MODEL`."""
  path = os.environ.get(SENTENCEPIECE_MODEL_ENV) or MT5_SENTENCEPIECE_MODEL
  extra_ids_text = os.environ.get(EXTRA_IDS_ENV, str(MT5_EXTRA_IDS))
  try:
    extra_ids = int(extra_ids_text)
  except ValueError:
    raise ValueError(f'{EXTRA_IDS_ENV}={extra_ids_text!r} is not an integer.') from None
  return sentencepiece_vocabulary(path, extra_ids)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """`inputs` and `targets`, both ending in EOS, in `vocabulary`."""
  return {
      'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True),
      'targets': seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
