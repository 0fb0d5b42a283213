"""The in-context-learning-vs-instruction probe (Kotha et al.) as seqio tasks.

Prompts are checked character for character (prompt 0 of each rendering,
fixed seed), their counts and parallelism across languages, and the scoring
on hand-made model outputs, both directly and through the seqio task.
"""

import pytest
import seqio
from promot_t5x_tasks import conjugate as nl

from promot_t5x import conjugate

PREFIX = 'test_probe'

# Prompt 0 of capitalize x arithmetic (seed 0) in every rendering: the same
# sentences (pool rows) and numbers, 21 + 5.
CAPITALIZE_ARITHMETIC_0 = {
    'english': (
        'Capitalize every character. Input: The sky is grey today. Output: THE SKY IS GREY '
        'TODAY. Input: Our house has a green door. Output: OUR HOUSE HAS A GREEN DOOR. '
        'Input: What is 21 plus 5? Output:', 'WHAT IS 21 PLUS 5?'),
    'french': (
        "Mettez chaque caractère en majuscule. Entrée : Le ciel est gris aujourd'hui. "
        "Sortie : LE CIEL EST GRIS AUJOURD'HUI. Entrée : Notre maison a une porte verte. "
        'Sortie : NOTRE MAISON A UNE PORTE VERTE. Entrée : Combien font 21 plus 5 ? Sortie :',
        'COMBIEN FONT 21 PLUS 5 ?'),
    'spanish': (
        'Escribe cada carácter en mayúscula. Entrada: El cielo está gris hoy. Salida: EL '
        'CIELO ESTÁ GRIS HOY. Entrada: Nuestra casa tiene una puerta verde. Salida: NUESTRA '
        'CASA TIENE UNA PUERTA VERDE. Entrada: ¿Cuánto es 21 más 5? Salida:',
        '¿CUÁNTO ES 21 MÁS 5?'),
    'dutch': (
        'Zet elk teken in hoofdletters. Invoer: De lucht is vandaag grijs. Uitvoer: DE LUCHT '
        'IS VANDAAG GRIJS. Invoer: Ons huis heeft een groene deur. Uitvoer: ONS HUIS HEEFT '
        'EEN GROENE DEUR. Invoer: Wat is 21 plus 5? Uitvoer:', 'WAT IS 21 PLUS 5?'),
    'hungarian': (
        'Írj minden karaktert nagybetűvel. Bemenet: Ma szürke az ég. Kimenet: MA SZÜRKE AZ '
        'ÉG. Bemenet: A házunknak zöld ajtaja van. Kimenet: A HÁZUNKNAK ZÖLD AJTAJA VAN. '
        'Bemenet: Mennyi 21 plusz 5? Kimenet:', 'MENNYI 21 PLUSZ 5?'),
    'leetspeak': (
        'C4p174l1z3 3v3ry ch4r4c73r. 1npu7: 7h3 5ky 15 gr3y 70d4y. 0u7pu7: 7H3 5KY 15 GR3Y '
        '70D4Y. 1npu7: 0ur h0u53 h45 4 gr33n d00r. 0u7pu7: 0UR H0U53 H45 4 GR33N D00R. '
        '1npu7: Wh47 15 21 plu5 5? 0u7pu7:', 'WH47 15 21 PLU5 5?'),
    'pig_latin': (
        'Apitalizecay everyway aracterchay. Inputway: Ethay yskay isway eygray odaytay. '
        'Outputway: ETHAY YSKAY ISWAY EYGRAY ODAYTAY. Inputway: Ourway ousehay ashay away '
        'eengray oorday. Outputway: OURWAY OUSEHAY ASHAY AWAY EENGRAY OORDAY. Inputway: '
        'Atwhay isway 21 usplay 5? Outputway:', 'ATWHAY ISWAY 21 USPLAY 5?'),
}


@pytest.mark.parametrize('rendering', nl.PROBE_RENDERINGS)
def test_first_prompt_of_each_rendering_exact(rendering):
  example = nl.probe_examples('capitalize', 'arithmetic', rendering)[0]
  assert (example.inputs, example.targets) == CAPITALIZE_ARITHMETIC_0[rendering]
  assert example.instruction_answer == example.instruction_answer_plain == '26'


def test_blank_query_repeat_task_exact():
  example = nl.probe_examples('repeat', 'blank', 'english')[0]
  assert example.inputs == (
      'Repeat the input. Input: The king lives in a castle. Output: The king lives in a '
      'castle. Input: The light in the hall is off. Output: The light in the hall is off. '
      'Input: Fill in the blank: ___ cats sleep on the sofa. Output:')
  assert example.targets == 'Fill in the blank: ___ cats sleep on the sofa.'
  assert example.instruction_answer == 'Two'
  hungarian = nl.probe_examples('repeat', 'blank', 'hungarian')[0]
  assert hungarian.targets == 'Töltsd ki a hiányzó szót: ___ macska alszik a kanapén.'
  assert hungarian.instruction_answer == 'Két'  # 'Két macska alszik a kanapén.'
  pig = nl.probe_examples('repeat', 'blank', 'pig_latin')[0]
  assert pig.targets == 'Illfay inway ethay ankblay: ___ atscay eepslay onway ethay ofasay.'
  assert (pig.instruction_answer, pig.instruction_answer_plain) == ('Otway', 'Two')


def test_one_hundred_prompts_fixed_by_the_seed_and_parallel_across_languages():
  for icl_task in nl.ICL_TASKS:
    for kind in nl.QUERY_KINDS:
      english = nl.probe_examples(icl_task, kind, 'english')
      assert len(english) == nl.NUM_PROBE_PROMPTS == 100
      assert english == nl.probe_examples(icl_task, kind, 'english')
      french = nl.probe_examples(icl_task, kind, 'french')
      # Same numbers (arithmetic) or the same pool row (blank) in every language.
      assert [e.instruction_answer_plain for e in english if kind == 'arithmetic'] == [
          f.instruction_answer_plain for f in french if kind == 'arithmetic']
      for e in english:
        expected = e.inputs.rsplit(' Input: ', 1)[1].removesuffix(' Output:')
        assert e.targets == (expected.upper() if icl_task == 'capitalize' else expected)
  assert nl.probe_examples('repeat', 'blank', seed=1) != nl.probe_examples('repeat', 'blank')


@pytest.mark.parametrize('rendering', nl.PROBE_RENDERINGS)
def test_following_the_in_context_task_never_reads_as_answering(rendering):
  # E.g. Leetspeak writes 'is' as 15: no arithmetic prompt has the sum 15.
  for icl_task in nl.ICL_TASKS:
    for kind in nl.QUERY_KINDS:
      for e in nl.probe_examples(icl_task, kind, rendering):
        t = target(e.targets, e.instruction_answer, kind, e.instruction_answer_plain)
        assert not nl.answers_instruction(e.targets, t), e


def test_translated_pool_is_parallel_and_complete():
  pool = nl.load_sentence_pool()
  assert set(pool) == set(nl.PROBE_LANGUAGES)
  assert {len(v) for v in pool.values()} == {200}
  assert pool['french'][0] == 'Le chien dort sous la table.'
  for sentences in pool.values():
    assert len(set(sentences)) == len(sentences)
    assert all(' ' in s and not any(c.isdigit() for c in s) for s in sentences)


# ---------------------------------------------------------------------------
# Scoring on hand-made outputs.
# ---------------------------------------------------------------------------


def target(in_context, instruction, kind, plain=None):
  return {'in_context': in_context, 'instruction': instruction,
          'instruction_plain': plain or instruction, 'query_kind': kind}


def test_follows_in_context_task_on_hand_made_outputs():
  targets = [target('WHAT IS 21 PLUS 5?', '26', 'arithmetic')] * 4 + [
      target('Fill in the blank: ___ cats sleep.', 'Two', 'blank'),
      target('Illfay inway ethay ankblay: ___ atscay.', 'Otway', 'blank', plain='Two')]
  predictions = [
      'WHAT IS 21 PLUS 5?',  # follows the in-context task
      'The answer is 26.',  # answers the instruction
      'What is 21 plus 5?',  # neither (did not capitalize)
      '126',  # neither: 26 only inside another number
      'two.',  # answers the blank (any case, punctuation stripped)
      'Two cats sleep.',  # the plain-English answer to the encoded prompt counts too
  ]
  scores = nl.follows_in_context_task(targets, predictions)
  assert scores == {'follows_in_context_task': pytest.approx(100 / 6),
                    'answered_instruction': pytest.approx(300 / 6)}
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    nl.follows_in_context_task(targets[:2], predictions[:1])


def test_postprocessor_cuts_at_the_next_input_marker_in_the_rendering():
  assert nl.probe_stop_marker('french') == 'Entrée :'
  assert nl.probe_stop_marker('leetspeak') == '1npu7:'
  assert nl.probe_stop_marker('pig_latin') == 'Inputway:'
  post = lambda out, r: nl.probe_postprocessor(out, stop_marker=nl.probe_stop_marker(r))
  assert post('COMBIEN FONT 21 PLUS 5 ?  Entrée : autre', 'french') == 'COMBIEN FONT 21 PLUS 5 ?'
  assert post('WH47 15 21 PLU5 5? 1NPU7: x', 'leetspeak') == 'WH47 15 21 PLU5 5?'
  with pytest.raises(ValueError, match='needs the example'):
    nl.probe_postprocessor('x', is_target=True, stop_marker='Input:')


@pytest.fixture(scope='module')
def probe_tasks(fixtures_dir):
  vocabulary = seqio.SentencePieceVocabulary(str(fixtures_dir / 'sentencepiece.model'))
  return nl.register_probe_tasks(vocabulary, prefix=PREFIX, num_prompts=4)


def test_registration_names_and_native_conjugates(probe_tasks):
  assert len(probe_tasks) == 7 * (4 + 1)
  english = nl.probe_mixture_name('english', PREFIX)
  assert english == 'test_probe_icl_probe'
  # The translated probes are the registered conjugates of the English one.
  assert conjugate.register_conjugate(english, 'dutch') == 'test_probe_icl_probe__dutch'
  dutch = seqio.get_mixture_or_task('test_probe_icl_probe__dutch')
  assert sorted(t.name for t in dutch.tasks) == sorted(
      nl.probe_task_name(i, q, 'dutch', PREFIX) for i in nl.ICL_TASKS for q in nl.QUERY_KINDS)
  name = conjugate.register_conjugate(nl.probe_task_name('repeat', 'blank', prefix=PREFIX),
                                      'dutch')
  assert seqio.get_mixture_or_task(name) is seqio.TaskRegistry.get(
      nl.probe_task_name('repeat', 'blank', 'dutch', PREFIX))
  # The default registration (mT5's vocabulary) happened at import.
  assert 'promot_icl_probe__hungarian' in seqio.MixtureRegistry.names()


@pytest.mark.parametrize('rendering', ['spanish', 'leetspeak'])
def test_probe_task_scores_hand_made_outputs_through_seqio(probe_tasks, rendering):
  task = seqio.get_mixture_or_task(nl.probe_task_name('capitalize', 'arithmetic', rendering,
                                                      PREFIX))
  ds = task.get_dataset({'inputs': 512, 'targets': 128}, split=nl.PROBE_SPLIT, shuffle=False)
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 4
  assert examples[0]['inputs_pretokenized'].decode() == CAPITALIZE_ARITHMETIC_0[rendering][0]
  targets = [task.postprocess_fn(ex['targets_pretokenized'], example=ex, is_target=True)
             for ex in examples]
  marker = nl.probe_stop_marker(rendering)
  outputs = [targets[0]['in_context'] + f' {marker} more',  # follows, then continues
             targets[1]['instruction'],  # answers the sum
             targets[2]['in_context'].lower(),  # neither
             targets[3]['in_context']]  # follows
  predictions = [task.postprocess_fn(o, example=ex) for o, ex in zip(outputs, examples)]
  assert task.metric_fns[0](targets, predictions) == {
      'follows_in_context_task': 50.0, 'answered_instruction': 25.0}
