"""Conjugate prompting: the transforms, the registry, and conjugate seqio tasks.

Every transform is checked on exact strings; invertible ones round-trip; a
small registered task is seen through a transform by seqio (inputs
transformed before tokenization, outputs inverted before the metric); the
gin route to a conjugate suite is exercised as a user would write it.
"""

import functools

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from promot_t5x_tasks import conjugate as nl
from promot_t5x_tasks import paper, templates

import gin
from promot_t5x import conjugate, metrics, postprocessing
from promot_t5x import data as data_lib

BYTES = seqio.ByteVocabulary()


def one_shot_rte(premise, hypothesis, demo=('A dog runs.', 'An animal moves.', 'True')):
  return templates.with_demonstrations(templates.binary_inference(premise, hypothesis),
                                       [(templates.binary_inference(*demo[:2]), demo[2])])


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------


def test_importing_the_task_module_registers_every_natural_language_transform():
  assert {'identity', 'french', 'spanish', 'dutch', 'hungarian', 'leetspeak',
          'pig_latin'} <= set(conjugate.list_transforms())
  assert conjugate.get_transform('french').invertible
  assert not conjugate.get_transform('leetspeak').invertible
  assert not conjugate.get_transform('pig_latin').invertible


def test_unknown_transform_error_lists_known_names_and_modules():
  with pytest.raises(ValueError, match="Unknown conjugate transform 'klingon'") as e:
    conjugate.get_transform('klingon')
  assert "'pig_latin'" in str(e.value)
  assert 'promot_t5x_tasks.synthetic.transforms' in str(e.value)


def test_transform_validation_and_duplicate_names(monkeypatch):
  # Register into a copy of the registry, so no other test sees 'test_upper'.
  monkeypatch.setattr(conjugate, '_REGISTRY', dict(conjugate._REGISTRY))
  with pytest.raises(ValueError, match='lower case'):
    conjugate.Transform('Bad Name', str.upper)
  with pytest.raises(ValueError, match='must not contain'):
    conjugate.Transform('a__b', str.upper)
  with pytest.raises(ValueError, match='no inverse_output'):
    conjugate.Transform('upper_no_inverse', str.upper, forward_target=str.upper)
  upper = conjugate.Transform('test_upper', str.upper, str.upper, str.lower)
  assert conjugate.register_transform(upper, overwrite=True) is upper
  with pytest.raises(ValueError, match='already registered'):
    conjugate.register_transform(conjugate.Transform('test_upper', str.lower))
  assert upper.invert(upper.apply_to_target('true')) == 'true'


# ---------------------------------------------------------------------------
# Translation of the templates.
# ---------------------------------------------------------------------------


def test_french_rte_one_shot_exact():
  french = conjugate.get_transform('french')
  prompt = one_shot_rte('The cat sat on the mat.', 'A cat is sitting.')
  assert french.apply_to_input(prompt) == (
      'A dog runs. question : An animal moves. Est-ce vrai ou faux ? réponse : Vrai '
      'The cat sat on the mat. question : A cat is sitting. Est-ce vrai ou faux ? réponse :')
  assert french.apply_to_target('False') == 'Faux'


@pytest.mark.parametrize('language, expected', [
    ('spanish', 'P. pregunta: H. ¿Es verdadero, falso o ninguno? respuesta: Ninguno'),
    ('dutch', 'P. vraag: H. Is het waar, onwaar of geen van beide? antwoord: Geen van beide'),
    ('hungarian', 'P. kérdés: H. Igaz, hamis vagy egyik sem? válasz: Egyik sem'),
])
def test_three_way_template_and_label_in_each_language(language, expected):
  prompt = templates.three_way_inference('P.', 'H.') + ' Neither'
  assert conjugate.get_transform(language).apply_to_input(prompt) == expected


def test_every_template_family_in_hungarian():
  hungarian = conjugate.get_transform('hungarian')
  assert hungarian.apply_to_input(templates.word_in_context('S1.', 'S2.', 'bank')) == (
      'S1. S2. kérdés: A két mondatban ugyanúgy használják ezt a szót: bank. '
      'Igaz vagy hamis? válasz:')
  qa = templates.with_demonstrations(templates.question_answering('Who?'),
                                     [(templates.question_answering('What?'), 'Paris')])
  assert hungarian.apply_to_input(qa) == 'K: What? V: Paris K: Who? V:'
  assert hungarian.apply_to_input(templates.translation('English', 'German', 'Hi.')) == (
      'Fordítsd le angolról németre: Hi.')
  # A language the data file does not name (the miniature's toy languages).
  assert hungarian.apply_to_input(templates.translation('English', 'Zorbish', 'Hi.')) == (
      'Fordítsd le angolról Zorbish nyelvre: Hi.')
  assert hungarian.apply_to_input(templates.summarization('Text.')) == (
      'Cikk: Text. Összefoglalás egy mondatban:')


def test_free_content_stays_english_unless_a_content_table_is_given():
  prompt = templates.binary_inference('The cat sat.', 'A cat sits.')
  plain = conjugate.get_transform('french').apply_to_input(prompt)
  assert plain.startswith('The cat sat. question : A cat sits.')
  with_table = nl.translation_transform(
      'french', content_table={'The cat sat.': 'Le chat était assis.'}, name='french_table')
  assert with_table.apply_to_input(prompt) == (
      'Le chat était assis. question : A cat sits. Est-ce vrai ou faux ? réponse :')


@pytest.mark.parametrize('language', nl.LANGUAGES)
def test_translated_labels_round_trip(language):
  transform = conjugate.get_transform(language)
  for label in templates.THREE_WAY_LABELS:
    assert transform.invert(transform.apply_to_target(label)) == label
  # Free-text targets are not touched either way.
  assert transform.invert(transform.apply_to_target('Barack Obama')) == 'Barack Obama'


def test_inverse_maps_leading_label_and_demonstration_prefixes_back():
  spanish = conjugate.get_transform('spanish')
  assert spanish.invert('verdadero. P: ¿Quién?') == 'True. Q: ¿Quién?'
  # The paper's postprocessors then cut and read the first word as in English.
  post = functools.partial(postprocessing.classification_postprocessor,
                           prefixes=templates.DEMONSTRATION_PREFIXES)
  assert post(spanish.invert('Falso P: otra pregunta')) == 'False'
  french = conjugate.get_transform('french')
  assert french.invert("Ni l'un ni l'autre, je pense") == 'Neither, je pense'
  assert french.invert('Vraiment pas') == 'Vraiment pas'  # Not the label 'Vrai'.


# ---------------------------------------------------------------------------
# Leetspeak.
# ---------------------------------------------------------------------------


def test_leetspeak_exact_and_round_trip():
  sentence = 'The cat never sleeps on the red mat.'
  leet = nl.to_leetspeak(sentence)
  assert leet == '7h3 c47 n3v3r 5l33p5 0n 7h3 r3d m47.'
  assert nl.from_leetspeak(leet) == sentence
  assert nl.from_leetspeak(nl.to_leetspeak('THE CAT SLEEPS.')) == 'THE CAT SLEEPS.'
  for label in templates.THREE_WAY_LABELS:
    assert nl.from_leetspeak(nl.to_leetspeak(label)) == label
  # Encoding commutes with upper-casing (the capitalization probe uses it).
  assert nl.to_leetspeak(sentence.upper()) == leet.upper()


def test_leetspeak_is_not_invertible_with_digits_and_short_words():
  # 'is' encodes to digits only and is kept as the number it looks like;
  # the original numbers survive.
  assert nl.to_leetspeak('What is 12 plus 7?') == 'Wh47 15 12 plu5 7?'
  assert nl.from_leetspeak('Wh47 15 12 plu5 7?') == 'What 15 12 plus 7?'


# ---------------------------------------------------------------------------
# Pig Latin.
# ---------------------------------------------------------------------------


def test_pig_latin_rules_exact():
  assert nl.to_pig_latin('Hello world, said the quiet queen!') == (
      'Ellohay orldway, aidsay ethay ietquay eenquay!')
  assert nl.to_pig_latin('STRING yellow rhythm apple psst I 42') == (
      'INGSTRAY ellowyay ythmrhay appleway psstay Iway 42')


def test_pig_latin_round_trip_on_the_probe_pool_with_the_lexicon():
  lexicon = nl.default_pig_latin_lexicon()
  for sentence in nl.load_sentence_pool()['english']:
    assert nl.from_pig_latin(nl.to_pig_latin(sentence), lexicon) == sentence
  transform = conjugate.get_transform('pig_latin')
  for label in templates.THREE_WAY_LABELS:
    assert transform.invert(transform.apply_to_target(label)) == label


def test_pig_latin_inverse_is_a_guess_without_lexicon():
  # Unambiguous words come back; 'orldway' could be 'orld' (vowel rule) or 'world'.
  assert nl.from_pig_latin('Ingstray eenquay ellowyay') == 'String queen yellow'
  assert nl.from_pig_latin('orldway') == 'orld'
  assert nl.from_pig_latin('orldway', lexicon=['world']) == 'world'


# ---------------------------------------------------------------------------
# Conjugate seqio tasks.
# ---------------------------------------------------------------------------

RAW = [('The cat sat on the mat.', 'A cat is sitting.', 'True'),
       ('It rains.', 'The sun shines.', 'False')]


@pytest.fixture(scope='module')
def base_task():
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        'inputs': [one_shot_rte(p, h) for p, h, _ in RAW],
        'targets': [label for _, _, label in RAW]})

  name = 'test_conjugate_rte_1shot'
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=('validation',)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(BYTES), 'targets': seqio.Feature(BYTES)},
      postprocess_fn=functools.partial(postprocessing.classification_postprocessor,
                                       prefixes=templates.DEMONSTRATION_PREFIXES),
      metric_fns=[metrics.accuracy])
  return name


def task_examples(name):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {'inputs': 512, 'targets': 32}, split='validation', shuffle=False)
  return list(ds.as_numpy_iterator())


def test_conjugate_task_transforms_text_before_tokenization(base_task):
  name = conjugate.register_conjugate(base_task, 'dutch')
  assert name == f'{base_task}__dutch'
  first = task_examples(name)[0]
  expected = ('A dog runs. vraag: An animal moves. Is het waar of onwaar? antwoord: Waar '
              'The cat sat on the mat. vraag: A cat is sitting. Is het waar of onwaar? antwoord:')
  assert first['inputs_pretokenized'].decode() == expected
  assert first['targets_pretokenized'].decode() == 'Waar'
  # Tokens are the transformed text's (the transform ran before tokenize).
  assert BYTES.decode(first['inputs'][:-1].tolist()) == expected
  # The base task is unchanged.
  assert task_examples(base_task)[0]['targets_pretokenized'] == b'True'


@pytest.mark.parametrize('transform', ['french', 'leetspeak', 'pig_latin'])
def test_conjugate_postprocessor_inverts_before_the_metric(base_task, transform):
  name = conjugate.register_conjugate(base_task, transform)
  task = seqio.get_mixture_or_task(name)
  t = conjugate.get_transform(transform)
  examples = task_examples(name)
  targets = [task.postprocess_fn(ex['targets_pretokenized'].decode(), example=ex,
                                 is_target=True) for ex in examples]
  assert targets == ['True', 'False']
  # The model answers in the conjugate form and goes on with a demonstration.
  outputs = [t.apply_to_target('True') + ' ' + t.apply_to_input('Q: more'),
             t.apply_to_target('True')]
  predictions = [task.postprocess_fn(o, example=ex, is_target=False)
                 for o, ex in zip(outputs, examples)]
  assert predictions == ['True', 'True']
  assert task.metric_fns[0](targets, predictions) == {'accuracy': 50.0}


def test_identity_and_mixture_conjugates(base_task):
  assert conjugate.register_conjugate(base_task, 'identity') == base_task
  mixture = 'test_conjugate_mixture'
  seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, [(base_task, 2.0)])
  name = conjugate.register_conjugate(mixture, 'spanish')
  assert name == 'test_conjugate_mixture__spanish'
  conj = seqio.get_mixture_or_task(name)
  assert [t.name for t in conj.tasks] == [f'{base_task}__spanish']
  assert conj.get_rate(conj.tasks[0]) == 2.0


def test_register_conjugate_errors_name_the_problem(base_task):
  with pytest.raises(ValueError, match='neither a registered seqio task nor mixture'):
    conjugate.register_conjugate('no_such_task', 'french')
  with pytest.raises(ValueError, match='Unknown conjugate transform'):
    conjugate.register_conjugate(base_task, 'klingon')
  seqio.TaskRegistry.remove('test_conjugate_no_tokenize')
  seqio.TaskRegistry.add('test_conjugate_no_tokenize',
                         source=seqio.TaskRegistry.get(base_task).source, preprocessors=[],
                         output_features={'inputs': seqio.Feature(BYTES)})
  with pytest.raises(ValueError, match='no seqio.preprocessors.tokenize'):
    conjugate.register_conjugate('test_conjugate_no_tokenize', 'french')


def test_a_suite_is_evaluated_under_a_transform_chosen_in_gin(base_task):
  gin.clear_config()
  try:
    gin.parse_config(f"""
        from __gin__ import dynamic_registration
        from promot_t5x import conjugate
        from promot_t5x import data

        CONJUGATE_TRANSFORM = 'hungarian'
        data.DatasetConfig:
          mixture_or_task_name = @conjugate.register_conjugate()
          task_feature_lengths = {{'inputs': 512, 'targets': 32}}
          split = 'validation'
        conjugate.register_conjugate:
          mixture_or_task_name = '{base_task}'
          transform_name = %CONJUGATE_TRANSFORM
          modules = ['promot_t5x_tasks.conjugate']
    """)
    config = gin.get_configurable(data_lib.DatasetConfig)()
  finally:
    gin.clear_config()
  assert config.mixture_or_task_name == f'{base_task}__hungarian'
  first = task_examples(config.mixture_or_task_name)[0]
  assert first['targets_pretokenized'].decode() == 'Igaz'


def test_conjugate_of_a_paper_task_on_mock_tfds():
  prefix = 'test_conjugate_paper_'
  paper.register_paper_tasks(BYTES, prefix=prefix, shots=(0, 1), overwrite=True)
  name = conjugate.register_conjugate(paper.task_name('rte', 1, prefix), 'french')
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=4):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        {'inputs': 2048, 'targets': 16}, split='validation', shuffle=False,
        use_cached=False, try_in_mem_cache=False)
    ex = next(iter(ds.as_numpy_iterator()))
  inputs = ex['inputs_pretokenized'].decode()
  # One demonstration and the query, both in the French frame.
  assert inputs.count('Est-ce vrai ou faux ? réponse :') == 2
  assert 'Is it true' not in inputs
  assert ex['targets_pretokenized'].decode() in ('Vrai', 'Faux')


def test_pig_latin_lexicon_order_breaks_ties_between_real_words():
  # 'armway' is both 'arm' (vowel rule) and 'warm' (w moved): the earlier word wins.
  assert nl.to_pig_latin('arm') == nl.to_pig_latin('warm') == 'armway'
  assert nl.from_pig_latin('armway', lexicon=['warm', 'arm']) == 'warm'
  assert nl.from_pig_latin('armway', lexicon=['arm', 'warm']) == 'arm'
