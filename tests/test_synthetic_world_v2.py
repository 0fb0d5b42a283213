"""The second synthetic world: the fine-tuning skills latent in pretraining, their templates never."""

import collections
import re

import pytest
from promot_t5x_tasks.synthetic import world as W

RTE_TEMPLATE = re.compile(r'question: (?!The word )[^?]*\? Is it true or false\? answer:')


@pytest.fixture(scope='module')
def world():
  return W.get_world(W.WORLD_V2)


@pytest.fixture(scope='module')
def pretraining(world):
  out = []
  for component, rate in world.pretrain_rates.items():
    out += [(component, world.pretraining_example(component, i)) for i in range(int(3000 * rate))]
  return out


def test_first_world_is_unchanged_by_the_second():
  assert 'skills' not in W.get_world().pretrain_rates
  assert W.get_world().config.negation_rate == 0
  assert not any('not true' in e.inputs for e in W.get_world().examples('rte', 'train'))


def test_fine_tuning_templates_never_occur_in_pretraining(world, pretraining):
  rte_inputs = {e.inputs for s in W.SPLITS for e in world.examples('rte', s)}
  for _, ex in pretraining:
    assert not RTE_TEMPLATE.search(ex.inputs)  # the binary-inference template (WiC's differs)
    assert 'Translate English to Frenka' not in ex.inputs
    assert 'It is not true that' not in ex.inputs  # negation is held out for fine-tuning
    assert ex.query not in rte_inputs


def test_the_skills_are_in_pretraining_in_other_formats(world, pretraining):
  skills = [ex for c, ex in pretraining if c == 'skills']
  kinds = collections.Counter(
      'rte_yn' if 'Does it say that' in ex.inputs else 'enfr_alt' if 'Frenka:' in ex.inputs else 'frenka_doc'
      for ex in skills)
  assert min(kinds.values()) > 0.1 * len(skills), kinds
  yes_no = [ex for ex in skills if 'Does it say that' in ex.inputs]
  assert {ex.targets for ex in yes_no} == {'yes', 'no'}
  frenka_words = set(world.lexicons[W.FRENKA].values())
  docs = [ex for ex in skills if 'Does it say' not in ex.inputs and 'Frenka:' not in ex.inputs]
  assert all('<extra_id_0>' in ex.inputs for ex in docs)
  # A Frenka document is Frenka: its words are Frenka stems (with register suffixes).
  words = [w.lower() for ex in docs[:20] for w in W.words_of(re.sub(r'<extra_id_\d+>', ' ', ex.targets))]
  assert sum(any(w.startswith(s) for s in frenka_words) for w in words) > 0.9 * len(words)


def test_yes_no_form_renders_the_same_item(world):
  item = world.items('rte', 'test')[0]
  premise, hypothesis, label = item.fields
  ex = world.render_skill(item, 'rte_yn')
  assert ex.inputs.startswith(f'Q: {premise} Does it say that ')
  assert ex.inputs.endswith('? A:') and 'The ' not in ex.inputs.split('Does it say that ')[1]
  assert ex.targets == W.YES_NO_LABELS[label]
  assert world.render(item).targets == W.BINARY_LABEL_SETS[0][label]


def test_negation_is_a_share_of_the_rte_items_and_always_false(world):
  items = world.items('rte', 'train')
  negated = [i for i in items if 'It is not true that' in i.fields[0]]
  assert 0.08 < len(negated) / len(items) < 0.2  # 0.2 of the entailed and contradicted items
  assert all(i.fields[2] == 1 for i in negated)
  assert not any('not true' in i.fields[0] for i in world.items('cb', 'train'))


def test_second_world_sizes(world):
  assert len(world.items('rte', 'test')) == 256
  assert len(world.items('triviaqa', 'test')) >= 128
  assert len(world.items('cb', 'test')) == 256


def test_second_world_tasks_and_probes_are_registered():
  import seqio
  from promot_t5x_tasks.synthetic import tasks_v2

  names = seqio.TaskRegistry.names()
  for name in ('mini2_rte', 'mini2_enfr', 'mini2_cb_1shot', 'mini2_pretrain_skills',
               tasks_v2.probe_name('rte_yn', 1), tasks_v2.probe_name('enfr_alt', 1)):
    assert name in names, name
  assert tasks_v2.probes_mixture_name(1) in seqio.MixtureRegistry.names()
  ds = seqio.get_mixture_or_task(tasks_v2.probe_name('rte_yn', 1)).get_dataset(
      {'inputs': 256, 'targets': 8}, split='test', shuffle=False, use_cached=False)
  ex = next(iter(ds.as_numpy_iterator()))
  text = ex['inputs_pretokenized'].decode()
  assert text.count('Does it say that') == 2 and ex['targets_pretokenized'].decode() in ('yes', 'no')


def test_the_later_pretraining_phases_hold_only_yes_no_inference(world):
  """Phases 2 and 3 (`inference`, `inference_short`): held-out items and forms stay out."""
  rte_inputs = {e.inputs for s in W.SPLITS for e in world.examples('rte', s)}
  shots = collections.Counter()
  for component in ('inference', 'inference_short'):
    for i in range(300):
      ex = world.pretraining_example(component, i)
      assert ex.targets in ('yes', 'no')
      assert not RTE_TEMPLATE.search(ex.inputs) and 'It is not true that' not in ex.inputs
      assert ex.query not in rte_inputs
      shots[component, ex.inputs.count('Does it say that') - 1] += 1
  assert {k for c, k in shots if c == 'inference_short'} == {0, 1}
  assert max(k for c, k in shots if c == 'inference') >= 3
  for phase in (W.PRETRAIN_RATES_V2_PHASE2, W.PRETRAIN_RATES_V2_PHASE3, W.PRETRAIN_RATES_V2_PHASE4):
    assert set(phase) <= set(world.pretrain_components) and abs(sum(phase.values()) - 1) < 1e-9


def test_second_world_metric_names_match_the_checkpoint_selection_metric():
  # Training-time validation names metrics by Suite.display_name; the miniature keeps the
  # best checkpoint on best_metric(...). A 'mini2_' name left unstripped made the second
  # world's runs fail ("best_metric 'rte/accuracy' is not among the evaluation metrics").
  from promot_t5x_tasks.synthetic import tasks_v2  # noqa: F401  (registers mini2_*)

  from promot_t5x import evaluation, miniature

  settings = miniature.Settings(world='v2', base_model='unused')
  for task in ('rte', 'enfr'):
    (override,) = miniature.best_metric(settings, task)
    selected = override.split(' = ')[1].strip("'")
    suite = evaluation.make_suite(f'mini2_{task}', role=evaluation.TARGET, split='validation',
                                  task_feature_lengths={'inputs': 128, 'targets': 16})
    metric = miniature.BEST_METRIC[task]
    assert f'{suite.display_name(f"mini2_{task}")}/{metric}' == selected
  fewshot = evaluation.make_suite('mini2_eval_1shot', task_feature_lengths={'inputs': 256, 'targets': 16})
  assert {fewshot.display_name(t) for t in fewshot.tasks} >= {'triviaqa', 'webqa', 'cb', 'ende'}


@pytest.mark.parametrize('world', ['v1', 'v2', 'v3'])
def test_the_miniatures_lengths_hold_every_reference(world):
  # Outputs are decoded up to the target length: a reference longer than it caps the score
  # (the second world's En-Fr was once scored at 16 tokens, every model at the same BLEU).
  import seqio
  from promot_t5x_tasks.synthetic import tasks, tasks_v2, tasks_v3  # noqa: F401  (registers the tasks)

  from promot_t5x import base_model_check, miniature

  settings = miniature.Settings(world=world, base_model='unused')

  def longest(name, split, n=256):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        {'inputs': 1024, 'targets': 256}, split=split, shuffle=False, use_cached=False)
    return max(len(ex['targets']) for ex in ds.take(n).as_numpy_iterator())

  for task in miniature.FINETUNE_TASKS:
    for split in ('train', 'validation', 'test'):
      assert longest(f'{settings.prefix}{task}', split) <= settings.target_length(task), (task, split)
  evaluated = [t.name for k in ('1shot', '4shot')
               for t in seqio.get_mixture_or_task(f'{settings.prefix}eval_{k}').tasks]
  evaluated += [f'{settings.prefix}{t}' for t in miniature.FINETUNE_TASKS]
  if world != 'v1':
    evaluated += [f'{settings.prefix}{form}_1shot' for form in ('rte_yn', 'enfr_alt')]
  for name in evaluated:
    split = 'test' if name.endswith(miniature.FINETUNE_TASKS) else 'eval'
    n = longest(name, split)
    assert n <= miniature.EVAL_TARGET_LENGTH[world], name
    if world != 'v1':
      assert n <= base_model_check.EVAL_FEATURE_LENGTHS['targets'], name
  if world != 'v1':
    assert longest(f'{settings.prefix}enfr', 'train') <= base_model_check.TRAIN_TARGET_LENGTH['enfr']
