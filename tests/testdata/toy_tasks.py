"""Toy seqio tasks for trainer tests (made in process, no downloads).

`toy_copy`: inputs are short letter strings, targets repeat them; learnable in
a few steps by a tiny model. `toy_reverse`: targets are the reversed strings.
`toy_copy_reverse`: a mixture of both (for multi-prompt training).
The vocabulary is the 26-piece SentencePiece fixture (PROMOT_TEST_SPM, or
tests/testdata/sentencepiece.model beside this file).
"""

import os
import pathlib

import numpy as np
import seqio

SPM = os.environ.get('PROMOT_TEST_SPM') or str(pathlib.Path(__file__).resolve().parent / 'sentencepiece.model')
LETTERS = 'abcdefghij'


def _examples(split: str, reverse: bool) -> list[dict[str, str]]:
  rng = np.random.default_rng({'train': 0, 'validation': 1}[split] + (10 if reverse else 0))
  out = []
  for _ in range(64 if split == 'train' else 16):
    word = ''.join(rng.choice(list(LETTERS), size=int(rng.integers(3, 7))))
    out.append({'inputs': f'copy {word}', 'targets': word[::-1] if reverse else word})
  return out


def _dataset_fn(split, shuffle_files, seed=None, reverse=False):
  import tensorflow as tf

  del shuffle_files, seed
  ex = _examples(split, reverse)
  return tf.data.Dataset.from_tensor_slices({k: [e[k] for e in ex] for k in ex[0]})


def register() -> None:
  import functools

  if 'toy_copy' in seqio.TaskRegistry.names():
    return
  vocab = seqio.SentencePieceVocabulary(SPM, extra_ids=100)
  features = {'inputs': seqio.Feature(vocab, add_eos=True),
              'targets': seqio.Feature(vocab, add_eos=True)}
  for name, reverse in (('toy_copy', False), ('toy_reverse', True)):
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(functools.partial(_dataset_fn, reverse=reverse),
                                        splits=('train', 'validation')),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features, metric_fns=[])
  seqio.MixtureRegistry.add('toy_copy_reverse', ['toy_copy', 'toy_reverse'], default_rate=1.0)


register()
