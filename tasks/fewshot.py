"""k-shot inputs whose demonstrations come from the train split.

`FewshotSource` wraps any seqio `DataSource` (TFDS, a function, text lines)
and a render (see `promot_t5x_tasks.preprocessors`). For a split S it yields
the rendered examples of S, each with `num_shots` demonstrations prepended by
`templates.with_demonstrations`:

    demo_1_input demo_1_target ... demo_k_input demo_k_target query_input

How demonstrations are drawn (all of it deterministic, so every host and
every run sees the same inputs):

1. The *pool*: from the first `pool_candidates` examples of `pool_split`
   (default 'train'; read in file order, unshuffled), `pool_size` examples are
   chosen without replacement by `numpy.random.default_rng(seed)` and
   rendered. (With the defaults: 1,000 of the first 10,000 train examples,
   seed 1234.) Examples the render drops (unlabelled ones) leave the pool
   smaller. The pool is built once per source and held in memory. Every shot
   count samples the same pool examples, so where the render does not
   depend on the shot count an example's 1-shot demonstration is the first
   of its 4-shot ones. (Summarization cuts articles to a per-shot-count
   budget, so a long query draws its demonstrations independently per k.)
2. Per evaluated example: a stateless RNG seeded by `(seed, hash of the
   rendered query input)` scores the pool, and the k lowest-scoring entries
   are the demonstrations, in that order. The choice depends on the example's
   content, not its position, so shuffling, sharding or repeating the split
   does not change an example's demonstrations (a 1-shot training example
   keeps its demonstration in every epoch).
3. Pool entries whose rendered input equals the query's are never chosen:
   evaluating on the train split cannot show the model its own example with
   the answer, and a dev/test example duplicated in train is guarded the same
   way.

Classification demonstrations are drawn at random, without balancing the
labels: a 1-shot CB input shows whichever label its demonstration has.

Examples gain `query_inputs` (the 0-shot input), `demonstration_inputs` and
`demonstration_targets` ([k] strings) next to the render's features.
`add_text_task` registers a seqio Task from a source, a render and a shot
count; the paper's tasks are registered with it, and so can any other
(a user's own evaluation task, the miniature's synthetic tasks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
from promot_t5x_tasks import preprocessors, templates
from promot_t5x_tasks import vocab as vocab_lib

DEFAULT_SEED = 1234


@dataclasses.dataclass(frozen=True)
class FewshotConfig:
  """How many demonstrations and where they come from.

  Attributes:
    num_shots: demonstrations per input (0 renders the query alone).
    pool_split: split the demonstrations are drawn from.
    pool_size: examples in the demonstration pool.
    pool_candidates: the pool is sampled from the first this-many examples
      of `pool_split` (bounds the reading cost on very large train splits).
    seed: seeds the pool sample and every per-example draw.
  """

  num_shots: int = 0
  pool_split: str = 'train'
  pool_size: int = 1000
  pool_candidates: int = 10_000
  seed: int = DEFAULT_SEED

  def __post_init__(self):
    if self.num_shots < 0:
      raise ValueError(f'num_shots must be >= 0, got {self.num_shots}.')
    if self.pool_size < max(self.num_shots, 1):
      raise ValueError(f'pool_size ({self.pool_size}) must be at least num_shots '
                       f'({self.num_shots}) and positive.')
    if self.pool_candidates < self.pool_size:
      raise ValueError(f'pool_candidates ({self.pool_candidates}) must be >= pool_size '
                       f'({self.pool_size}).')


@dataclasses.dataclass(frozen=True)
class DemonstrationPool:
  """Rendered (input, target) pairs demonstrations are drawn from; [pool_size] each."""

  inputs: np.ndarray  # [N] bytes
  targets: np.ndarray  # [N] bytes

  def __len__(self) -> int:
    return len(self.inputs)


def build_pool(raw_pool_split: tf.data.Dataset, render: preprocessors.Render,
               config: FewshotConfig) -> DemonstrationPool:
  """Samples and renders the pool (step 1 of the module docstring).

  Args:
    raw_pool_split: the raw examples of the pool split, in a fixed order.
    render: the task's render.
    config: pool size, candidates and seed.
  """
  candidates = raw_pool_split.take(config.pool_candidates)
  num_candidates = int(candidates.reduce(np.int64(0), lambda count, _: count + 1))
  if num_candidates == 0:
    raise ValueError(f"The pool split '{config.pool_split}' is empty; few-shot inputs need "
                     'demonstrations from it.')
  rng = np.random.default_rng(config.seed)
  chosen = np.sort(rng.choice(num_candidates, size=min(config.pool_size, num_candidates),
                              replace=False)).astype(np.int64)
  chosen_t = tf.constant(chosen)

  @tf.autograph.experimental.do_not_convert
  def is_chosen(index, unused_ex):
    return tf.reduce_any(tf.equal(index, chosen_t))

  @tf.autograph.experimental.do_not_convert
  def drop_index(unused_index, ex):
    return ex

  picked = candidates.enumerate().filter(is_chosen).map(drop_index)
  inputs, targets = [], []
  for ex in render(picked).as_numpy_iterator():
    inputs.append(ex['inputs'])
    targets.append(ex['targets'])
  if len(inputs) < config.num_shots:
    raise ValueError(
        f'The demonstration pool has {len(inputs)} usable examples, fewer than '
        f'num_shots = {config.num_shots}; the {config.pool_split!r} split is too small for this '
        'many shots.')
  return DemonstrationPool(np.array(inputs, dtype=object), np.array(targets, dtype=object))


def join_demonstrations(query_input: tf.Tensor, demo_inputs: tf.Tensor,
                        demo_targets: tf.Tensor, num_shots: int) -> tf.Tensor:
  """`templates.with_demonstrations` on tensors: [k] demos + scalar query -> scalar."""
  if num_shots == 0:
    return query_input

  def template(query, *demos):
    return templates.with_demonstrations(query, list(zip(demos[0::2], demos[1::2])))
  demos = []
  for j in range(num_shots):
    demos += [demo_inputs[j], demo_targets[j]]
  return preprocessors.render_template(template, query_input, *demos)


def add_demonstrations(dataset: tf.data.Dataset, pool: DemonstrationPool | None,
                       num_shots: int, seed: int) -> tf.data.Dataset:
  """Prepends `num_shots` pool demonstrations to each rendered example (steps 2-3).

  Args:
    dataset: rendered examples (`inputs`, `targets`, ...).
    pool: the demonstration pool (None only when num_shots == 0).
    num_shots: k.
    seed: the draw's seed (with the hash of the query input).

  Returns:
    The examples with a k-shot `inputs`, plus `query_inputs`,
    `demonstration_inputs` and `demonstration_targets`.
  """
  if num_shots == 0:
    @tf.autograph.experimental.do_not_convert
    def zero_shot(ex):
      ex = dict(ex)
      ex['query_inputs'] = ex['inputs']
      ex['demonstration_inputs'] = tf.constant([], tf.string)
      ex['demonstration_targets'] = tf.constant([], tf.string)
      return ex
    return dataset.map(zero_shot, num_parallel_calls=tf.data.AUTOTUNE)

  if pool is None or len(pool) < num_shots:
    raise ValueError(f'{num_shots}-shot inputs need a pool of at least {num_shots} examples.')
  pool_inputs = tf.constant(list(pool.inputs), tf.string)
  pool_targets = tf.constant(list(pool.targets), tf.string)
  pool_size = len(pool)

  @tf.autograph.experimental.do_not_convert
  def k_shot(ex):
    ex = dict(ex)
    query = ex['inputs']
    # FarmHash fingerprint of the text: stable across runs, hosts and platforms.
    query_hash = tf.strings.to_hash_bucket_fast(query, 2**62)
    scores = tf.random.stateless_uniform([pool_size],
                                         seed=tf.stack([tf.constant(seed, tf.int64), query_hash]))
    # Scores are in [0, 1): 2.0 puts copies of the query behind every other entry.
    scores = tf.where(tf.equal(pool_inputs, query), 2.0, scores)
    lowest, index = tf.math.top_k(-scores, k=num_shots)
    check = tf.debugging.assert_greater(
        lowest, -2.0, message='Too few pool examples differ from the query to draw the '
        'demonstrations; enlarge the pool.')
    with tf.control_dependencies([check]):
      demo_inputs = tf.gather(pool_inputs, index)
    demo_targets = tf.gather(pool_targets, index)
    ex['query_inputs'] = query
    ex['demonstration_inputs'] = demo_inputs
    ex['demonstration_targets'] = demo_targets
    ex['inputs'] = join_demonstrations(query, demo_inputs, demo_targets, num_shots)
    return ex
  return dataset.map(k_shot, num_parallel_calls=tf.data.AUTOTUNE)


class FewshotSource(seqio.DataSource):
  """A seqio DataSource of rendered k-shot examples (see the module docstring).

  Splits, shards and sizes are the wrapped source's; the pool always comes
  from the whole `config.pool_split`, so every host shares it.
  """

  def __init__(self, source: seqio.DataSource, render: preprocessors.Render,
               config: FewshotConfig | None = None):
    self._source = source
    self._render = render
    self._config = config or FewshotConfig()
    self._pool: DemonstrationPool | None = None
    super().__init__(splits=(), caching_permitted=source.caching_permitted)

  @property
  def config(self) -> FewshotConfig:
    return self._config

  @property
  def source(self) -> seqio.DataSource:
    return self._source

  @property
  def splits(self) -> Sequence[str]:
    return self._source.splits

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self._source.supports_arbitrary_sharding

  def list_shards(self, split: str) -> Sequence[str]:
    return self._source.list_shards(split)

  def num_input_examples(self, split: str) -> int | None:
    return self._source.num_input_examples(split)

  def pool(self) -> DemonstrationPool:
    """The demonstration pool (built on first use, then kept)."""
    if self._pool is None:
      if self._config.pool_split not in self._source.splits:
        raise ValueError(f"Pool split '{self._config.pool_split}' is not a split of "
                         f'{self._source!r} (splits: {list(self._source.splits)}).')
      raw = self._source.get_dataset(split=self._config.pool_split, shuffle=False)
      self._pool = build_pool(raw, self._render, self._config)
    return self._pool

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *,
                  sequence_length: Mapping[str, int] | None = None,  # Unused.
                  use_cached: bool = False,  # Unused.
                  num_epochs: int | None = 1,  # Unused.
                  ) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    dataset = self._render(self._source.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                                    shard_info=shard_info))
    pool = self.pool() if self._config.num_shots else None
    return add_demonstrations(dataset, pool, self._config.num_shots, self._config.seed)

  def __repr__(self) -> str:
    return f'FewshotSource(source={self._source!r}, config={self._config})'


def add_text_task(name: str, source: seqio.DataSource, render: preprocessors.Render, *,
                  vocabulary: seqio.Vocabulary,
                  fewshot: FewshotConfig | None = None,
                  metric_fns: Sequence[Callable[..., Mapping[str, Any]]] = (),
                  postprocess_fn: Callable[..., Any] | None = None,
                  max_input_tokens: int | None = None,
                  overwrite: bool = False) -> seqio.Task:
  """Registers a text-to-text seqio Task rendered by `render` with k demonstrations.

  Args:
    name: the task name (see `promot_t5x_tasks.paper` for the naming scheme).
    source: raw examples (`seqio.TfdsDataSource`, `seqio.FunctionDataSource`, ...).
    render: raw examples -> `inputs`/`targets` text (a `preprocessors` factory).
    vocabulary: the model's vocabulary (`vocab.default_vocabulary()` for mT5).
    fewshot: number of shots and the demonstration pool (default: 0-shot).
    metric_fns: seqio metric functions `(targets, predictions) -> {name: value}`.
    postprocess_fn: seqio postprocessor `(text, example=None, is_target=False)`.
    max_input_tokens: cut every input to this many tokens as a whole
      (`preprocessors.cut_inputs`; the paper's summarization: 1024); None: no cut
      beyond the feature length.
    overwrite: replace a task already registered under `name`.

  Returns:
    The registered `seqio.Task`.
  """
  fewshot = fewshot or FewshotConfig()
  if name in seqio.TaskRegistry.names():
    if not overwrite:
      raise ValueError(f'Task {name!r} is already registered; pass overwrite=True to replace '
                       'it, or register under another name (prefix).')
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=FewshotSource(source, render, fewshot),
      preprocessors=preprocessors.text_to_text_preprocessors(fewshot.num_shots,
                                                             max_input_tokens),
      output_features=vocab_lib.output_features(vocabulary),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))


__all__ = ['DEFAULT_SEED', 'DemonstrationPool', 'FewshotConfig', 'FewshotSource',
           'add_demonstrations', 'add_text_task', 'build_pool', 'join_demonstrations']
