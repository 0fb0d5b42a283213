"""The miniature's synthetic world: determinism, templates, splits, pretraining, vocabulary."""

import re

import numpy as np
import pytest
import sentencepiece as spm
from promot_t5x_tasks import templates
from promot_t5x_tasks.synthetic import vocabulary as vocabulary_lib
from promot_t5x_tasks.synthetic import world as world_lib

W = world_lib


@pytest.fixture(scope='module')
def world():
  return world_lib.get_world()


@pytest.fixture(scope='module')
def pretraining_sample(world):
  """A few thousand pretraining examples from every component, by their rates."""
  out = []
  for component, rate in W.PRETRAIN_RATES.items():
    out += [(component, world.pretraining_example(component, i)) for i in range(int(3000 * rate))]
  return out


@pytest.fixture(scope='module')
def sentencepiece_model():
  return spm.SentencePieceProcessor(model_file=vocabulary_lib.SPM_PATH)


def test_same_seed_same_world_and_streams():
  a, b = W.World(W.WorldConfig()), W.World(W.WorldConfig())
  assert a.facts == b.facts and a.lexicons == b.lexicons and a.lumic == b.lumic
  for family in W.ALL_FAMILIES:
    assert a.examples(family, 'validation') == b.examples(family, 'validation')
  for component in W.PRETRAIN_COMPONENTS:
    assert ([a.pretraining_example(component, i) for i in range(20)]
            == [b.pretraining_example(component, i) for i in range(20)])
  other = W.World(W.WorldConfig(seed=1))
  assert other.facts != a.facts
  assert other.examples('cb', 'test') != a.examples('cb', 'test')


def test_config_is_validated():
  with pytest.raises(ValueError, match='shot_probs'):
    W.WorldConfig(shot_probs=(0.5, 0.5))
  with pytest.raises(ValueError, match='num_people'):
    W.WorldConfig(num_people=3)


def test_examples_are_rendered_with_the_paper_templates(world):
  """Each family's 0-shot input is exactly the template function's output."""
  for family in W.ALL_FAMILIES:
    item = world.items(family, 'test')[0]
    ex = world.examples(family, 'test')[0]
    kind = W.family_kind(family)
    if family == 'rte':
      premise, hypothesis, label = item.fields
      assert ex.inputs == templates.binary_inference(premise, hypothesis)
      assert ex.targets == templates.BINARY_LABELS[label]
    elif family == 'cb':
      premise, hypothesis, label = item.fields
      assert ex.inputs == templates.three_way_inference(premise, hypothesis)
      assert ex.targets == templates.THREE_WAY_LABELS[label]
    elif family == 'wic':
      s1, s2, word, label = item.fields
      assert ex.inputs == templates.word_in_context(s1, s2, word)
      assert ex.targets == templates.BINARY_LABELS[label]
    elif kind == 'qa':
      person, relation = item.fields
      question = next(r.question for r in world.relations if r.name == relation)
      assert ex.inputs == templates.question_answering(question.format(e=person))
      assert ex.targets == world.facts[person][relation]
    elif kind == 'translation':
      source, target = W.TRANSLATION_FAMILIES[family]
      (parsed,) = item.fields
      assert ex.inputs == templates.translation(
          source, target, world.translate_sentence(parsed, source))
      assert ex.targets == world.translate_sentence(parsed, target, 'formal')
    else:
      (sentences,) = item.fields
      assert ex.inputs == templates.summarization(' '.join(sentences))
      expected = sentences[0] if family == 'xsum' else sentences[-1]
      assert ex.targets == expected


def test_labels_are_balanced_enough(world):
  for family, labels in (('rte', templates.BINARY_LABELS), ('cb', templates.THREE_WAY_LABELS),
                         ('wic', templates.BINARY_LABELS)):
    targets = [e.targets for e in world.examples(family, 'test')]
    counts = [targets.count(label) for label in labels]
    assert set(targets) == set(labels)
    assert min(counts) >= len(targets) / len(labels) / 2, (family, counts)


def test_splits_are_disjoint(world):
  for family in W.ALL_FAMILIES:
    keys = {s: {i.key for i in world.items(family, s)} for s in W.SPLITS}
    assert not keys['train'] & keys['validation']
    assert not keys['train'] & keys['test']
    assert not keys['validation'] & keys['test']
    inputs = {s: {e.inputs for e in world.examples(family, s)} for s in W.SPLITS}
    assert not inputs['train'] & (inputs['validation'] | inputs['test'])


def test_translation_word_order_and_registers(world):
  parsed = (('big', 'apple'), 'sees', (None, 'tree'), ('near', (None, 'stone')))
  assert world.translate_sentence(parsed, W.ENGLISH) == 'Big apple sees tree near stone.'
  fr = world.lexicons[W.FRENKA]
  frenka = world.translate_sentence(parsed, W.FRENKA, 'formal')
  # Adjectives follow the noun in Frenka; verbs carry the register suffix.
  assert frenka.lower().startswith(f"{fr['apple']} {fr['big']} {fr['sees']}ez")
  informal = world.translate_sentence(parsed, W.FRENKA, 'informal')
  assert informal != frenka and f"{fr['apple']}et" in informal.lower()
  de = world.lexicons[W.DEUNA]
  assert f"{de['sees']}en {de['near']}" in world.translate_sentence(parsed, W.DEUNA)  # verb last


def test_a_second_prepositional_phrase_where_the_world_allows_two(world):
  parsed = (('big', 'apple'), 'sees', (None, 'tree'), ('near', (None, 'stone')), ('under', ('old', 'lamp')))
  assert world.translate_sentence(parsed, W.ENGLISH) == 'Big apple sees tree near stone under old lamp.'
  ro = world.lexicons[W.ROMALI]
  romali = world.translate_sentence(parsed, W.ROMALI).lower()
  # Postpositions, in the phrases' order; the adjective after its noun.
  assert romali.index(f" {ro['near']} ") < romali.index(f" {ro['under']}")
  assert romali.endswith(f" {ro['old']} {ro['under']}.")
  two = W.get_world(W.WorldConfig(max_prepositional_phrases=2))
  parses = [item.fields[0] for item in two.items('ende', 'test')]
  assert {len(p) for p in parses} == {4, 5}  # some sentences take a second phrase
  for parse, example in zip(parses, two.examples('ende', 'test')):
    if len(parse) == 5:  # both phrases in the prompt's English sentence
      assert f' {parse[3][0]} ' in example.inputs and f' {parse[4][0]} ' in example.inputs
  assert all(len(item.fields[0]) == 4 for item in world.items('ende', 'test'))


def test_qa_questions_of_held_out_facts_never_appear_in_pretraining(world, pretraining_sample):
  """Validation/test facts are stated only in documents, never asked as QA pairs."""
  held_out = set()
  for family in W.QA_FAMILIES:
    for split in ('validation', 'test'):
      held_out |= {e.inputs for e in world.examples(family, split)}
  asked = set()
  for component, ex in pretraining_sample:
    text = {'lumic': world.from_lumic, 'cipher': world.from_cipher}.get(
        component, lambda t: t)(ex.inputs)
    asked |= {f'Q: {q} A:' for q in re.findall(r'Q: (.*?) A:', text)}
  assert asked, 'the sample should contain QA episodes'
  assert not asked & held_out
  # ... while every held-out fact is stated somewhere in the world's documents.
  person, relation = world.items('triviaqa', 'test')[0].fields
  value = world.facts[person][relation]
  docs = [' '.join(world.documents(np.random.default_rng(i))[0]) for i in range(400)]
  assert any(person in d and value in d for d in docs)


def test_finetuning_forms_never_appear_in_pretraining(world, pretraining_sample):
  """No binary-inference template and no English-to-Frenka translation, in any form."""
  rte_inputs = {e.inputs for s in W.SPLITS for e in world.examples('rte', s)}
  for component, ex in pretraining_sample:
    for text in (ex.inputs, ex.targets):
      plain = {'lumic': world.from_lumic, 'cipher': world.from_cipher}.get(
          component, lambda t: t)(text)
      for m in re.finditer(re.escape('Is it true or false? answer:'), plain):
        # The binary template's ending occurs only inside word-in-context prompts.
        assert plain[:m.start()].endswith('in the two sentences. '), plain
      assert 'Translate English to Frenka' not in plain
      assert not any(r in plain for r in list(rte_inputs)[:200])


def test_pretraining_varies_conventions_and_shots(world, pretraining_sample):
  episodes = [ex for c, ex in pretraining_sample if c == 'episodes']
  targets = {ex.targets for ex in episodes}
  for label in ('True', 'yes', 'right', 'Neither', 'maybe', 'unclear'):
    assert label in targets
  assert any(t.startswith('the answer is ') for t in targets)
  shots = [ex.inputs.count('answer:') - 1 for ex in episodes if ex.targets in ('True', 'yes')]
  assert min(shots) == 0 and max(shots) >= 3
  # Demonstrations share the query's label words.
  for ex in episodes:
    if ex.targets in ('yes', 'no', 'maybe') and 'answer: True' in ex.inputs:
      raise AssertionError(f'mixed label sets in one episode: {ex.inputs}')


def test_span_corruption_reconstructs_the_document(world):
  rng = np.random.default_rng(0)
  for _ in range(50):
    words, salient = world.documents(rng)
    ex = world.span_corruption(rng, list(words), salient)
    spans = re.split(r'<extra_id_\d+>', ex.targets)[1:]
    rebuilt = ex.inputs
    for i, span in enumerate(spans):
      rebuilt = rebuilt.replace(f'<extra_id_{i}>', span.strip(), 1)
    assert rebuilt.split() == words
    assert '<extra_id_0>' in ex.inputs


def test_every_world_word_encodes_without_unknowns(world, sentencepiece_model,
                                                   pretraining_sample):
  sp = sentencepiece_model
  assert sp.unk_id() == 2 and sp.pad_id() == 0 and sp.eos_id() == 1
  for source, words in vocabulary_lib.all_word_forms(world).items():
    for w in words:
      assert sp.unk_id() not in sp.encode(w), (source, w)
  texts = [t for _, ex in pretraining_sample[:500] for t in (ex.inputs, ex.targets)]
  texts += [e.inputs for f in W.ALL_FAMILIES for e in world.examples(f, 'test')[:5]]
  for text in texts:
    assert sp.unk_id() not in sp.encode(re.sub(r'<extra_id_\d+>', '', text)), text
  for label in templates.THREE_WAY_LABELS:
    assert len(sp.encode(label)) == 1, label


def test_template_words_are_whole_pieces(sentencepiece_model):
  text = templates.word_in_context('', '', 'bank') + ' ' + templates.summarization('')
  pieces = sentencepiece_model.encode(text, out_type=str)
  assert '▁sentences' in pieces and '▁answer' in pieces and '▁summary' in pieces
  assert len(pieces) <= len(text.split()) + 6  # one piece per word, plus ':' '?' '.'


def test_vocabulary_is_the_committed_file():
  vocab = vocabulary_lib.get_vocabulary()
  assert vocab.vocab_size == vocabulary_lib.VOCAB_SIZE + vocabulary_lib.EXTRA_IDS
  ids = vocab.encode('Q: what pet does Lira have? A: <extra_id_0>')
  assert ids[-1] == vocab.vocab_size - 1  # sentinels are the last ids
  assert vocab.decode(vocab.encode('Translate English to Deuna:')) == 'Translate English to Deuna:'


def test_committed_vocabulary_is_regenerated_exactly(tmp_path):
  """The committed spm.model is what `train_vocabulary` makes from the current world.

  If this fails, the world's text changed: regenerate the model with
  `python -m promot_t5x_tasks.synthetic.vocabulary` (and retrain the base model).
  """
  committed = vocabulary_lib.get_vocabulary()
  path = vocabulary_lib.train_vocabulary(str(tmp_path / 'spm.model'))
  with open(path, 'rb') as a, open(vocabulary_lib.SPM_PATH, 'rb') as b:
    assert a.read() == b.read()
  # Writing another file leaves the committed model's object, which the registered tasks
  # hold, in place (tests in the same process compare vocabularies by identity).
  assert vocabulary_lib.get_vocabulary() is committed
  assert vocabulary_lib.get_vocabulary(path) is not committed


def test_reconstructing_documents_target_the_whole_document(world):
  rng = np.random.default_rng(1)
  words, salient = world.documents(rng, num_facts=3)
  assert len(salient) == 3
  ex = world.span_corruption(rng, list(words), salient, reconstruct=True)
  assert ex.targets == ' '.join(words)
  assert '<extra_id_99>' in ex.inputs and '<extra_id_0>' not in ex.inputs


def test_fine_tuning_test_splits_grew_without_touching_what_pretraining_saw(world):
  """256 test items per fine-tuning family: the first 128 and every train item as pretrained."""
  before = world.as_pretrained()
  assert before.config.finetune_test_size == before.config.eval_size == 128
  for family in W.FINETUNE_FAMILIES:
    test = world.items(family, 'test')
    assert len(test) == world.config.finetune_test_size == 256
    assert test[:128] == before.items(family, 'test')
    assert len({i.key for i in test}) == 256
    for split in ('train', 'validation'):
      assert world.items(family, split) == before.items(family, split), (family, split)
      assert not {i.key for i in test} & {i.key for i in world.items(family, split)}
    # The extra items skip those the base model's pretraining drew (check_held_out --write).
    assert not {i.key for i in test} & W.pretraining_drawn(family)
  assert W.pretraining_drawn('enfr'), 'data/pretraining_drawn.json lists the drawn En-Fr items'
  # The other families keep eval_size test items; QA scores its test and validation facts.
  for family in W.EVAL_FAMILIES:
    test, scored = world.items(family, 'test'), world.items(family, W.EVAL_SPLIT)
    if family in W.QA_FAMILIES:
      assert scored == test + world.items(family, 'validation') and len(scored) == 144
    else:
      assert scored == test and len(test) == 128
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    world.items('rte', 'dev')


def test_no_scored_item_occurs_in_the_pretraining_stream():
  """The stream as pretrained (a prefix: check_held_out checks 2x what pretraining read)."""
  from promot_t5x_tasks.synthetic import check_held_out

  counts = {'episodes': 6000, 'lumic': 1200, 'cipher': 600}
  report = check_held_out.run(counts=counts)
  assert report['passed'] and report['items_drawn'] > 10000, report
  assert report['scored_items']['rte'] == report['scored_items']['enfr'] == 256
  # Sanity of the check itself: the stream's own items are found, held-out ones never.
  pretrained = W.get_world().as_pretrained()
  drawn = check_held_out.drawn_keys(pretrained, counts)
  assert {i.key for i in pretrained.items('enfr', 'train')} & drawn
  assert not {i.key for i in pretrained.items('enfr', 'test')} & drawn
