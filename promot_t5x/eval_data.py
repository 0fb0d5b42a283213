"""A task's evaluation examples: read once per process, tokenized and post-processed once.

`load_task_data` reads a task's split through `promot_t5x.data` (the same
`task_dataset` and feature converter as training, so the task's own
preprocessors truncate exactly as in training and as `seqio.Evaluator` would)
and keeps, beside the model's features, what scoring and reports need: the
examples as seqio yields them (for postprocessors that read them), the
post-processed targets, the input text, and how many inputs and targets the
feature lengths truncated (counted from `*_pretokenized` text re-tokenized).

Data is read once per (task, split, feature lengths, max_examples) per process
and kept (`clear_data_cache()` drops it), so a new evaluator or a new
checkpoint costs no data time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from promot_t5x import data as data_lib

_DATA_SEED = 42  # seqio.Evaluator's; eval data is read unshuffled anyway.


@dataclasses.dataclass
class TaskData:
  """A task's evaluation examples, tokenized and post-processed once.

  examples: the task's examples as seqio yields them (numpy), for
    postprocessors that read the example. inputs: [N, input_length] int32
    (0-padded to the feature length); input_lengths: [N].
    decoder_*: EncDecFeatureConverter's target features [N, target_length].
    targets: post-processed targets (what metrics compare with).
  """

  task: Any  # seqio.Task
  split: str
  examples: list[dict[str, Any]]
  inputs: np.ndarray
  input_lengths: np.ndarray
  decoder_input_tokens: np.ndarray
  decoder_target_tokens: np.ndarray
  decoder_loss_weights: np.ndarray
  input_text: list[str]
  targets: list[Any]
  truncated: np.ndarray | None  # [N] bool: input longer than its feature length
  truncated_targets: int | None
  articles_cut: int | None

  def __len__(self) -> int:
    return len(self.examples)

  def features(self) -> dict[str, np.ndarray]:
    """The model's features of every example, for `data.sorted_batches`."""
    return {'encoder_input_tokens': self.inputs, 'decoder_input_tokens': self.decoder_input_tokens,
            'decoder_target_tokens': self.decoder_target_tokens,
            'decoder_loss_weights': self.decoder_loss_weights}


_DATA_CACHE: dict[tuple, TaskData] = {}


def clear_data_cache() -> None:
  """Forgets every loaded evaluation dataset (e.g. after re-registering tasks)."""
  _DATA_CACHE.clear()


def as_text(value: Any) -> str:
  """A text feature (bytes, a 0-d numpy string) as str."""
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.dtype.kind in 'SO' and value.ndim == 0:
    return as_text(value.item())
  return str(value)


def _full_length(feature, text: str | None) -> int | None:
  if text is None:
    return None
  return len(feature.vocabulary.encode(text)) + int(bool(feature.add_eos))


def load_task_data(task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                   max_examples: int | None = None, try_in_mem_cache: bool = True,
                   sentinel_format: bool = False) -> TaskData:
  """Reads (or returns the cached) evaluation examples of one task.

  The task's dataset is read unshuffled at `task_feature_lengths`, so its own
  preprocessors truncate (k-shot tasks from the left) exactly as in training
  and as `seqio.Evaluator` would, and the first `max_examples` are kept.
  With `sentinel_format`, the tokens are then put into sentinel format as in
  training (`promot_t5x.sentinel.format_dataset`).
  """
  import seqio

  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f'{task_name!r} is a mixture; evaluate its tasks (make_suite expands it).')
  lengths = {'inputs': int(task_feature_lengths['inputs']),
             'targets': int(task_feature_lengths['targets'])}
  key = (task_name, id(task), split, tuple(sorted(lengths.items())), max_examples,
         try_in_mem_cache, sentinel_format)
  if key in _DATA_CACHE:
    return _DATA_CACHE[key]
  if split not in task.splits:
    raise ValueError(f'Task {task_name!r} has no split {split!r} (splits: {list(task.splits)}).')
  for feature in ('inputs', 'targets'):
    if feature not in task.output_features:
      raise ValueError(f'Task {task_name!r} has no {feature!r} feature; the evaluator runs '
                       'encoder-decoder (inputs -> targets) tasks.')
  _check_metric_support(task)

  start = time.time()
  ds = data_lib.task_dataset(task, lengths, split=split, shuffle=False, num_epochs=1,
                            seed=_DATA_SEED, try_in_mem_cache=try_in_mem_cache,
                            sentinel_format=sentinel_format, max_examples=max_examples).cache()
  examples = list(ds.as_numpy_iterator())
  if not examples:
    raise ValueError(f'Task {task_name!r} yielded no examples on split {split!r}.')
  features = {k: [] for k in ('encoder_input_tokens', 'decoder_input_tokens',
                              'decoder_target_tokens', 'decoder_loss_weights')}
  for ex in data_lib.convert(ds, lengths).as_numpy_iterator():
    for k in features:
      features[k].append(ex[k])
  arrays = {k: np.stack(v).astype(np.int32) for k, v in features.items()}

  out_features = task.output_features
  input_text, truncated, long_targets, targets = [], [], [], []
  has_pretokenized = all('inputs_pretokenized' in ex for ex in examples)
  for ex in examples:
    text = as_text(ex['inputs_pretokenized']) if has_pretokenized else None
    input_text.append(text if text is not None else out_features['inputs'].vocabulary.decode(
        [int(t) for t in ex['inputs']]))
    if has_pretokenized:
      truncated.append(_full_length(out_features['inputs'], text) > lengths['inputs'])
    if 'targets_pretokenized' in ex:
      target = as_text(ex['targets_pretokenized'])
      long_targets.append(_full_length(out_features['targets'], target) > lengths['targets'])
    else:
      target = out_features['targets'].vocabulary.decode([int(t) for t in ex['targets']])
    targets.append(postprocess(task, target, ex, is_target=True))
  articles_cut = (int(sum(bool(ex['article_truncated']) for ex in examples))
                  if all('article_truncated' in ex for ex in examples) else None)
  data = TaskData(
      task=task, split=split, examples=examples, inputs=arrays['encoder_input_tokens'],
      input_lengths=(arrays['encoder_input_tokens'] > 0).sum(axis=1).astype(np.int32),
      decoder_input_tokens=arrays['decoder_input_tokens'],
      decoder_target_tokens=arrays['decoder_target_tokens'],
      decoder_loss_weights=arrays['decoder_loss_weights'],
      input_text=input_text, targets=targets,
      truncated=np.asarray(truncated, bool) if has_pretokenized else None,
      truncated_targets=int(sum(long_targets)) if len(long_targets) == len(examples) else None,
      articles_cut=articles_cut)
  logging.info('evaluation data of %s/%s: %d examples in %.1fs', task_name, split, len(data),
               time.time() - start)
  _DATA_CACHE[key] = data
  return data


def _check_metric_support(task) -> None:
  if not task.metric_fns:
    raise ValueError(f'Task {task.name!r} has no metric_fns, so it cannot be scored; give it one '
                     '(e.g. promot_t5x.metrics.accuracy) or leave it out of the suite.')
  if len(task.metric_objs) != len(task.metric_fns):
    raise ValueError(f'Task {task.name!r} has seqio metric objects (metric_objs); this '
                     'evaluator runs metric_fns only. Register its metrics as metric_fns.')
  if task.predict_with_aux_metric_fns:
    raise ValueError(f'Task {task.name!r} has metric functions with aux_values, which this '
                     'evaluator does not provide; use (targets, predictions) metric functions.')


def postprocess(task, value: Any, example: Mapping[str, Any], is_target: bool) -> Any:
  if task.postprocess_fn is None:
    return value
  return task.postprocess_fn(value, example=example, is_target=is_target)
