"""The third synthetic world: the second's design drawn anew, with rare people and words in pretraining."""

import collections

import pytest
from promot_t5x_tasks.synthetic import world as W


@pytest.fixture(scope='module')
def world():
  return W.get_world(W.WORLD_V3)


def test_earlier_worlds_have_nothing_rare():
  for config in (W.WorldConfig(), W.WORLD_V2):
    w = W.get_world(config)
    assert w.rare_people == frozenset() and w.rare_words == frozenset()


def test_rare_subsets_are_a_share_of_people_and_content_words(world):
  assert len(world.rare_people) == round(0.3 * len(world.people))
  for words in (W.TR_NOUNS, W.TR_ADJECTIVES, W.TR_VERBS):
    assert len(world.rare_words & set(words)) == round(0.3 * len(words))
  assert not world.rare_words & set(W.TR_PREPOSITIONS)
  # A world of its own: other people and lexicons than the second world's.
  v2 = W.get_world(W.WORLD_V2)
  assert len(set(world.people) & set(v2.people)) < 5
  assert world.lexicons[W.DEUNA] != v2.lexicons[W.DEUNA]


def test_pretraining_documents_mention_rare_people_rarely(world):
  counts = collections.Counter()
  for i in range(1500):
    ex = world.pretraining_example('documents', i)
    text = f'{ex.inputs} {ex.targets}'
    counts.update(p for p in world.people if p in text.split() or f'{p}.' in text or f'{p}?' in text)
  rare = sum(counts[p] for p in world.rare_people) / len(world.rare_people)
  common = sum(counts[p] for p in world.people if p not in world.rare_people) / (
      len(world.people) - len(world.rare_people))
  assert common > 30 * max(rare, 0.1), (rare, common)


def _word_share(parses, words):
  world = W.get_world(W.WORLD_V3)
  used = [w for parsed in parses for w in W.words_of(world.translate_sentence(parsed, W.ENGLISH).lower())]
  return sum(w in words for w in used) / len(used)


def test_only_deuna_and_romali_pretraining_sentences_skip_rare_words(world):
  rare = set(world.rare_words)
  rng = world._rng('test')  # pylint: disable=protected-access
  skewed = [world._sample_item('ende', rng).fields[0] for _ in range(400)]  # pylint: disable=protected-access
  frenka = [world._sample_item('enfr', rng).fields[0] for _ in range(400)]  # pylint: disable=protected-access
  split = [item.fields[0] for item in world.items('ende', 'test')]
  assert _word_share(skewed, rare) < 0.02
  # Frenka (the fine-tuning language) and the tasks' items draw every word alike.
  assert _word_share(frenka, rare) > 0.12 and _word_share(split, rare) > 0.12


def test_the_tasks_ask_about_rare_people(world):
  asked = [item.fields[0] for item in world.items('triviaqa', W.EVAL_SPLIT)]
  share = sum(p in world.rare_people for p in asked) / len(asked)
  assert 0.2 < share < 0.4


def test_third_world_tasks_and_pretraining_mixture_are_registered():
  import seqio
  from promot_t5x_tasks.synthetic import tasks_v3

  for name in ('mini3_rte', 'mini3_enfr', 'mini3_ende_1shot', 'mini3_eval_1shot', tasks_v3.probe_name('rte_yn', 1),
               tasks_v3.probes_mixture_name(1), 'mini3_eval_1shot__toylang_v3'):
    assert name in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names(), name
  assert W.get_world(W.WORLD_V3).pretrain_rates == W.PRETRAIN_RATES_V3
  assert W.get_world(W.WORLD_V3).pretrain_components.count('inference_short') == 1
  mixture = seqio.get_mixture_or_task('mini3_pretrain')
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {f'mini3_pretrain_{c}': r for c, r in W.PRETRAIN_RATES_V3.items()}
  # The QA task asks the third world's facts.
  world = W.get_world(W.WORLD_V3)
  person, relation = world.items('triviaqa', W.EVAL_SPLIT)[0].fields
  ex = next(seqio.get_mixture_or_task('mini3_triviaqa_1shot').get_dataset(
      None, split='eval', shuffle=False, use_cached=False).as_numpy_iterator())
  assert person in ex['inputs_pretokenized'].decode().split('Q: ')[-1]
  assert ex['targets_pretokenized'].decode() == world.facts[person][relation]
  assert tasks_v3.TRANSFORM_NAMES == ('toylang_v3', 'cipher_v3')


def test_fine_tuning_templates_and_test_items_stay_out_of_its_pretraining(world):
  from test_synthetic_world_v2 import RTE_TEMPLATE

  held_out = {e.inputs for s in ('validation', 'test') for f in ('rte', 'enfr') for e in world.examples(f, s)}
  for component, rate in world.pretrain_rates.items():
    for i in range(int(600 * rate)):
      ex = world.pretraining_example(component, i)
      assert not RTE_TEMPLATE.search(ex.inputs) and 'Translate English to Frenka' not in ex.inputs
      assert 'It is not true that' not in ex.inputs and ex.query not in held_out
