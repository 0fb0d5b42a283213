"""The miniature's SentencePiece vocabulary, trained on the synthetic world's text.

`get_vocabulary()` loads the committed model (`data/spm.model`) with 100 extra
ids (T5's sentinels `<extra_id_0>` ... `<extra_id_99>`, the last ids of the
vocabulary). `train_vocabulary()` regenerates that file deterministically from
the default world:

  python -m promot_t5x_tasks.synthetic.vocabulary [--output PATH]

Ids follow T5: 0 pad, 1 eos, 2 unk, no bos.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from typing import Any

from promot_t5x_tasks.synthetic import world as world_lib

DATA_DIR = os.path.join(os.path.dirname(__file__), 'data')
SPM_PATH = os.path.join(DATA_DIR, 'spm.model')
EXTRA_IDS = 100
# Base pieces (pad, eos, unk and the learned pieces); the model's vocabulary is
# VOCAB_SIZE + EXTRA_IDS = 2000. Nearly every word of the world fits in one piece.
VOCAB_SIZE = 1900
# Pretraining examples in the training corpus (split evenly over the components).
CORPUS_PRETRAIN_EXAMPLES = 20000


# One vocabulary object per model file: the registered tasks hold it, and
# `get_vocabulary()` returns that same object (tasks compare vocabularies by identity).
_LOADED: dict[str, Any] = {}


def get_vocabulary(path: str = SPM_PATH):
  """The miniature's `seqio.SentencePieceVocabulary` (with 100 extra ids)."""
  key = os.path.abspath(path)
  if key not in _LOADED:
    import seqio  # pylint: disable=g-import-not-at-top

    if not os.path.exists(path):
      raise FileNotFoundError(f'No SentencePiece model at {path}; regenerate it with '
                              '`python -m promot_t5x_tasks.synthetic.vocabulary`.')
    _LOADED[key] = seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)
  return _LOADED[key]


def corpus_lines(world: world_lib.World | None = None) -> list[str]:
  """The vocabulary's training text: every split, a pretraining sample, every word form."""
  # The world as pretrained: its test splits before the fine-tuning families' grew.
  world = (world or world_lib.get_world()).as_pretrained()
  lines: list[str] = []
  for family in world_lib.ALL_FAMILIES:
    for split in world_lib.SPLITS:
      for ex in world.examples(family, split):
        lines += [ex.inputs, ex.targets]
  # A fixed number per component, so that changing the mixing rates leaves the
  # vocabulary (and checkpoints trained with it) valid.
  for component in world_lib.PRETRAIN_COMPONENTS:
    for i in range(CORPUS_PRETRAIN_EXAMPLES // len(world_lib.PRETRAIN_COMPONENTS)):
      ex = world.pretraining_example(component, i)
      lines += [_strip_sentinels(ex.inputs), _strip_sentinels(ex.targets)]
  # Every word form once, in each script, so that rare forms still get pieces.
  for words in all_word_forms(world).values():
    lines.append(' '.join(sorted(words)))
  return [line for line in lines if line.strip()]


def all_word_forms(world: world_lib.World) -> dict[str, set[str]]:
  """Every surface word of the world, by source (for coverage checks)."""
  forms = {'english': set(world.english_words()), 'names': set(world.people)
           | set(world.story_names) | set(world.cities),
           'languages': {world_lib.ENGLISH, world_lib.FRENKA, world_lib.DEUNA,
                         world_lib.ROMALI, world_lib.LUMIC},
           'lumic': set(world.lumic.values())}
  forms['english'] |= {w.capitalize() for w in forms['english']}
  forms['lumic'] |= {w.capitalize() for w in forms['lumic']}
  for lang in world_lib.TOY_LANGUAGES:
    lang_forms = set()
    for english in world.lexicons[lang]:
      for register in world_lib.REGISTERS:
        parsed = _one_word_parse(english)
        lang_forms.update(world_lib.words_of(world.translate_sentence(parsed, lang, register)))
    forms[lang.lower()] = lang_forms | {w.lower() for w in lang_forms}
  forms['cipher'] = {world_lib.vowel_cipher(w) for key in ('english', 'names', 'lumic')
                     for w in forms[key]}
  return forms


def _one_word_parse(english: str) -> tuple:
  """A translation parse that contains `english` (any word class)."""
  noun, verb = world_lib.TR_NOUNS[0], world_lib.TR_VERBS[0]
  if english in world_lib.TR_NOUNS:
    return ((None, english), verb, (None, noun), None)
  if english in world_lib.TR_VERBS:
    return ((None, noun), english, (None, noun), None)
  if english in world_lib.TR_ADJECTIVES:
    return ((english, noun), verb, (None, noun), None)
  return ((None, noun), verb, (None, noun), (english, (None, noun)))


def _strip_sentinels(text: str) -> str:
  return re.sub(r'\s*<extra_id_\d+>\s*', ' ', text).strip()


def train_vocabulary(output: str = SPM_PATH, vocab_size: int = VOCAB_SIZE,
                     world: world_lib.World | None = None) -> str:
  """Trains a SentencePiece BPE model on `corpus_lines()` and writes `output`.

  BPE rather than unigram: on this closed world a unigram model of this size
  splits frequent template words ('▁tru' 'e'), BPE keeps them whole.
  Deterministic: one thread, no input sampling or shuffling.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  lines = corpus_lines(world)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
      model_type='bpe', character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
      max_sentence_length=8192, minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'wb') as f:
    f.write(model.getvalue())
  _LOADED.pop(os.path.abspath(output), None)  # the file changed; other models' objects stay
  return output


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', default=SPM_PATH)
  parser.add_argument('--vocab_size', type=int, default=VOCAB_SIZE)
  args = parser.parse_args(argv)
  print(train_vocabulary(args.output, args.vocab_size))


if __name__ == '__main__':
  main()
