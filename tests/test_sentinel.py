"""Sentinel-format prompting on real sentinel ids (seqio's extra_ids on the shared SentencePiece model)."""

import dataclasses
import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from promot_t5x import data, evaluation, metrics, postprocessing, sentinel
from promot_t5x.models import encoder_decoder, t5

PREFIXES = ('Q:', 'Translate', 'Article:')


@pytest.fixture(scope='module')
def vocab(fixtures_dir):
  return seqio.SentencePieceVocabulary(str(fixtures_dir / 'sentencepiece.model'), extra_ids=100)


def test_sentinel_ids_are_seqios_extra_ids(vocab):
  s0, s1 = sentinel.sentinel_ids(vocab)
  # seqio numbers sentinels from the top of the vocabulary and encodes their text to them.
  assert (s0, s1) == (vocab.vocab_size - 1, vocab.vocab_size - 2)
  assert list(vocab.encode('<extra_id_0>')) == [s0]
  assert list(vocab.encode('<extra_id_1>')) == [s1]


def test_a_vocabulary_without_sentinels_is_refused_with_the_fix(fixtures_dir):
  plain = seqio.SentencePieceVocabulary(str(fixtures_dir / 'sentencepiece.model'), extra_ids=0)
  with pytest.raises(ValueError, match='SENTINEL_FORMAT = False'):
    sentinel.sentinel_ids(plain)


def test_inputs_end_with_the_sentinel_and_full_inputs_lose_their_start(vocab):
  s0, _ = sentinel.sentinel_ids(vocab)
  tokens = list(vocab.encode('test at the see')) + [1]
  out = sentinel.format_inputs(tf.constant(tokens, tf.int32), s0, 1, length=64).numpy().tolist()
  assert out == tokens[:-1] + [s0, 1]
  # Exactly full: the first token makes room; the query's end and the sentinel stay.
  full = sentinel.format_inputs(tf.constant(tokens, tf.int32), s0, 1, length=len(tokens))
  assert full.numpy().tolist() == tokens[1:-1] + [s0, 1]
  with pytest.raises(ValueError, match='inputs'):
    sentinel.format_inputs(tf.constant(tokens), s0, 1, length=2)


def test_targets_are_wrapped_in_the_first_two_sentinels(vocab):
  s0, s1 = sentinel.sentinel_ids(vocab)
  tokens = list(vocab.encode('test')) + [1]
  out = sentinel.format_targets(tf.constant(tokens, tf.int32), s0, s1, 1, length=16)
  assert out.numpy().tolist() == [s0] + tokens[:-1] + [s1, 1]
  assert vocab.decode(out.numpy().tolist()) .split() == ['<extra_id_0>', 'test', '<extra_id_1>']
  cut = sentinel.format_targets(tf.constant(tokens * 5, tf.int32), s0, s1, 1, length=6)
  assert cut.numpy().tolist()[0] == s0 and cut.numpy().tolist()[-2:] == [s1, 1]
  assert len(cut.numpy()) == 6


def test_decode_writes_sentinel_ids_as_text_never_unknown(vocab):
  s0, s1 = sentinel.sentinel_ids(vocab)
  ids = [s0] + list(vocab.encode('test')) + [s1] + list(vocab.encode('what')) + [1, 7, 7]
  text = sentinel.decode(vocab, ids)
  assert text == '<extra_id_0> test <extra_id_1> what'
  assert '\u2047' not in text  # seqio's unknown piece
  assert sentinel.span(text) == 'test'


@pytest.mark.parametrize('text, expected', [
    ('<extra_id_0> True <extra_id_1> False', 'True'),
    ('<extra_id_0> Le chat. <extra_id_1>', 'Le chat.'),
    ('<extra_id_0> no closing sentinel', 'no closing sentinel'),
    ('no sentinel at all <extra_id_3> rest', 'no sentinel at all'),
    ('<extra_id_0><extra_id_1>', ''),
])
def test_span_is_the_text_between_the_first_two_sentinels(text, expected):
  assert sentinel.span(text) == expected


def test_prefix_cut_at_the_second_occurrence():
  cut = postprocessing.cut_at_prefixes
  assert cut('Q: Who? A: Paris Q: Who else? A: Rome', PREFIXES, occurrence=2) == 'Q: Who? A: Paris'
  # The output's start is the first occurrence unless it echoes a prefix.
  assert cut('Paris Q: x', PREFIXES, occurrence=2) == 'Paris'
  assert cut('Paris Q: x', PREFIXES) == 'Paris'
  assert cut('Q: x', PREFIXES) == ''
  assert cut('Le chat. Translate a Translate b', PREFIXES, occurrence=2) == 'Le chat.'
  assert cut('Translate a: le chat Translate b', PREFIXES, occurrence=3) == (
      'Translate a: le chat Translate b')
  with pytest.raises(ValueError, match='occurrence'):
    cut('x', PREFIXES, occurrence=0)


# -----------------------------------------------------------------------------
# Training data and evaluation in sentinel format.
# -----------------------------------------------------------------------------
ROWS = [('test at the see answer:', 'test'), ('what is this answer:', 'what')]


def _register(name, vocabulary):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'inputs': [r[0] for r in ROWS],
                                               'targets': [r[1] for r in ROWS]})
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  features = {'inputs': seqio.Feature(vocabulary, add_eos=True),
              'targets': seqio.Feature(vocabulary, add_eos=True)}
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=('train', 'validation')),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[metrics.accuracy],
      postprocess_fn=functools.partial(postprocessing.classification_postprocessor,
                                       prefixes=PREFIXES, occurrence=2))


def test_training_batches_are_in_sentinel_format(vocab):
  _register('sentineltest_task', vocab)
  s0, s1 = sentinel.sentinel_ids(vocab)
  cfg = data.DatasetConfig('sentineltest_task', {'inputs': 32, 'targets': 8}, batch_size=2,
                           shuffle=False, sentinel_format=True)
  batch = next(data.numpy_batches(data.get_dataset(cfg, num_epochs=1)))
  for inputs, targets in zip(batch['encoder_input_tokens'], batch['decoder_target_tokens']):
    real = inputs[inputs > 0].tolist()
    assert real[-2:] == [s0, 1]
    target = targets[targets > 0].tolist()
    assert target[0] == s0 and target[-2:] == [s1, 1]
  plain = next(data.numpy_batches(data.get_dataset(
      dataclasses.replace(cfg, sentinel_format=False), num_epochs=1)))
  assert s0 not in plain['encoder_input_tokens']


@dataclasses.dataclass
class SentinelAnswerer(encoder_decoder.EncoderDecoderModel):
  """Answers `<extra_id_0> <answer> <extra_id_1> <junk>` when the input ends with <extra_id_0>."""

  vocabulary: object = None
  answers: dict = dataclasses.field(default_factory=dict)
  seen: list = dataclasses.field(default_factory=list)

  def predict_batch(self, params, batch, decoder='greedy', num_beams=4, max_decode_length=None,
                    eos_id=1, alpha=0.6):
    s0, s1 = sentinel.sentinel_ids(self.vocabulary)
    rows = []
    for tokens in np.asarray(batch['encoder_input_tokens']):
      real = [int(t) for t in tokens if t > 0]
      self.seen.append(real[-2:])
      query = self.vocabulary.decode(real[:-2])
      ids = [s0, *self.vocabulary.encode(self.answers[query]), s1,
             *self.vocabulary.encode('what'), eos_id]
      rows.append((ids + [0] * max_decode_length)[:max_decode_length])
    return np.asarray(rows, np.int32)


def test_evaluation_prompts_with_the_sentinel_and_reads_the_span(vocab):
  _register('sentineltest_task', vocab)
  evaluation.clear_data_cache()
  s0, _ = sentinel.sentinel_ids(vocab)
  config = t5.T5Config(vocab_size=128, emb_dim=8, num_heads=1, head_dim=8, mlp_dim=8,
                       num_encoder_layers=1, num_decoder_layers=1)
  # The first answer is right, the second wrong.
  model = SentinelAnswerer(t5.Transformer(config), vocabulary=vocab,
                           answers={ROWS[0][0]: 'test', ROWS[1][0]: 'test'})
  suite = evaluation.make_suite('sentineltest_task', role=evaluation.TARGET, split='validation',
                                task_feature_lengths={'inputs': 32, 'targets': 12})
  settings = evaluation.EvalSettings(batch_size=2, sentinel_format=True, length_buckets=(32,))
  result = evaluation.Evaluator([suite], settings).evaluate(model, {}, step=0)
  task = result.suites['target'].tasks['sentineltest_task']
  assert all(last == [s0, 1] for last in model.seen)
  assert task.score == pytest.approx(50.0)
  assert task.predictions[0]['output'] == '<extra_id_0> test <extra_id_1> what'
  assert [p['prediction'] for p in task.predictions] == ['test', 'test']
  evaluation.clear_data_cache()
