"""seqio datasets for training and evaluation, as numpy batches.

Both read a task the same way (`task_dataset`: seqio's preprocessed examples,
in sentinel format when asked; `convert`: the encoder-decoder feature
converter). Training streams batches from tf.data (`get_dataset`); evaluation
holds a task's converted examples in memory and cuts them into fixed-shape
batches, longest first (`sorted_batches`). Both cut encoder features to the
same length buckets (`length_buckets`).

The trainer reads one host-local shard of the global batch per process
(`seqio.ShardInfo(index=process_index, num_shards=process_count)`); the
partitioner stitches the shards into global arrays.

A run that goes through a soft prompt adds a `prompt_index` feature `[batch]`:
one prompt for the whole run, or, for multi-task ProMoT, one prompt per task
of the mixture (`prompt_for_task`), in which case the mixture is sampled here
(by the mixture's rates) so that each example keeps its task's prompt.

Resuming: the dataset is deterministic given its seed, and the trainer stores
how many batches it has consumed; `skip_batches` replays the stream to that
point, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from promot_t5x import prompt_routing


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What to read and how (T5X's `DatasetConfig`, trimmed)."""

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 8  # global batch size
  shuffle: bool = True
  seed: int | None = 0
  pack: bool = False
  use_cached: bool = False
  # Encoder lengths to bucket training batches by (one process only): examples
  # are grouped by real input length and each batch is cut to the smallest
  # bucket that holds it, so short examples do not pay for the longest one's
  # padding (one compiled step per bucket). None: every batch at full length.
  length_buckets: tuple[int, ...] | None = None
  # Modules to import before looking the task up (where the user registers it).
  module: str | tuple[str, ...] | None = None
  # mT5's span-corruption format (`promot_t5x.sentinel`): inputs end with
  # <extra_id_0>, targets are `<extra_id_0> target <extra_id_1>` (SENTINEL_FORMAT).
  sentinel_format: bool = False
  # seqio's in-memory cache of small datasets (False for tfds.testing.mock_data).
  try_in_mem_cache: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'task_feature_lengths', dict(self.task_feature_lengths))
    if self.batch_size <= 0:
      raise ValueError(f'BATCH_SIZE must be positive, got {self.batch_size}.')
    for key in ('inputs', 'targets'):
      if key not in self.task_feature_lengths:
        raise ValueError(f"TASK_FEATURE_LENGTHS needs an '{key}' length, got "
                         f'{self.task_feature_lengths}.')
    if self.length_buckets is not None:
      buckets = tuple(sorted(int(b) for b in self.length_buckets))
      if not buckets or buckets[0] <= 0:
        raise ValueError(f'LENGTH_BUCKETS must be positive lengths, got {self.length_buckets}.')
      if self.pack:
        raise ValueError('LENGTH_BUCKETS and packing exclude each other; use one.')
      object.__setattr__(self, 'length_buckets',
                         length_buckets(buckets, self.task_feature_lengths['inputs']))


def length_buckets(buckets: Sequence[int], full_length: int) -> tuple[int, ...]:
  """The encoder lengths batches are cut to: `buckets` shorter than `full_length`, then it."""
  return tuple(b for b in sorted(int(b) for b in buckets) if b < full_length) + (
      int(full_length),)


def import_task_modules(module: str | tuple[str, ...] | list[str] | None) -> None:
  """Imports the module(s) that register the user's tasks (MIXTURE_OR_TASK_MODULE)."""
  if not module:
    return
  for name in ([module] if isinstance(module, str) else list(module)):
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ImportError(f'MIXTURE_OR_TASK_MODULE={name!r} could not be imported: {e}. '
                        'It must be importable from the working directory or PYTHONPATH.') from e


def get_mixture_or_task(name: str):
  """Looks a task or mixture up; an unknown name lists what is registered."""
  import seqio

  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    tasks = sorted(seqio.TaskRegistry.names())
    mixtures = sorted(seqio.MixtureRegistry.names())
    raise ValueError(
        f'Unknown task or mixture {name!r} (MIXTURE_OR_TASK_NAME). Registered tasks: '
        f'{tasks}; registered mixtures: {mixtures}. If it is registered in your own '
        'module, name that module with MIXTURE_OR_TASK_MODULE.') from None


def task_dataset(provider, task_feature_lengths: Mapping[str, int], *, split: str,
                 shuffle: bool, seed: int | None, num_epochs: int | None = None,
                 shard=None, use_cached: bool = False, try_in_mem_cache: bool = True,
                 sentinel_format: bool = False, max_examples: int | None = None):
  """A task's or mixture's preprocessed examples: the first step of `seqio.get_dataset`.

  Args:
    provider: a `seqio.Task` or `seqio.Mixture`.
    task_feature_lengths: {'inputs': n, 'targets': m}; the task's own
      preprocessors truncate to them.
    split, shuffle, seed, num_epochs, use_cached, try_in_mem_cache: as in
      `seqio.Task.get_dataset`; shard: its `shard_info` (None: the whole split).
    sentinel_format: put inputs and targets into mT5's span-corruption format
      (`promot_t5x.sentinel`), as training and evaluation both need.
    max_examples: keep only the first this-many examples (None: all).

  Returns:
    A `tf.data.Dataset` of tokenized examples (`inputs`, `targets`, and the
    task's other features, `*_pretokenized` text included).
  """
  ds = provider.get_dataset(
      sequence_length=task_feature_lengths, split=split, use_cached=use_cached,
      shuffle=shuffle, num_epochs=num_epochs, shard_info=shard, seed=seed,
      try_in_mem_cache=try_in_mem_cache)
  if max_examples:
    ds = ds.take(max_examples)
  if sentinel_format:
    from promot_t5x import sentinel

    ds = sentinel.format_dataset(ds, provider.output_features, task_feature_lengths)
  return ds


def convert(ds, task_feature_lengths: Mapping[str, int], pack: bool = False):
  """The model's features of `task_dataset`'s examples (seqio's `EncDecFeatureConverter`).

  Returns a dataset of `encoder_input_tokens`, `decoder_input_tokens`,
  `decoder_target_tokens`, `decoder_loss_weights` (and the packing features
  with `pack`), each padded to its feature length.
  """
  import seqio

  return seqio.EncDecFeatureConverter(pack=pack)(ds, task_feature_lengths)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'BATCH_SIZE={global_batch_size} is not divisible by the '
                     f'{process_count} processes.')
  return global_batch_size // process_count


def get_dataset(cfg: DatasetConfig, shard_index: int = 0, num_shards: int = 1,
                num_epochs: int | None = None, prompt_index: int | None = None,
                prompt_for_task: Mapping[str, int] | None = None,
                drop_remainder: bool = True):
  """A batched `tf.data.Dataset` of this host's shard (model features, numpy-ready).

  prompt_index: one prompt for every example; prompt_for_task: {task name:
  prompt index} for multi-prompt mixtures (every task of the mixture must have
  one). Both come from `prompt_routing.training_routes`.
  """
  import seqio
  import tensorflow as tf

  import_task_modules(cfg.module)
  provider = get_mixture_or_task(cfg.mixture_or_task_name)
  shard = seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None
  batch = host_batch_size(cfg.batch_size, num_shards)

  def converted(task_or_mixture):
    ds = task_dataset(task_or_mixture, cfg.task_feature_lengths, split=cfg.split,
                      shuffle=cfg.shuffle, seed=cfg.seed, num_epochs=num_epochs, shard=shard,
                      use_cached=cfg.use_cached, try_in_mem_cache=cfg.try_in_mem_cache,
                      sentinel_format=cfg.sentinel_format)
    return convert(ds, cfg.task_feature_lengths, cfg.pack)

  def with_prompt(ds, index):
    return ds.map(lambda ex: {**ex, 'prompt_index': tf.constant(index, tf.int32)})

  if prompt_for_task:
    tasks = (provider.tasks if isinstance(provider, seqio.Mixture) else [provider])
    indices = prompt_routing.task_indices([t.name for t in tasks], prompt_for_task,
                                          cfg.mixture_or_task_name)
    datasets = [with_prompt(converted(t), index) for t, index in zip(tasks, indices)]
    if len(datasets) == 1:
      ds = datasets[0]
    else:
      rates = [float(provider.get_rate(t)) for t in tasks]
      total = sum(rates)
      ds = tf.data.Dataset.sample_from_datasets(
          datasets, weights=[r / total for r in rates], seed=cfg.seed,
          stop_on_empty_dataset=num_epochs is not None)
  else:
    ds = converted(provider)
    if prompt_index is not None:
      ds = with_prompt(ds, prompt_index)
  if cfg.length_buckets is not None and len(cfg.length_buckets) > 1:
    if num_shards > 1:
      raise ValueError('LENGTH_BUCKETS works in one process only (every process must feed '
                       'batches of one shape); set it to None for multi-host runs.')
    return _bucketed_batches(ds, cfg.length_buckets, batch, drop_remainder)
  return ds.batch(batch, drop_remainder=drop_remainder)


def _bucketed_batches(ds, buckets: tuple[int, ...], batch: int, drop_remainder: bool):
  """Groups examples by real encoder length; cuts each batch's encoder features to its bucket."""
  import tensorflow as tf

  bounds = tf.constant(buckets, tf.int64)

  def key(ex):
    length = tf.reduce_sum(tf.cast(tf.not_equal(ex['encoder_input_tokens'], 0), tf.int64))
    return tf.reduce_sum(tf.cast(bounds < length, tf.int64))  # index of the smallest bucket >= length

  def reduce(bucket, window):
    size = bounds[bucket]

    def cut(b):
      return {k: (v[:, :size] if k.startswith('encoder_') else v) for k, v in b.items()}

    return window.batch(batch, drop_remainder=drop_remainder).map(cut)

  return ds.group_by_window(key_func=key, reduce_func=reduce, window_size=batch)


def sorted_batches(features: Mapping[str, np.ndarray], batch_size: int, buckets: Sequence[int]
                   ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """Fixed-shape batches of in-memory examples, longest input first (evaluation's batches).

  Sorting by length makes each batch pad little; one batch size and a few
  encoder lengths keep the compiled functions few.

  Args:
    features: {feature: [N, ...]} as `convert` makes them; needs
      `encoder_input_tokens` [N, L], 0-padded.
    batch_size: rows of every batch; a short last batch is filled with copies
      of its first example (the caller drops their outputs).
    buckets: ascending encoder lengths whose last holds every input
      (`length_buckets`); each batch's `encoder_*` features are cut to the
      smallest one that holds its longest input, as training's buckets are.

  Yields:
    (the indices into N of the batch's own examples [<= batch_size], the batch).
  """
  lengths = np.count_nonzero(features['encoder_input_tokens'], axis=1)
  order = np.argsort(-lengths, kind='stable')
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    longest = int(lengths[idx].max())
    length = next(b for b in buckets if b >= longest)
    rows = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    yield idx, {k: v[rows, :length] if k.startswith('encoder_') else v[rows]
                for k, v in features.items()}


def with_prompt_index(batch: Mapping[str, np.ndarray], prompt_index: int | None
                      ) -> dict[str, np.ndarray]:
  """A numpy batch with `prompt_index` [batch] set to one prompt, or without it (None: plain model)."""
  if prompt_index is None:
    return {k: v for k, v in batch.items() if k != 'prompt_index'}
  return {**batch, 'prompt_index': np.full((batch['encoder_input_tokens'].shape[0],),
                                           prompt_index, np.int32)}


def numpy_batches(ds, skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a batched dataset as dicts of numpy arrays, after `skip_batches`."""
  if skip_batches:
    ds = ds.skip(skip_batches)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(v) for k, v in batch.items()}


def count_tokens(batch: Mapping[str, Any]) -> int:
  """Real (non-padding) input + target tokens in a batch, for tokens/s."""
  n = 0
  for key in ('encoder_input_tokens', 'decoder_target_tokens'):
    if key in batch:
      n += int(np.count_nonzero(np.asarray(batch[key])))
  return n
