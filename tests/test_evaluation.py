"""The few-shot evaluator: prompt routing, scoring, format specialization, compile reuse.

Tasks are registered here from in-process data. Scoring tests use a scripted
model (its "decoder" looks each input up in a table of answers) so that the
expected metrics are known exactly; routing and compile tests run a tiny
random T5 (emb 16) with a soft prompt.
"""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from promot_t5x_tasks.synthetic import vocabulary as mini_vocabulary

from promot_t5x import evaluation, metrics, postprocessing
from promot_t5x.models import encoder_decoder, prompts, t5

PREFIXES = ('Q:', 'Translate', 'Article:')
LABELS = ('True', 'False')

# QA: 8 questions; the scripted model answers 3 right, 3 with "True"/"False"
# (format specialization), 2 wrong. Classification: 6 examples, 4 right.
NAMES = ('ash', 'bay', 'cove', 'dale', 'elm', 'fen', 'glen', 'holt')
QA = [(f'Q: Where does {n} live? A:', f'town {n}') for n in NAMES]
QA_OUTPUTS = ['town ash', 'town bay Q: Where does', 'the town cove.', 'True', 'False Q: x A:',
              'True.', 'city glen', 'nowhere']
CLS = [(f'premise {n} question: hypothesis {n} Is it true or false? answer:',
        'True' if i % 2 else 'False') for i, n in enumerate(NAMES[:6])]
CLS_OUTPUTS = ['False', 'True. Q: next', 'True', 'True', 'False', 'False answer']


def _source(rows, extra=None):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    data = {'inputs': [r[0] for r in rows], 'targets': [r[1] for r in rows]}
    if extra:
      data.update(extra)
    return tf.data.Dataset.from_tensor_slices(data)
  return seqio.FunctionDataSource(dataset_fn, splits=('validation', 'eval'))


def _register(name, rows, vocab, metric_fns, postprocess_fn, extra=None):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  features = {'inputs': seqio.Feature(vocab, add_eos=True),
              'targets': seqio.Feature(vocab, add_eos=True)}
  seqio.TaskRegistry.add(
      name, source=_source(rows, extra),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=metric_fns, postprocess_fn=postprocess_fn)


@pytest.fixture(scope='module')
def mini_vocab():
  return seqio.SentencePieceVocabulary(mini_vocabulary.SPM_PATH, extra_ids=100)


@pytest.fixture(scope='module')
def scripted_tasks(mini_vocab):
  for text in [q for q, _ in QA + CLS] + QA_OUTPUTS + CLS_OUTPUTS:
    assert mini_vocab.decode(mini_vocab.encode(text)) == text  # the scripted model's premise
  evaluation.clear_data_cache()
  _register('evaltest_qa_1shot', QA, mini_vocab, [metrics.exact_match],
            functools.partial(postprocessing.qa_postprocessor, prefixes=PREFIXES),
            extra={'answers': [[t, f'{t} city'] for _, t in QA]})
  _register('evaltest_cls_1shot', CLS, mini_vocab, [metrics.accuracy],
            functools.partial(postprocessing.classification_postprocessor, prefixes=PREFIXES))
  # A long input: 2 of 3 examples exceed an input length of 12 tokens.
  long_rows = [('Q: a b c d e f g h i j k l m n o p A:', 'x'),
               ('Q: short A:', 'y'),
               ('Q: one two three four five six seven eight nine ten A:', 'z')]
  _register('evaltest_long', long_rows, mini_vocab, [metrics.exact_match],
            functools.partial(postprocessing.qa_postprocessor, prefixes=PREFIXES))
  yield
  evaluation.clear_data_cache()


@dataclasses.dataclass
class ScriptedModel(encoder_decoder.EncoderDecoderModel):
  """Answers each input with a fixed string (no network runs); records prompt use."""

  answers: dict = dataclasses.field(default_factory=dict)
  calls: list = dataclasses.field(default_factory=list)

  def predict_batch(self, params, batch, decoder='greedy', num_beams=4,
                    max_decode_length=None, eos_id=1, alpha=0.6):
    self.calls.append({'prompt_index': batch.get('prompt_index'), 'decoder': decoder,
                       'shape': batch['encoder_input_tokens'].shape})
    rows = []
    for tokens in np.asarray(batch['encoder_input_tokens']):
      text = self.vocabulary.decode([int(t) for t in tokens])
      ids = list(self.vocabulary.encode(self.answers[text])) + [eos_id]
      rows.append((ids + [0] * max_decode_length)[:max_decode_length])
    return np.asarray(rows, np.int32)


def _scripted_model(vocab, answers):
  config = t5.T5Config(vocab_size=2048, emb_dim=8, num_heads=1, head_dim=8, mlp_dim=8,
                       num_encoder_layers=1, num_decoder_layers=1,
                       prompt=prompts.PromptConfig(length=2, names=('rte',)))
  return ScriptedModel(t5.Transformer(config), vocabulary=vocab, answers=answers)


def _scripted_suites(**suite_kwargs):
  lengths = {'inputs': 64, 'targets': 16}
  target = evaluation.make_suite('evaltest_cls_1shot', role=evaluation.TARGET, prompt='rte',
                                 task_feature_lengths=lengths, display_names={
                                     'evaltest_cls_1shot': 'rte'})
  suite = evaluation.make_suite(['evaltest_qa_1shot', 'evaltest_cls_1shot'], name='fewshot',
                                task_feature_lengths=lengths, format_labels=LABELS,
                                name_prefixes=('evaltest_',), **suite_kwargs)
  return target, suite


def test_scores_norm_avg_and_format_specialization_on_known_outputs(scripted_tasks, mini_vocab):
  answers = dict(zip([q for q, _ in QA], QA_OUTPUTS)) | dict(zip([c for c, _ in CLS],
                                                                  CLS_OUTPUTS))
  model = _scripted_model(mini_vocab, answers)
  params = {'prompt': {'rte': np.zeros((2, 8), np.float32)}, 'encoder': {}}
  target, suite = _scripted_suites()
  result = evaluation.Evaluator([target, suite], evaluation.EvalSettings(batch_size=4)).evaluate(
      model, params, step=7)

  fewshot = result.suites['fewshot']
  qa, cls = fewshot.tasks['qa'], fewshot.tasks['cls']
  # QA: 'town ash', 'town bay' (cut at Q:), 'the town cove.' (SQuAD normalization) are right.
  assert qa.metrics == {'exact_match': pytest.approx(100 * 3 / 8)}
  assert qa.primary_metric == 'exact_match' and qa.score == pytest.approx(37.5)
  # Classification: the first word after the cut; 4 of 6 match.
  assert cls.score == pytest.approx(100 * 4 / 6)
  assert fewshot.norm_avg == pytest.approx((37.5 + 100 * 4 / 6) / 2)
  assert fewshot.norm_avg == pytest.approx(metrics.normalized_average(fewshot.scores))
  # 'True', 'False Q: x A:' and 'True.' are in the True/False format: 3 of 8.
  assert qa.format_specialization == pytest.approx(37.5)
  assert [p['in_label_format'] for p in qa.predictions] == [
      False, False, False, True, True, True, False, False]
  assert qa.predictions[1]['output'] == 'town bay Q: Where does'
  assert qa.predictions[1]['prediction'] == 'town bay'
  assert qa.predictions[0]['target'] == ['town ash', 'town ash city']
  assert qa.predictions[0]['inputs'] == QA[0][0]
  # The target suite: scored with its prompt, no Norm. Avg., no format measure.
  rte = result.suites['target'].tasks['rte']
  assert rte.prompt == 'rte' and rte.score == cls.score
  assert result.suites['target'].norm_avg is None and rte.format_specialization is None
  # The prompt was attached only for the target task's batches.
  with_prompt = [c for c in model.calls if c['prompt_index'] is not None]
  assert len(with_prompt) == 2 and all((c['prompt_index'] == 0).all() for c in with_prompt)
  assert len(model.calls) == 2 + 2 + 2  # 6 cls (2 batches of 4) twice + 8 qa (2 batches)
  assert all(c['shape'][0] == 4 for c in model.calls)  # the last batch is padded

  flat = result.flat_metrics()
  assert flat['rte/accuracy'] == pytest.approx(100 * 4 / 6)
  assert flat['fewshot/norm_avg'] == pytest.approx(fewshot.norm_avg)
  assert flat['fewshot/qa/exact_match'] == pytest.approx(37.5)
  assert flat['fewshot/qa/format_specialization'] == pytest.approx(37.5)
  assert result.step == 7

  # JSON round trip keeps everything but the per-example predictions.
  back = evaluation.EvalResult.from_json(result.to_json())
  assert back.flat_metrics() == flat
  assert back.suites['fewshot'].tasks['qa'].predictions == []


def test_a_suite_may_score_more_examples_than_the_settings_give(scripted_tasks, mini_vocab):
  """Suite.max_examples (TARGET_MAX_EXAMPLES) overrides EvalSettings.max_examples for its tasks."""
  answers = dict(zip([q for q, _ in QA], QA_OUTPUTS)) | dict(zip([c for c, _ in CLS], CLS_OUTPUTS))
  model = _scripted_model(mini_vocab, answers)
  params = {'prompt': {'rte': np.zeros((2, 8), np.float32)}, 'encoder': {}}
  lengths = {'inputs': 64, 'targets': 16}
  target = evaluation.make_suite('evaltest_cls_1shot', role=evaluation.TARGET, prompt='rte',
                                 task_feature_lengths=lengths, max_examples=5,
                                 display_names={'evaltest_cls_1shot': 'rte'})
  suite = evaluation.make_suite(['evaltest_qa_1shot', 'evaltest_cls_1shot'], name='fewshot',
                                task_feature_lengths=lengths, name_prefixes=('evaltest_',))
  result = evaluation.Evaluator([target, suite], evaluation.EvalSettings(batch_size=4, max_examples=3)
                                ).evaluate(model, params)
  assert result.suites['target'].tasks['rte'].num_examples == 5
  assert {t.num_examples for t in result.suites['fewshot'].tasks.values()} == {3}
  with pytest.raises(ValueError, match='max_examples must be positive'):
    evaluation.make_suite('evaltest_cls_1shot', max_examples=0)


def test_truncated_inputs_are_counted(scripted_tasks, mini_vocab):
  rows = [('Q: a b c d e f g h i j k l m n o p A:', 'x'), ('Q: short A:', 'y'),
          ('Q: one two three four five six seven eight nine ten A:', 'z')]
  model = _scripted_model(mini_vocab, {})
  length = 12
  expected = [len(mini_vocab.encode(q)) + 1 > length for q, _ in rows]
  assert sum(expected) == 2  # the test's premise
  # The model sees the truncated inputs: answer whatever decodes from them.
  data = evaluation.load_task_data('evaltest_long', 'eval', {'inputs': length, 'targets': 8})
  model.answers = {mini_vocab.decode([int(t) for t in row if t]): 'x' for row in data.inputs}
  suite = evaluation.make_suite('evaltest_long', name='long',
                                task_feature_lengths={'inputs': length, 'targets': 8})
  result = evaluation.evaluate(model, {}, [suite], evaluation.EvalSettings(batch_size=2))
  task = result.suites['long'].tasks['evaltest_long']
  assert task.truncated_inputs == 2 and task.truncated_targets == 0
  assert [p['truncated'] for p in task.predictions] == expected
  assert task.score == pytest.approx(100 / 3)


def test_references_longer_than_the_decode_length_are_warned_of(scripted_tasks, mini_vocab, capsys):
  # A model that answers every question right, decoded with room for 2 target tokens: the
  # outputs are cut, the score is capped, and the evaluation says so once.
  model = _scripted_model(mini_vocab, {q: t for q, t in QA})
  long = [t for _, t in QA if len(mini_vocab.encode(t)) + 1 > 2]
  assert long  # the test's premise: some references need more than 2 tokens
  scores = {}
  for targets in (2, 2, 16):
    suite = evaluation.make_suite('evaltest_qa_1shot', name='qa',
                                  task_feature_lengths={'inputs': 64, 'targets': targets})
    result = evaluation.evaluate(model, {}, [suite], evaluation.EvalSettings(batch_size=4))
    (task,) = result.suites['qa'].tasks.values()
    scores[targets] = task.score
    assert task.truncated_targets == (len(long) if targets == 2 else 0)
  err = capsys.readouterr().err
  assert err.count('longer than the decode length, 2 tokens') == 1, err
  assert f'{len(long)} of the {len(QA)} references' in err and 'decode length, 16' not in err
  assert scores[16] == 100.0 and scores[2] < 100.0


def test_bad_suites_fail_with_clear_errors(scripted_tasks):
  with pytest.raises(ValueError, match='not in the suite'):
    evaluation.Suite('s', ('evaltest_qa_1shot',), prompt_for_task={'other': 'rte'})
  with pytest.raises(ValueError, match='Unknown task or mixture'):
    evaluation.make_suite('no_such_task')
  with pytest.raises(ValueError, match='decoder'):
    evaluation.EvalSettings(decoder='sample')
  suite = evaluation.make_suite('evaltest_qa_1shot', prompt='rte')
  plain = t5.T5Config(vocab_size=2048, emb_dim=8, num_heads=1, head_dim=8, mlp_dim=8,
                      num_encoder_layers=1, num_decoder_layers=1)
  model = ScriptedModel(t5.Transformer(plain), answers={})
  with pytest.raises(ValueError, match='has no soft prompt'):
    evaluation.evaluate(model, {}, [suite])


# -----------------------------------------------------------------------------
# A tiny random T5 with a prompt.
# -----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny(copy_tasks):
  """(model, params): a tiny random T5 with a 4-token prompt named 'copy'."""
  vocab = copy_tasks
  config = t5.T5Config(vocab_size=128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=2, num_decoder_layers=2,
                       relative_attention_num_buckets=8, relative_attention_max_distance=20,
                       dropout_rate=0.1,  # a training setting: the evaluator turns it off
                       prompt=prompts.PromptConfig(length=4, names=('copy',)))
  model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config), vocabulary=vocab)
  return model, model.init_params(jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def copy_tasks(fixtures_dir):
  vocab = seqio.SentencePieceVocabulary(str(fixtures_dir / 'sentencepiece.model'), extra_ids=100)
  words = ['at', 'the', 'lo', 'cat', 'mat', 'sea', 'no', 'pie', 'tea', 'mop', 'dot', 'wet']
  rows = [(f'copy {w} {v}', f'{w} {v}') for w, v in zip(words, words[3:] + words[:3])]
  _register('evaltest_copy', rows, vocab, [metrics.exact_match],
            functools.partial(postprocessing.qa_postprocessor, prefixes=PREFIXES))
  _register('evaltest_copy_cls', [(f'is {w} a word', 'at' if i % 2 else 'no')
                                  for i, w in enumerate(words)], vocab, [metrics.accuracy],
            functools.partial(postprocessing.classification_postprocessor, prefixes=PREFIXES))
  yield vocab
  evaluation.clear_data_cache()


class SpyModel(encoder_decoder.EncoderDecoderModel):
  """Records whether each decode/rank batch carried a prompt_index."""

  log: list = []

  def predict_batch(self, params, batch, **kwargs):
    SpyModel.log.append(('decode', 'prompt_index' in batch, 'prompt' in params))
    return super().predict_batch(params, batch, **kwargs)

  def rank_classify(self, params, batch, label_token_ids, **kwargs):
    SpyModel.log.append(('rank', 'prompt_index' in batch, 'prompt' in params))
    return super().rank_classify(params, batch, label_token_ids, **kwargs)


def test_prompt_attached_only_where_asked_and_removed_means_plain_model(copy_tasks, tiny):
  model, params = tiny
  spy = SpyModel(model.module, vocabulary=copy_tasks)
  lengths = {'inputs': 16, 'targets': 8}
  settings = evaluation.EvalSettings(batch_size=8, length_buckets=())
  suite = evaluation.make_suite(['evaltest_copy', 'evaltest_copy_cls'], name='s',
                                task_feature_lengths=lengths, prompt={'evaltest_copy': 'copy'},
                                rank_classification={'evaltest_copy_cls': ('at', 'no')},
                                name_prefixes=('evaltest_',))
  SpyModel.log.clear()
  result = evaluation.evaluate(spy, params, [suite], settings)
  copy, cls = result.suites['s'].tasks['copy'], result.suites['s'].tasks['copy_cls']
  assert copy.prompt == 'copy' and cls.prompt is None
  # 12 examples in batches of 8: two calls per task. The prompted task ran the
  # prompt; the other ran the plain model (no prompt_index, no prompt params).
  assert SpyModel.log == [('decode', True, True)] * 2 + [('rank', False, False)] * 2
  assert cls.method == 'rank_classification'
  assert {p['prediction'] for p in cls.predictions} <= {'at', 'no'}
  hits = np.mean([p['prediction'] == p['target'] for p in cls.predictions])
  assert cls.score == pytest.approx(100 * hits)

  # "Removed" is the plain model: the same outputs as a model built without any
  # prompt, on the parameters without the prompt.
  plain_config = model.config.replace(prompt=None, dropout_rate=0.0)
  plain = encoder_decoder.EncoderDecoderModel(t5.Transformer(plain_config), vocabulary=copy_tasks)
  plain_params = {k: v for k, v in params.items() if k != 'prompt'}
  unprompted = evaluation.make_suite('evaltest_copy', name='s', task_feature_lengths=lengths)
  removed = evaluation.evaluate(model, params, [unprompted], settings).suites['s']
  reference = evaluation.evaluate(plain, plain_params, [unprompted], settings).suites['s']
  assert ([p['output'] for p in removed.tasks['evaltest_copy'].predictions]
          == [p['output'] for p in reference.tasks['evaltest_copy'].predictions])


def test_compiled_decoder_is_reused_across_tasks_calls_and_checkpoints(tiny):
  model, params = tiny
  lengths = {'inputs': 16, 'targets': 8}
  settings = evaluation.EvalSettings(batch_size=8, length_buckets=())
  suite = evaluation.make_suite(['evaltest_copy', 'evaltest_copy_cls'], name='s',
                                task_feature_lengths=lengths, name_prefixes=('evaltest_',))
  evaluator = evaluation.Evaluator([suite], settings)
  first = evaluator.evaluate(model, params)
  plain = evaluation.eval_model(model, keep_prompt=False)
  decode = encoder_decoder._compiled_decoder(plain.module, 'greedy', 1, 8, 1)
  compiled = decode._cache_size()
  assert compiled == 1  # one shape for both tasks
  # Another "checkpoint" (other values, a training dropout rate, no prompt at
  # all) reuses the same compiled function.
  other = jax.tree_util.tree_map(lambda x: x * 1.5, params)
  no_prompt = dataclasses.replace(model, module=model.module.clone(
      config=model.config.replace(prompt=None, dropout_rate=0.0)))
  second = evaluator.evaluate(model, other)
  evaluator.evaluate(no_prompt, {k: v for k, v in other.items() if k != 'prompt'})
  assert decode._cache_size() == compiled
  assert first.suites['s'].tasks['copy'].num_examples == 12
  outputs = [p['output'] for p in first.suites['s'].tasks['copy'].predictions]
  assert outputs != [p['output'] for p in second.suites['s'].tasks['copy'].predictions]


def test_training_evaluator_returns_flat_metrics(tiny, tmp_path):
  model, params = tiny
  evaluator = evaluation.TrainingEvaluator(
      target='evaltest_copy', fewshot=['evaltest_copy', 'evaltest_copy_cls'],
      target_split='validation', task_feature_lengths={'inputs': 16, 'targets': 8},
      format_labels=('at', 'no'), output_dir=str(tmp_path / 'eval'),
      settings=evaluation.EvalSettings(batch_size=8, max_examples=8, length_buckets=()))
  flat = evaluator(model, params, 10)
  assert set(flat) == {
      'evaltest_copy/exact_match', 'fewshot/norm_avg',
      'fewshot/evaltest_copy/exact_match', 'fewshot/evaltest_copy/format_specialization',
      'fewshot/evaltest_copy_cls/accuracy', 'fewshot/evaltest_copy_cls/format_specialization'}
  assert flat['fewshot/norm_avg'] == pytest.approx(np.mean(
      [flat['fewshot/evaltest_copy/exact_match'], flat['fewshot/evaltest_copy_cls/accuracy']]))
  # The target ran with the model's prompt ('auto'), the few-shot suite without it.
  result = evaluation.EvalResult.from_json(
      json.loads((tmp_path / 'eval' / 'step_10' / 'results.json').read_text()))
  assert result.suites['target'].tasks['evaltest_copy'].prompt == 'copy'
  assert result.suites['fewshot'].tasks['evaltest_copy'].prompt is None
  assert result.suites['fewshot'].tasks['evaltest_copy'].num_examples == 8
  assert (tmp_path / 'eval' / 'step_10' / 'predictions' / 'fewshot' / 'evaltest_copy.jsonl'
          ).read_text().count('\n') == 8
  assert evaluator.history[-1]['step'] == 10

