"""The miniature's seqio tasks, mixtures, metrics and conjugate transforms."""

import pytest
import seqio
from promot_t5x_tasks.synthetic import tasks as mini
from promot_t5x_tasks.synthetic import tasks_v2
from promot_t5x_tasks.synthetic import transforms as transforms_lib
from promot_t5x_tasks.synthetic import world as world_lib

from promot_t5x import conjugate

W = world_lib
LENGTHS = {'inputs': 64, 'targets': 16}


def _first(name, split='eval', n=1, lengths=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      lengths or LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
  return list(ds.take(n).as_numpy_iterator())


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def test_every_task_yields_tokenized_examples():
  names = [mini.task_name(f) for f in W.FINETUNE_FAMILIES]
  names += [mini.one_shot_train_name(f) for f in W.FINETUNE_FAMILIES]
  names += [mini.task_name(f, k) for f in W.EVAL_FAMILIES for k in mini.SHOTS]
  for name in names:
    # The train split of the fine-tuning tasks is what a run reads; eval is scored.
    for split in ('train', 'eval') if 'shot' not in name or 'train' in name else ('eval',):
      (ex,) = _first(name, split)
      assert 0 < len(ex['inputs']) <= LENGTHS['inputs'] and ex['inputs'][-1] == 1  # EOS
      assert 0 < len(ex['targets']) <= LENGTHS['targets']
  for component in W.PRETRAIN_COMPONENTS:
    for ex in _first(mini.pretrain_task_name(component), 'train', n=3):
      assert ex['inputs'][-1] == 1 and len(ex['targets']) > 0


def test_mixtures_cover_their_tasks():
  for k in mini.SHOTS:
    tasks = {t.name for t in seqio.get_mixture_or_task(mini.eval_mixture_name(k)).tasks}
    assert tasks == {mini.task_name(f, k) for f in W.EVAL_FAMILIES}
  pretrain = seqio.get_mixture_or_task(mini.pretrain_mixture_name())
  assert {t.name for t in pretrain.tasks} == {mini.pretrain_task_name(c)
                                               for c in W.PRETRAIN_COMPONENTS}
  batch = _first(mini.pretrain_mixture_name(), 'train', n=4, lengths={'inputs': 192,
                                                                       'targets': 32})
  assert len(batch) == 4
  multitask = seqio.get_mixture_or_task(mini.multitask_mixture_name())
  assert {t.name for t in multitask.tasks} == {'mini_rte', 'mini_enfr'}


def test_splits_sizes_and_eval_is_test():
  world = W.get_world()
  task = seqio.get_mixture_or_task('mini_cb_0shot')
  assert task.num_input_examples('eval') == len(world.items('cb', 'test'))
  eval_inputs = [_text(e['inputs_pretokenized']) for e in _first('mini_cb_0shot', 'eval', n=5)]
  assert eval_inputs == [e.inputs for e in world.examples('cb', 'test')[:5]]


def test_demonstrations_come_from_train_and_never_equal_the_query():
  world = W.get_world()
  for family in ('cb', 'triviaqa', 'enro'):
    train_inputs = {e.inputs for e in world.examples(family, 'train')}
    for split in ('eval', 'train'):
      for ex in _first(mini.task_name(family, 4), split, n=20, lengths={'inputs': 256,
                                                                         'targets': 32}):
        query = _text(ex['query_inputs'])
        demos = [_text(d) for d in ex['demonstration_inputs']]
        assert len(demos) == 4 and query not in demos
        assert all(d in train_inputs for d in demos)
        assert _text(ex['inputs_pretokenized']).endswith(query)
  # A fixed seed: the same demonstrations every time.
  a = _first('mini_wic_1shot', n=3, lengths={'inputs': 256, 'targets': 8})
  b = _first('mini_wic_1shot', n=3, lengths={'inputs': 256, 'targets': 8})
  assert [x['inputs_pretokenized'] for x in a] == [x['inputs_pretokenized'] for x in b]


def test_one_shot_train_task_carries_one_demonstration():
  (ex,) = _first('mini_rte_1shot_train', 'train', lengths={'inputs': 160, 'targets': 4})
  text = _text(ex['inputs_pretokenized'])
  assert text.count('Is it true or false? answer:') == 2
  assert text.endswith(_text(ex['query_inputs']))


@pytest.mark.parametrize('family,prediction,target,expected', [
    ('cb', 'Neither Q: who', 'Neither', 100.0),
    ('cb', 'True.', 'False', 0.0),
    ('triviaqa', 'the baker Q: what', 'baker', 100.0),
    ('ende', 'Kreit bohiek zuhaun stassen. Translate English', 'Kreit bohiek zuhaun stassen.',
     100.0),
    ('xsum', 'Lira lives in Molon. Article: Tipe', 'Lira lives in Molon.', 100.0),
])
def test_postprocessing_and_metrics(family, prediction, target, expected):
  task = seqio.get_mixture_or_task(mini.task_name(family, 1))
  pred = task.postprocess_fn(prediction, example={}, is_target=False)
  tgt = task.postprocess_fn(target, example={}, is_target=True)
  result = task.metric_fns[0]([tgt], [pred])
  assert result[mini.metric_name(family)] == pytest.approx(expected)


def test_format_specialization_is_reported_on_qa():
  task = seqio.get_mixture_or_task('mini_webqa_1shot')
  metric = task.metric_fns[1]
  preds = [task.postprocess_fn(p) for p in ('True', 'cat', 'False Q: x', 'dog')]
  assert metric(['cat'] * 4, preds) == {'format_specialization': 50.0}


@pytest.mark.parametrize('config,name', [(W.WorldConfig(), n) for n in transforms_lib.TRANSFORM_NAMES]
                         + [(W.WORLD_V2, n) for n in tasks_v2.TRANSFORM_NAMES])
def test_transforms_round_trip_on_every_family(config, name):
  world = W.get_world(config)
  transform = conjugate.get_transform(name)
  assert transforms_lib.world_of(name) == config
  for family in W.ALL_FAMILIES:
    for ex in world.examples(family, 'validation')[:20]:
      forward = transform.apply_to_input(ex.inputs)
      assert forward != ex.inputs  # the template words change
      assert transform.invert(forward) == ex.inputs
      assert transform.invert(transform.apply_to_target(ex.targets)) == ex.targets
  # Translation prompts keep their source sentence and their expected output.
  ex = world.examples('ende', 'test')[0]
  sentence = ex.inputs.split(': ', 1)[1]
  assert transform.apply_to_input(ex.inputs).endswith(': ' + sentence)
  assert transform.apply_to_target(ex.targets) == ex.targets


def test_conjugate_tasks_read_the_transformed_text_and_score_in_english():
  world = W.get_world()
  (ex,) = _first('mini_triviaqa_1shot__toylang', lengths={'inputs': 64, 'targets': 8})
  original = world.examples('triviaqa', 'test')[0]
  lumic = world.to_lumic(original.inputs)
  assert _text(ex['inputs_pretokenized']).endswith(lumic) and lumic != original.inputs
  task = seqio.get_mixture_or_task('mini_cb_1shot__cipher')
  label = world.to_cipher('Neither')
  assert label != 'Neither'
  assert task.postprocess_fn(label + ' Q:', is_target=False) == 'Neither'
  assert task.postprocess_fn(label, is_target=True) == 'Neither'
  mixture = seqio.get_mixture_or_task('mini_eval_4shot__toylang')
  assert len(mixture.tasks) == len(W.EVAL_FAMILIES)


def test_second_world_conjugates_use_its_own_lumic():
  v1, v2 = W.get_world(), W.get_world(W.WORLD_V2)
  assert tasks_v2.TRANSFORM_NAMES == ('toylang_v2', 'cipher_v2')
  # The two worlds' dictionaries differ (each follows its own vocabulary).
  assert sum(v1.lumic[w] == v2.lumic.get(w) for w in v1.lumic) < len(v1.lumic) // 2
  (ex,) = _first('mini2_triviaqa_1shot__toylang_v2', lengths={'inputs': 64, 'targets': 8})
  original = v2.examples('triviaqa', 'test')[0]
  lumic = v2.to_lumic(original.inputs)
  assert _text(ex['inputs_pretokenized']).endswith(lumic) and lumic != v1.to_lumic(original.inputs)
  mixture = seqio.get_mixture_or_task('mini2_eval_1shot__cipher_v2')
  assert sorted(t.name for t in mixture.tasks) == sorted(
      f'mini2_{f}_1shot__cipher_v2' for f in W.EVAL_FAMILIES)
  with pytest.raises(ValueError, match="'toylang' was registered for another world"):
    mini.register_mini_tasks(W.WORLD_V2, prefix='mini2test_', transforms=('toylang',))


def test_registering_for_another_world_under_another_prefix():
  config = W.WorldConfig(seed=3, num_people=24, num_story_names=12, eval_size=16,
                         demo_pool_size=32, finetune_train_size=64)
  names = mini.register_mini_tasks(config, prefix='minitest_', shots=(0, 1))
  assert 'minitest_rte' in names and 'minitest_eval_1shot' in names
  assert not any('__' in n for n in names)  # no conjugates until the world's own are registered
  (ex,) = _first('minitest_webqa_1shot', lengths={'inputs': 64, 'targets': 8})
  assert _text(ex['inputs_pretokenized']).startswith('Q: ')
  with pytest.raises(ValueError, match='registered for another world.*register_transforms'):
    mini.register_mini_tasks(config, prefix='minitest_', transforms=('toylang',))
