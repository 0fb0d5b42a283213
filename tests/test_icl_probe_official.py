"""The ICL-vs-instruction probe with the official protocol (Kotha et al.'s code).

Prompt text character for character on fixed examples, the blank query's
underscores, first-word scoring with and without a leading space, the
exact-match column, and the seqio tasks end to end on hand-made outputs.
"""

import pytest
import seqio
from promot_t5x_tasks import conjugate as nl
from promot_t5x_tasks import icl_probe

from promot_t5x import conjugate

PREFIX = 'test_official'


def test_render_prompt_layout():
  assert icl_probe.render_prompt(
      'Capitalize every character.', [('The dog runs.', 'THE DOG RUNS.'),
                                      ('We eat.', 'WE EAT.')], 'What is 4 times 20?') == (
      'Capitalize every character.\n\n'
      'Input: The dog runs.\nOutput: THE DOG RUNS.\n\n'
      'Input: We eat.\nOutput: WE EAT.\n\n'
      'Input: What is 4 times 20?\nOutput:')


def test_first_prompts_exact():
  math = icl_probe.official_probe_examples('capitalize', 'math')[0]
  assert math.inputs == (
      'Capitalize every character.\n\n'
      'Input: The horse runs across the field.\nOutput: THE HORSE RUNS ACROSS THE FIELD.\n\n'
      'Input: My parents live in the country.\nOutput: MY PARENTS LIVE IN THE COUNTRY.\n\n'
      'Input: What is 9 minus 7?\nOutput:')
  assert (math.targets, math.first_word_answer, math.instruction_answer) == (
      'WHAT IS 9 MINUS 7?', 'WHAT', '2')
  blank = icl_probe.official_probe_examples('repeat', 'blank')[0]
  assert blank.inputs.endswith('Input: ___ phone rings twice.\nOutput:')
  assert (blank.first_word_answer, blank.instruction_answer) == ('___', 'The')
  french = icl_probe.official_probe_examples('capitalize', 'math', 'french')[0]
  assert french.inputs == (
      'Mettez chaque caractère en majuscule.\n\n'
      'Entrée : Le cheval court à travers le champ.\nSortie : LE CHEVAL COURT À TRAVERS LE '
      'CHAMP.\n\nEntrée : Mes parents vivent à la campagne.\nSortie : MES PARENTS VIVENT À LA '
      'CAMPAGNE.\n\nEntrée : Combien font 9 moins 7 ?\nSortie :')
  assert french.first_word_answer == 'COMBIEN'
  leet = icl_probe.official_probe_examples('capitalize', 'math', 'leetspeak')[0]
  assert leet.inputs.endswith('1npu7: Wh47 15 9 m1nu5 7?\n0u7pu7:')
  assert leet.first_word_answer == 'WH47'
  pig = icl_probe.official_probe_examples('repeat', 'blank', 'pig_latin')[0]
  # Encoded first, then blanked: underscores of the encoded word ('Ethay').
  assert pig.inputs.endswith('Inputway: _____ onephay ingsray icetway.\nOutputway:')
  assert pig.first_word_answer == '_____'


def test_blank_is_underscores_of_the_first_words_length():
  assert icl_probe.blank_first_word('The dog sleeps.') == ('___ dog sleeps.', 'The')
  assert icl_probe.blank_first_word('Yesterday it rained.') == ('_________ it rained.',
                                                               'Yesterday')
  with pytest.raises(ValueError, match='two or more words'):
    icl_probe.blank_first_word('Hello.')
  for e in icl_probe.official_probe_examples('capitalize', 'blank', 'english'):
    query = e.inputs.rsplit('Input: ', 1)[1].removesuffix('\nOutput:')
    blank, rest = query.split(' ', 1)
    assert set(blank) == {'_'} and len(blank) == len(e.instruction_answer)
    assert e.first_word_answer == blank  # Capitalizing underscores leaves them.
    assert 'Fill in the blank' not in e.inputs


def test_sampling_protocol():
  for icl_task, kind in icl_probe.TASK_PAIRS:
    examples = icl_probe.official_probe_examples(icl_task, kind)
    assert len(examples) == 100
    assert examples == icl_probe.official_probe_examples(icl_task, kind)
    assert all(e.inputs.count('\n\n') == 3 for e in examples)
  queries = [e.targets for e in icl_probe.official_probe_examples('repeat', 'math')]
  operands = [(int(q.split()[2]), q.split()[3], int(q.split()[4].rstrip('?'))) for q in queries]
  assert all(4 <= a <= 20 and 4 <= b <= 20 for a, _, b in operands)
  assert {op for _, op, _ in operands} == {'plus', 'minus', 'times'}
  # Parallel across renderings: the same numbers in Dutch.
  dutch = icl_probe.official_probe_examples('repeat', 'math', 'dutch')
  assert [e.instruction_answer for e in dutch] == [
      e.instruction_answer for e in icl_probe.official_probe_examples('repeat', 'math')]
  assert icl_probe.official_probe_examples('repeat', 'math', seed=1) != (
      icl_probe.official_probe_examples('repeat', 'math'))


def test_first_word_scoring_with_and_without_a_leading_space():
  assert icl_probe.starts_with_icl_answer('WHAT IS 9 MINUS 7?', 'WHAT')
  assert icl_probe.starts_with_icl_answer(' WHAT is', 'WHAT')
  assert icl_probe.starts_with_icl_answer('WHATEVER', 'WHAT')  # a prefix is enough, as in the paper
  assert not icl_probe.starts_with_icl_answer('  WHAT', 'WHAT')  # one space only
  assert not icl_probe.starts_with_icl_answer('What is', 'WHAT')
  assert not icl_probe.starts_with_icl_answer('2', 'WHAT')
  assert icl_probe.starts_with_icl_answer(' ___ phone', '___')
  assert not icl_probe.starts_with_icl_answer('The phone', '___')


def test_metric_official_and_exact_columns():
  t = {'first_word': 'WHAT', 'in_context': 'WHAT IS 9 MINUS 7?', 'marker': 'Input:'}
  predictions = ['WHAT IS 9 MINUS 7?\n\nInput: x',  # both
                 ' WHAT IS 9',  # official only (cut short)
                 '2',  # neither
                 'what is 9 minus 7?']  # neither
  assert icl_probe.official_probe_metric([t] * 4, predictions) == {
      'starts_with_icl_answer': 50.0, 'exact_match_icl_answer': 25.0}
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    icl_probe.official_probe_metric([t] * 2, predictions[:1])


@pytest.fixture(scope='module')
def tasks(fixtures_dir):
  vocabulary = seqio.SentencePieceVocabulary(str(fixtures_dir / 'sentencepiece.model'))
  return icl_probe.register_official_probe_tasks(vocabulary, prefix=PREFIX, num_prompts=4)


def test_registration_and_native_conjugates(tasks):
  assert len(tasks) == len(nl.PROBE_RENDERINGS) * (4 + 1)
  english = icl_probe.mixture_name('english', PREFIX)
  assert english == 'test_official_icl_probe_official'
  assert conjugate.register_conjugate(english, 'pig_latin') == (
      'test_official_icl_probe_official__pig_latin')
  assert 'promot_icl_probe_official__hungarian' in seqio.MixtureRegistry.names()


def test_task_scores_hand_made_outputs_through_seqio(tasks):
  task = seqio.get_mixture_or_task(icl_probe.task_name('capitalize', 'math', 'french', PREFIX))
  ds = task.get_dataset({'inputs': 512, 'targets': 64}, split=icl_probe.SPLIT, shuffle=False)
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 4
  first = icl_probe.official_probe_examples('capitalize', 'math', 'french')[0]
  assert examples[0]['inputs_pretokenized'].decode() == first.inputs
  targets = [task.postprocess_fn(ex['targets_pretokenized'], example=ex, is_target=True)
             for ex in examples]
  outputs = [' ' + targets[0]['in_context'] + '\n\nEntrée : encore',  # both scores
             'COMBIEN FONT',  # first word only
             examples[2]['instruction_answer'].decode(),  # answers the question
             targets[3]['in_context'].lower()]  # neither
  predictions = [task.postprocess_fn(o, example=ex) for o, ex in zip(outputs, examples)]
  assert predictions[0] == outputs[0]  # Raw: the leading space is the metric's business.
  assert task.metric_fns[0](targets, predictions) == {
      'starts_with_icl_answer': 50.0, 'exact_match_icl_answer': 25.0}


def test_eval_gin_decodes_greedy_with_ten_new_tokens_over_every_rendering():
  import gin  # pylint: disable=g-import-not-at-top
  from promot_t5x import evaluation, gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse(['miniature/model.gin', 'eval/icl_probe_official.gin'],
                  ["CHECKPOINT_PATH = '/tmp/x'", "EVAL_OUTPUT_DIR = '/tmp/y'"], finalize=False)
  try:
    settings = gin.get_configurable(evaluation.EvalSettings)()
    assert (settings.decoder, settings.max_decode_length) == ('greedy', 10)
    suites = gin.query_parameter('%EVAL_SUITE')
    assert suites == [icl_probe.mixture_name(r) for r in nl.PROBE_RENDERINGS]
    assert all(s in seqio.MixtureRegistry.names() for s in suites)
  finally:
    gin.clear_config()
