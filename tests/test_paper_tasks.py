"""The paper's seqio tasks: registration, templates character for character, truncation.

Nothing downloads: the tasks are registered again with the fixture
SentencePiece model under a test prefix; renders run on hand-made examples.
Every task on mock TFDS data: tests/test_paper_tasks_mock_tfds.py.
"""

import inspect

import numpy as np
import pytest
import seqio
import tensorflow as tf
from promot_t5x_tasks import fewshot, paper, preprocessors, templates, vocab

PREFIX = 'test_paper_'


@pytest.fixture(scope='module')
def fixture_vocabulary(fixtures_dir):
  return vocab.sentencepiece_vocabulary(str(fixtures_dir / 'sentencepiece.model'), extra_ids=0)


@pytest.fixture(scope='module')
def test_tasks(fixture_vocabulary):
  return paper.register_paper_tasks(fixture_vocabulary, prefix=PREFIX, overwrite=True)


def render_one(stem, raw, vocabulary, num_shots=0):
  """Renders one hand-made raw example with the paper's render for `stem`."""
  render = paper.PAPER_DATASETS[stem].make_render(vocabulary, num_shots,
                                                   paper.SUMMARIZATION_INPUT_LENGTH)
  examples = list(render(tf.data.Dataset.from_tensors(raw)).as_numpy_iterator())
  assert len(examples) == 1
  return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in examples[0].items()}


# ---------------------------------------------------------------------------
# Registration.
# ---------------------------------------------------------------------------


def test_import_registers_the_default_tasks_with_mt5_vocabulary():
  task = seqio.get_mixture_or_task('promot_rte')
  vocabulary = task.output_features['inputs'].vocabulary
  # Lazily loaded: importing never read gs:// (there is no network here).
  assert vocabulary.sentencepiece_model_file == vocab.MT5_SENTENCEPIECE_MODEL
  assert vocabulary.extra_ids == vocab.MT5_EXTRA_IDS
  assert task.output_features['targets'].add_eos


def test_names_follow_the_scheme(test_tasks):
  expected_tasks = {paper.task_name(stem, k, PREFIX)
                    for stem in paper.PAPER_DATASETS for k in paper.SHOTS}
  assert len(expected_tasks) == 36
  assert expected_tasks <= set(test_tasks)
  assert paper.task_name('rte', 0) == 'promot_rte'
  assert paper.task_name('cb', 1) == 'promot_cb_1shot'
  assert set(paper.FINETUNE_DATASETS) | set(paper.EVAL_DATASETS) == set(paper.PAPER_DATASETS)


def test_eval_and_multitask_mixtures(test_tasks):
  for k in paper.SHOTS:
    mixture = seqio.get_mixture_or_task(paper.eval_mixture_name(k, PREFIX))
    assert sorted(t.name for t in mixture.tasks) == sorted(
        paper.task_name(s, k, PREFIX) for s in paper.EVAL_DATASETS)
  assert 'promot_paper_1shot_eval' in seqio.MixtureRegistry.names()
  assert 'promot_paper_4shot_eval' in seqio.MixtureRegistry.names()
  multitask = seqio.get_mixture_or_task(paper.multitask_mixture_name(0, PREFIX))
  assert sorted(t.name for t in multitask.tasks) == [PREFIX + 'rte', PREFIX + 'wmt14_enfr']
  # Equal rates: RTE is not drowned by En-Fr.
  rates = {t.name: multitask.get_rate(t) for t in multitask.tasks}
  assert rates[PREFIX + 'rte'] == rates[PREFIX + 'wmt14_enfr']
  one_shot = seqio.get_mixture_or_task(paper.multitask_mixture_name(1, PREFIX))
  assert sorted(t.name for t in one_shot.tasks) == [PREFIX + 'rte_1shot',
                                                   PREFIX + 'wmt14_enfr_1shot']


@pytest.mark.parametrize('stem, tfds_name, scored, metric', [
    ('rte', 'super_glue/rte:1.0.2', 'validation', 'accuracy'),
    ('wmt14_enfr', 'wmt14_translate/fr-en:1.0.0', 'test', 'bleu'),
    ('cb', 'super_glue/cb:1.0.2', 'validation', 'accuracy'),
    ('wic', 'super_glue/wic:1.0.2', 'validation', 'accuracy'),
    ('triviaqa', 'trivia_qa/rc.nocontext:1.1.0', 'validation', 'exact_match'),
    ('webquestions', 'web_questions:1.0.0', 'test', 'exact_match'),
    ('wmt16_ende', 'wmt16_translate/de-en:1.0.0', 'test', 'bleu'),
    ('wmt16_enro', 'wmt16_translate/ro-en:1.0.0', 'test', 'bleu'),
    ('xsum', 'xsum:1.1.0', 'test', 'rouge2'),
    ('wikilingua_en', 'gem/wiki_lingua_english_en:1.1.0', 'test', 'rouge2'),
])
def test_datasets_sources_and_metrics(test_tasks, stem, tfds_name, scored, metric):
  dataset = paper.PAPER_DATASETS[stem]
  assert (dataset.tfds_name, dataset.scored_split, dataset.metric_name) == (
      tfds_name, scored, metric)
  task = seqio.get_mixture_or_task(paper.task_name(stem, 1, PREFIX))
  assert [fn.__name__ for fn in task.metric_fns] == [metric]
  assert paper.EVAL_SPLIT in task.source.splits and 'train' in task.source.splits
  assert task.source.config.num_shots == 1 and task.source.config.pool_split == 'train'


def test_the_prefixed_registration_uses_the_given_vocabulary(test_tasks, fixture_vocabulary):
  task = seqio.get_mixture_or_task(PREFIX + 'xsum_4shot')
  assert task.output_features['inputs'].vocabulary is fixture_vocabulary
  with pytest.raises(ValueError, match='already registered'):
    paper.register_paper_tasks(fixture_vocabulary, prefix=PREFIX)


# ---------------------------------------------------------------------------
# Templates, character for character (DESIGN.md, "The paper's experiment").
# ---------------------------------------------------------------------------


def test_rte_template_and_labels(fixture_vocabulary):
  raw = {'premise': 'The cat sat on the mat.', 'hypothesis': 'A cat is sitting.',
         'idx': 0, 'label': np.int64(0)}
  ex = render_one('rte', raw, fixture_vocabulary)
  assert ex['inputs'] == ('The cat sat on the mat. question: A cat is sitting. '
                          'Is it true or false? answer:')
  assert ex['targets'] == 'True'  # entailment
  assert render_one('rte', {**raw, 'label': np.int64(1)}, fixture_vocabulary)['targets'] == 'False'


def test_cb_and_snli_template_and_labels(fixture_vocabulary):
  raw = {'premise': 'It rained.', 'hypothesis': 'The street is wet.', 'idx': 0,
         'label': np.int64(0)}
  ex = render_one('cb', raw, fixture_vocabulary)
  assert ex['inputs'] == ('It rained. question: The street is wet. '
                          'Is it true or false or neither? answer:')
  # CB labels: entailment, contradiction, neutral.
  assert [render_one('cb', {**raw, 'label': np.int64(i)}, fixture_vocabulary)['targets']
          for i in range(3)] == ['True', 'False', 'Neither']
  # SNLI labels: entailment, neutral, contradiction.
  snli_raw = {'premise': 'It rained.', 'hypothesis': 'The street is wet.'}
  assert [render_one('snli', {**snli_raw, 'label': np.int64(i)}, fixture_vocabulary)['targets']
          for i in range(3)] == ['True', 'Neither', 'False']
  assert render_one('snli', {**snli_raw, 'label': np.int64(0)},
                    fixture_vocabulary)['inputs'] == ex['inputs']


def test_unlabelled_examples_are_dropped(fixture_vocabulary):
  render = paper.PAPER_DATASETS['snli'].make_render(fixture_vocabulary, 0, 1024)
  raw = tf.data.Dataset.from_tensor_slices(
      {'premise': ['a', 'b'], 'hypothesis': ['c', 'd'], 'label': np.array([-1, 2], np.int64)})
  assert [ex['targets'] for ex in render(raw).as_numpy_iterator()] == [b'False']


def test_wic_template_and_labels(fixture_vocabulary):
  raw = {'sentence1': 'He ate an apple.', 'sentence2': 'Apple sells phones.', 'word': 'apple',
         'start1': 0, 'start2': 0, 'end1': 0, 'end2': 0, 'idx': 0, 'label': np.int64(1)}
  ex = render_one('wic', raw, fixture_vocabulary)
  assert ex['inputs'] == ('He ate an apple. Apple sells phones. question: The word apple is used '
                          'in the same way in the two sentences. Is it true or false? answer:')
  assert ex['targets'] == 'True'
  assert render_one('wic', {**raw, 'label': np.int64(0)}, fixture_vocabulary)['targets'] == 'False'


def test_qa_template_and_answers(fixture_vocabulary):
  raw = {'question': 'Which planet is the largest?', 'question_id': 'q1',
         'question_source': 's', 'answer': {'value': 'Jupiter', 'aliases': ['Jupiter', 'Jove'],
                                            'normalized_aliases': ['jupiter', 'jove']}}
  ex = render_one('triviaqa', raw, fixture_vocabulary)
  assert ex['inputs'] == 'Q: Which planet is the largest? A:'
  assert ex['targets'] == 'Jupiter'
  assert list(ex['answers']) == [b'Jupiter', b'Jupiter', b'Jove']
  web = render_one('webquestions', {'question': 'who is the mayor of paris?', 'url': 'u',
                                    'answers': ['Anne Hidalgo', 'Hidalgo']}, fixture_vocabulary)
  assert web['inputs'] == 'Q: who is the mayor of paris? A:'
  assert web['targets'] == 'Anne Hidalgo'
  assert list(web['answers']) == [b'Anne Hidalgo', b'Hidalgo']


def test_openbookqa_rendering(fixture_vocabulary):
  raw = {'question': {'stem': 'The sun is', 'choice_A': 'a planet', 'choice_B': 'a star',
                      'choice_C': 'a moon', 'choice_D': 'a comet'},
         'answerKey': np.int64(1), 'fact1': '', 'humanScore': 0.0, 'clarity': 0.0,
         'turkIdAnonymized': ''}
  ex = render_one('openbookqa', raw, fixture_vocabulary)
  # The paper's table 7: the choices lettered, the letter as the answer, accuracy.
  assert ex['inputs'] == 'Q: The sun is A) a planet B) a star C) a moon D) a comet A:'
  assert ex['targets'] == 'B'
  dataset = paper.PAPER_DATASETS['openbookqa']
  assert dataset.metric_name == 'accuracy' and dataset.label_words == ('A', 'B', 'C', 'D')
  post = paper.postprocessor(dataset.family)
  assert post('B) a star Q: next', example=None, is_target=False) == 'B'


@pytest.mark.parametrize('stem, source_key, target_key, expected_prefix', [
    ('wmt14_enfr', 'en', 'fr', 'Translate English to French: '),
    ('wmt16_ende', 'en', 'de', 'Translate English to German: '),
    ('wmt16_enro', 'en', 'ro', 'Translate English to Romanian: '),
])
def test_translation_template(fixture_vocabulary, stem, source_key, target_key, expected_prefix):
  raw = {source_key: 'The house is blue.', target_key: 'Das Haus ist blau.'}
  ex = render_one(stem, raw, fixture_vocabulary)
  assert ex['inputs'] == expected_prefix + 'The house is blue.'
  assert ex['targets'] == 'Das Haus ist blau.'


def test_summarization_template(fixture_vocabulary):
  ex = render_one('xsum', {'document': 'Rain fell all day in Paris.',
                           'summary': 'It rained in Paris.'}, fixture_vocabulary)
  assert ex['inputs'] == 'Article: Rain fell all day in Paris. One sentence summary:'
  assert ex['targets'] == 'It rained in Paris.'
  assert not ex['article_truncated']
  wiki = render_one('wikilingua_en', {
      'gem_id': 'g', 'gem_parent_id': 'g', 'source': 'Open the box. Take the cat out.',
      'target': 'Free the cat.', 'references': ['Free the cat.'],
      'source_aligned': {'en': ''}, 'target_aligned': {'en': ''}}, fixture_vocabulary)
  assert wiki['inputs'] == 'Article: Open the box. Take the cat out. One sentence summary:'
  assert wiki['targets'] == 'Free the cat.'


def test_one_shot_rte_input_joins_demonstration_and_query(fixture_vocabulary):
  def dataset_fn(split, shuffle_files):
    del shuffle_files
    premise = {'train': ['Birds fly.'], 'validation': ['Fish swim.']}[split]
    hypothesis = {'train': ['Birds move.'], 'validation': ['Fish are dry.']}[split]
    return tf.data.Dataset.from_tensor_slices(
        {'premise': premise, 'hypothesis': hypothesis,
         'label': np.array([0 if split == 'train' else 1], np.int64)})

  source = seqio.FunctionDataSource(dataset_fn, splits=['train', 'validation'])
  task = fewshot.add_text_task(
      'test_paper_handmade_rte_1shot', source,
      paper.PAPER_DATASETS['rte'].make_render(fixture_vocabulary, 1, 1024),
      vocabulary=fixture_vocabulary,
      fewshot=fewshot.FewshotConfig(num_shots=1, pool_size=1, pool_candidates=10),
      overwrite=True)
  ex = next(task.get_dataset(None, split='validation', shuffle=False,
                             try_in_mem_cache=False).as_numpy_iterator())
  assert ex['inputs_pretokenized'].decode() == (
      'Birds fly. question: Birds move. Is it true or false? answer: True '
      'Fish swim. question: Fish are dry. Is it true or false? answer:')
  assert ex['targets_pretokenized'] == b'False'


# ---------------------------------------------------------------------------
# Truncation.
# ---------------------------------------------------------------------------


def test_summarization_inputs_are_cut_to_1024_tokens_as_a_whole(fixture_vocabulary):
  # The paper's truncation: the whole input, not each article; k-shot keeps the query.
  features = vocab.output_features(fixture_vocabulary)
  dataset = tf.data.Dataset.from_tensors({'inputs': tf.range(10, 2010), 'targets': tf.range(3)})
  for k, expected_start in ((0, 10), (4, 2010 - 1023)):
    out = dataset
    for step in preprocessors.text_to_text_preprocessors(k, max_input_tokens=1024)[1:]:
      # seqio passes a preprocessor only the arguments it names.
      given = {'output_features': features, 'sequence_length': {'inputs': 2048, 'targets': 8}}
      names = inspect.signature(step).parameters
      out = step(out, **{key: v for key, v in given.items() if key in names})
    ex = next(out.as_numpy_iterator())
    assert len(ex['inputs']) == 1024 and ex['inputs'][-1] == 1
    assert ex['inputs'][0] == expected_start


def test_summarization_tasks_keep_whole_articles_and_cut_the_input(fixture_vocabulary, test_tasks):
  ex = render_one('xsum', {'document': 'this is a test ' * 300, 'summary': 's'},
                  fixture_vocabulary, num_shots=4)
  assert not ex['article_truncated']  # no per-shot article budget any more
  task = seqio.get_mixture_or_task(PREFIX + 'xsum_4shot')
  assert any(getattr(p, 'keywords', {}).get('max_tokens') == paper.SUMMARIZATION_INPUT_LENGTH
             for p in task.preprocessors)
  rte = seqio.get_mixture_or_task(PREFIX + 'rte_4shot')
  assert not any(getattr(p, 'keywords', {}).get('max_tokens') for p in rte.preprocessors)


def test_article_budget_keeps_k_shot_inputs_within_1024_tokens():
  assert [preprocessors.article_token_budget(1024, k) for k in (0, 1, 4)] == [1007, 463, 137]
  with pytest.raises(ValueError, match='no room'):
    preprocessors.article_token_budget(64, 4)


def test_long_articles_are_cut_but_keep_the_template_suffix(fixture_vocabulary):
  render = preprocessors.summarization_render('document', 'summary', fixture_vocabulary,
                                              max_article_tokens=6)
  long_article = 'this is a test ' * 6  # letters the fixture vocabulary knows
  out = list(render(tf.data.Dataset.from_tensor_slices(
      {'document': [long_article, 'short'], 'summary': ['s1', 's2']})).as_numpy_iterator())
  cut, short = (ex['inputs'].decode() for ex in out)
  assert out[0]['article_truncated'] and not out[1]['article_truncated']
  assert cut.startswith('Article: this') and cut.endswith(' One sentence summary:')
  article = cut[len('Article: '):-len(' One sentence summary:')]
  assert len(fixture_vocabulary.encode(article)) <= 6 < len(fixture_vocabulary.encode(long_article))
  assert short == 'Article: short One sentence summary:'


def test_k_shot_inputs_are_trimmed_from_the_left(fixture_vocabulary):
  features = vocab.output_features(fixture_vocabulary)
  dataset = tf.data.Dataset.from_tensors({'inputs': tf.range(10, 20), 'targets': tf.range(3)})
  out = preprocessors.trim_inputs_from_left(dataset, features, {'inputs': 5, 'targets': 4})
  out = seqio.preprocessors.append_eos_after_trim(out, features, {'inputs': 5, 'targets': 4})
  ex = next(out.as_numpy_iterator())
  assert list(ex['inputs']) == [16, 17, 18, 19, 1]  # the query's end and EOS survive
  untouched = preprocessors.trim_inputs_from_left(dataset, features, None)
  assert len(next(untouched.as_numpy_iterator())['inputs']) == 10
  short = preprocessors.trim_inputs_from_left(dataset, features, {'inputs': 64})
  assert list(next(short.as_numpy_iterator())['inputs']) == list(range(10, 20))


def test_count_long_inputs(fixture_vocabulary):
  def dataset_fn(split, shuffle_files):
    del split, shuffle_files
    return tf.data.Dataset.from_tensor_slices({'en': ['a b', 'a b ' * 40, 'c'],
                                               'fr': ['x', 'y', 'z']})

  source = seqio.FunctionDataSource(dataset_fn, splits=['train', 'validation'])
  fewshot.add_text_task(
      'test_paper_count_lengths', source,
      preprocessors.translation_render('en', 'fr', 'English', 'French'),
      vocabulary=fixture_vocabulary, overwrite=True)
  lengths = [len(fixture_vocabulary.encode(templates.translation('English', 'French', s))) + 1
             for s in ['a b', 'a b ' * 40, 'c']]
  limit = sorted(lengths)[1]  # exactly one example is longer
  report = preprocessors.count_long_inputs('test_paper_count_lengths', 'validation',
                                           {'inputs': limit, 'targets': 64})
  assert report.num_examples == 3
  assert report.num_over_length == {'inputs': 1, 'targets': 0}
  assert report.fraction_over_length('inputs') == pytest.approx(1 / 3)
  assert report.num_articles_cut == 0
