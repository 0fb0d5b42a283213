"""Few-shot inputs: k demonstrations from train, deterministic, never the query itself.

A `FewshotSource` wraps any seqio DataSource; here a FunctionDataSource of
hand-made inference examples, rendered with the RTE template.
"""

import numpy as np
import pytest
import seqio
import tensorflow as tf
from promot_t5x_tasks import fewshot, preprocessors, templates

TRAIN = [f'train premise {i}' for i in range(20)]
# The last dev example duplicates a train example: its own text must never be a demonstration.
DEV = [f'dev premise {i}' for i in range(5)] + ['train premise 3']

RENDER = preprocessors.inference_render(templates.binary_inference, ('True', 'False'))


def make_source(reverse_dev=False, train=TRAIN):
  def dataset_fn(split, shuffle_files):
    del shuffle_files
    premises = {'train': train, 'validation': DEV[::-1] if reverse_dev else DEV}[split]
    return tf.data.Dataset.from_tensor_slices({
        'premise': premises, 'hypothesis': [f'hypothesis of {p}' for p in premises],
        'label': np.arange(len(premises), dtype=np.int64) % 2})
  return seqio.FunctionDataSource(dataset_fn, splits=['train', 'validation'])


def read(source, split):
  return list(source.get_dataset(split=split, shuffle=False).as_numpy_iterator())


def config(num_shots, **kwargs):
  kwargs = {'pool_size': 10, 'pool_candidates': 20, 'seed': 7, **kwargs}
  return fewshot.FewshotConfig(num_shots=num_shots, **kwargs)


def demos_by_query(examples):
  return {ex['query_inputs']: [d for d in ex['demonstration_inputs']] for ex in examples}


def test_k_demonstrations_come_from_train_and_never_repeat_the_query():
  for split in ('validation', 'train'):
    examples = read(fewshot.FewshotSource(make_source(), RENDER, config(4)), split)
    assert len(examples) == {'validation': len(DEV), 'train': len(TRAIN)}[split]
    for ex in examples:
      demos = [d.decode() for d in ex['demonstration_inputs']]
      assert len(demos) == 4 == len(set(demos))
      assert all(d.startswith('train premise') for d in demos)
      assert ex['query_inputs'].decode() not in demos
      # The k-shot input is the demonstrations (input, target) followed by the query.
      pairs = list(zip(demos, (t.decode() for t in ex['demonstration_targets'])))
      assert ex['inputs'].decode() == templates.with_demonstrations(
          ex['query_inputs'].decode(), pairs)
      # Each demonstration carries its own label.
      for demo, target in pairs:
        index = int(demo.split(' question:')[0].rsplit(' ', 1)[1])
        assert target == ('True' if index % 2 == 0 else 'False')


def test_draws_are_deterministic_and_independent_of_order():
  first = demos_by_query(read(fewshot.FewshotSource(make_source(), RENDER, config(4)),
                              'validation'))
  again = demos_by_query(read(fewshot.FewshotSource(make_source(), RENDER, config(4)),
                              'validation'))
  # The evaluated split in another order (as after a shuffle or another sharding): same
  # demonstrations per example. (The pool follows the train split's fixed file order.)
  reordered = demos_by_query(read(fewshot.FewshotSource(make_source(reverse_dev=True), RENDER,
                                                         config(4)), 'validation'))
  assert first == again == reordered
  # Different queries usually get different demonstrations.
  assert len({tuple(d) for d in first.values()}) > 1


def test_the_seed_changes_the_draw():
  a = demos_by_query(read(fewshot.FewshotSource(make_source(), RENDER, config(4, seed=1)),
                          'validation'))
  b = demos_by_query(read(fewshot.FewshotSource(make_source(), RENDER, config(4, seed=2)),
                          'validation'))
  assert a.keys() == b.keys() and a != b


def test_one_shot_demonstration_is_the_first_of_the_four_shot_ones():
  one = demos_by_query(read(fewshot.FewshotSource(make_source(), RENDER, config(1)),
                            'validation'))
  four = demos_by_query(read(fewshot.FewshotSource(make_source(), RENDER, config(4)),
                             'validation'))
  assert all(one[q] == four[q][:1] for q in one)


def test_pool_is_a_seeded_sample_of_the_first_candidates():
  source = fewshot.FewshotSource(make_source(), RENDER,
                                 config(2, pool_size=3, pool_candidates=5))
  pool = source.pool()
  assert len(pool) == 3
  premises = {p.decode().split(' question:')[0] for p in pool.inputs}
  assert premises <= set(TRAIN[:5])
  same = fewshot.FewshotSource(make_source(), RENDER,
                               config(2, pool_size=3, pool_candidates=5)).pool()
  assert list(same.inputs) == list(pool.inputs)
  for ex in read(source, 'validation'):
    assert set(ex['demonstration_inputs']) <= set(pool.inputs)


def test_zero_shot_is_the_query_alone():
  ex = read(fewshot.FewshotSource(make_source(), RENDER, config(0)), 'validation')[0]
  assert ex['inputs'] == ex['query_inputs'] == (
      b'dev premise 0 question: hypothesis of dev premise 0 Is it true or false? answer:')
  assert ex['demonstration_inputs'].shape == (0,)


def test_too_small_a_train_split_is_a_clear_error():
  source = fewshot.FewshotSource(make_source(train=TRAIN[:2]), RENDER, config(4))
  with pytest.raises(ValueError, match='too small'):
    read(source, 'validation')
  # The query can only be left out if the pool has others: 2 examples, 2 shots, on train.
  source = fewshot.FewshotSource(make_source(train=TRAIN[:2]), RENDER, config(2))
  with pytest.raises(tf.errors.InvalidArgumentError, match='enlarge the pool'):
    read(source, 'train')


def test_config_is_validated():
  with pytest.raises(ValueError, match='num_shots'):
    fewshot.FewshotConfig(num_shots=-1)
  with pytest.raises(ValueError, match='pool_size'):
    fewshot.FewshotConfig(num_shots=4, pool_size=2)
  with pytest.raises(ValueError, match='pool_candidates'):
    fewshot.FewshotConfig(pool_size=100, pool_candidates=10)


def test_render_template_runs_the_python_template_on_tensors():
  rendered = preprocessors.render_template(templates.word_in_context, tf.constant('A b.'),
                                           tf.constant('C d.'), tf.constant('b'))
  assert rendered.numpy().decode() == templates.word_in_context('A b.', 'C d.', 'b')
  with pytest.raises(ValueError, match='did not insert'):
    preprocessors.render_template(lambda a, b: f'only {a}', tf.constant('x'), tf.constant('y'))
