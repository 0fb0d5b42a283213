"""One task of a suite on one model: batches in, decoded or ranked outputs, metrics out.

`evaluate_task` runs the model on a task's examples (`eval_data.load_task_data`),
batched by `promot_t5x.data.sorted_batches`, with the task's prompt attached or
removed, and scores the outputs as seqio does with legacy metric functions.

Models: tasks without a prompt run a prompt-less copy of the module (dropout
off, `eval_model`) on the parameters without the prompt (`plain_params`), so
every checkpoint of one architecture, whatever its prompt length or training
dropout, shares one set of compiled functions. Decoding uses
`EncoderDecoderModel.predict_batch` (cached decoder), compiled once per
(batch, bucket, decode length) and reused across tasks, runs and calls.

Sharding: with a `partitioning.Partitioner`, parameters are placed by their
logical axes and each batch is split over `data` (every host feeds the same
full batch; outputs are gathered). Without one, parameters are used where they
are (the trainer's sharded arrays work as they are).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from promot_t5x import data as data_lib
from promot_t5x import metrics as metrics_lib
from promot_t5x import param_sets, postprocessing, prompt_routing, run_guard, sentinel
from promot_t5x.eval_data import TaskData, as_text, load_task_data, postprocess
from promot_t5x.models import encoder_decoder
from promot_t5x.results import SUITE, TaskResult
from promot_t5x.suites import RANK_CLASSIFICATION, EvalSettings, Suite, examples_limit

if TYPE_CHECKING:
  from promot_t5x import partitioning


# -----------------------------------------------------------------------------
# Models: the plain (prompt removed) and prompted forms used at evaluation.
# -----------------------------------------------------------------------------
def eval_model(model: encoder_decoder.EncoderDecoderModel, keep_prompt: bool
               ) -> encoder_decoder.EncoderDecoderModel:
  """The model with dropout off, and without its prompt unless `keep_prompt`.

  Equal configurations give equal (hashable) modules, so compiled decoders
  are shared by every checkpoint of one architecture.
  """
  config = model.config
  new = config.replace(dropout_rate=0.0, prompt=config.prompt if keep_prompt else None)
  if new == config:
    return model
  return dataclasses.replace(model, module=model.module.clone(config=new))


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Parameters without the soft prompt(s): what the plain model runs on."""
  return {k: v for k, v in params.items() if k != param_sets.PROMPT_ROOT}


def _prompt(suite: Suite, task: str, model: encoder_decoder.EncoderDecoderModel,
            params: Mapping[str, Any]) -> str | None:
  """The prompt name a task of `suite` runs with, or None (the plain model): `prompt_routing.choose`.

  AUTO: no prompt if the model (or its parameters) has none; otherwise the
  prompt named like the task (its display name or full name: multi-task
  ProMoT keeps one prompt per task), else the model's only prompt.
  """
  request = suite.prompt_for_task.get(task)
  return prompt_routing.choose(
      request, model.config.prompt, task_names=(suite.display_name(task), task),
      has_params=param_sets.PROMPT_ROOT in params,
      no_prompt_error=(
          f'Suite {suite.name!r} asks for soft prompt {request!r} on {task!r} but the '
          'model has no soft prompt (no prompt config or no prompt parameters). '
          'Evaluate a checkpoint that has one, or set the prompt to None.'))


# -----------------------------------------------------------------------------
# Batches and model calls.
# -----------------------------------------------------------------------------
def _batches(data: TaskData, settings: EvalSettings, input_length: int
             ) -> Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(example indices, batch): `settings.batch_size` rows, inputs cut to a length bucket."""
  return data_lib.sorted_batches(data.features(), settings.batch_size,
                                 data_lib.length_buckets(settings.length_buckets, input_length))


def _to_host(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class _Runner:
  """Calls one model on batches: placement (optional mesh) and prompt routing."""

  def __init__(self, model: encoder_decoder.EncoderDecoderModel, params: Any,
               settings: EvalSettings, partitioner: partitioning.Partitioner | None):
    self.model, self.settings, self.partitioner = model, settings, partitioner
    if partitioner is not None:
      data = partitioner.mesh_shape.get('data', 1)
      if settings.batch_size % data:
        raise ValueError(f'EvalSettings.batch_size={settings.batch_size} must be a multiple of '
                         f"the mesh's data axis ({data}).")
      shardings = partitioner.param_shardings(model.abstract_params())
      params = jax.device_put(params, shardings)
    self.params = params

  def _place(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    if self.partitioner is None:
      return batch
    out = {}
    for k, v in batch.items():
      sharding = self.partitioner.data_sharding(v.ndim)
      out[k] = jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
    return out

  def _call(self, fn: Callable[..., Any], batch: dict[str, np.ndarray]) -> np.ndarray:
    placed = self._place(batch)
    if self.partitioner is None:
      return fn(self.params, placed)
    with self.partitioner.activate():
      return fn(self.params, placed)

  def generate(self, batch: dict[str, np.ndarray], max_decode_length: int) -> Any:
    s = self.settings
    return self._call(lambda p, b: self.model.predict_batch(
        p, b, decoder=s.decoder, num_beams=s.num_beams, max_decode_length=max_decode_length,
        alpha=s.alpha), batch)

  def rank(self, batch: dict[str, np.ndarray], label_ids: Sequence[Sequence[int]]) -> Any:
    return self._call(lambda p, b: self.model.rank_classify(p, b, label_ids), batch)

  def score(self, batch: dict[str, np.ndarray]) -> Any:
    return self._call(_compiled_scorer(self.model.module), batch)


@functools.lru_cache(maxsize=16)
def _compiled_scorer(module) -> Callable[[Any, Mapping[str, Any]], jax.Array]:
  """jit(params, batch) -> [batch] log p(targets | inputs) (for score metric functions)."""
  model = encoder_decoder.EncoderDecoderModel(module)
  return jax.jit(model.score_batch)

# -----------------------------------------------------------------------------
# One task.
# -----------------------------------------------------------------------------
def _outputs(runner: _Runner, data: TaskData, settings: EvalSettings, input_length: int,
             prompt_index: int | None, max_decode_length: int,
             labels: Sequence[str] | None) -> list[str]:
  """Decoded text per example (generation), or the chosen label (rank classification)."""
  vocab = data.task.output_features['targets'].vocabulary
  pending = []
  label_ids = [list(vocab.encode(label)) for label in labels] if labels else None
  if label_ids and settings.sentinel_format:
    s0, s1 = sentinel.sentinel_ids(vocab)
    label_ids = [[s0, *ids, s1] for ids in label_ids]
  # Dispatch every batch before reading any result: host work overlaps device work.
  for idx, batch in _batches(data, settings, input_length):
    batch = data_lib.with_prompt_index(
        {'encoder_input_tokens': batch['encoder_input_tokens']}, prompt_index)
    if labels:
      pending.append((idx, runner.rank(batch, label_ids)))
    else:
      pending.append((idx, runner.generate(batch, max_decode_length)))
  outputs: list[str] = [''] * len(data)
  for idx, result in pending:
    result = _to_host(result)
    for row, i in enumerate(idx):
      if labels:
        outputs[i] = labels[int(result[row])]
      elif settings.sentinel_format:
        outputs[i] = sentinel.decode(vocab, result[row])
      else:
        outputs[i] = vocab.decode([int(t) for t in result[row]])
  return outputs


def _scores(runner: _Runner, data: TaskData, settings: EvalSettings, input_length: int,
            prompt_index: int | None) -> list[float]:
  scores = [0.0] * len(data)
  for idx, batch in _batches(data, settings, input_length):
    values = _to_host(runner.score(data_lib.with_prompt_index(batch, prompt_index)))
    for row, i in enumerate(idx):
      scores[i] = float(values[row])
  return scores


def _metric_value(value: Any) -> float:
  value = getattr(value, 'value', value)  # seqio metric values (Scalar, ...)
  return float(np.asarray(value))


def _check_vocabulary(data: TaskData, model: encoder_decoder.EncoderDecoderModel) -> None:
  largest = int(data.inputs.max(initial=0))
  if largest >= model.config.vocab_size:
    raise ValueError(f'Task {data.task.name!r} has token id {largest}, beyond the model\'s '
                     f'vocabulary ({model.config.vocab_size}); the task and the model gin use '
                     'different vocabularies.')


def evaluate_task(model: encoder_decoder.EncoderDecoderModel, params: Any, suite: Suite,
                  task_name: str, settings: EvalSettings = EvalSettings(),
                  partitioner: partitioning.Partitioner | None = None,
                  _runners: dict | None = None) -> TaskResult:
  """Evaluates one task of `suite` (see the module docstring)."""
  lengths = suite.task_feature_lengths
  data = load_task_data(task_name, suite.split, lengths, examples_limit(suite, settings),
                        settings.try_in_mem_cache, settings.sentinel_format)
  _check_vocabulary(data, model)
  task = data.task
  prompt = _prompt(suite, task_name, model, params)
  runners = {} if _runners is None else _runners
  key = prompt is not None
  if key not in runners:
    runners[key] = _Runner(eval_model(model, keep_prompt=key),
                           params if key else plain_params(params), settings, partitioner)
  runner = runners[key]
  prompt_index = None if prompt is None else runner.model.config.prompt.index(prompt)
  labels = suite.rank_classification.get(task_name)
  method = RANK_CLASSIFICATION if labels else settings.decoder
  max_decode_length = settings.max_decode_length or lengths['targets']
  warn_key = (task_name, data.split, max_decode_length)
  if (not labels and data.truncated_targets and max_decode_length <= lengths['targets']
      and warn_key not in _WARNED_LONG_TARGETS):
    # Outputs stop at the decode length while the references go on: the score is capped.
    _WARNED_LONG_TARGETS.add(warn_key)
    run_guard.warn(f'{data.truncated_targets} of the {len(data)} references of {task_name!r} are '
                   f"longer than the decode length, {max_decode_length} tokens (TASK_FEATURE_LENGTHS"
                   "['targets']): outputs are cut there and the score is capped. Raise the targets "
                   'length to the longest reference.')

  outputs = _outputs(runner, data, settings, lengths['inputs'], prompt_index,
                     max_decode_length, labels)
  answers = ([sentinel.span(out) for out in outputs]
             if settings.sentinel_format and not labels else outputs)
  predictions = [postprocess(task, out, ex, is_target=False)
                 for out, ex in zip(answers, data.examples)]
  results: dict[str, float] = {}

  def add(metric_result: Mapping[str, Any]) -> None:
    for k, v in metric_result.items():
      if k in results:
        raise ValueError(f"Duplicate metric key '{k}' in task {task_name!r}.")
      results[k] = _metric_value(v)

  first_keys: list[str] = []
  for fn in task.predict_metric_fns:
    out = fn(data.targets, predictions)
    first_keys += list(out)[:1]
    add(out)
  if task.score_metric_fns:
    scores = _scores(runner, data, settings, lengths['inputs'], prompt_index)
    for fn in task.score_metric_fns:
      out = fn(data.targets, scores)
      first_keys += list(out)[:1]
      add(out)
  primary = suite.primary_metrics.get(task_name) or (first_keys[0] if first_keys else None)
  if primary not in results:
    raise ValueError(f'Primary metric {primary!r} of task {task_name!r} is not among its '
                     f'metrics {sorted(results)}; fix Suite.primary_metrics.')

  in_format, rate = None, None
  if suite.role == SUITE and suite.format_labels is not None:
    texts = [p if isinstance(p, str) else as_text(p) for p in predictions]
    rate = metrics_lib.format_specialization_rate(texts, suite.format_labels, prefixes=())
    labels_set = set(suite.format_labels)
    in_format = [postprocessing.first_word(t) in labels_set for t in texts]
  records = []
  for i, (out, pred) in enumerate(zip(outputs, predictions)):
    record = {'index': i, 'inputs': data.input_text[i], 'target': _jsonable(data.targets[i]),
              'output': out, 'prediction': _jsonable(pred),
              'truncated': None if data.truncated is None else bool(data.truncated[i])}
    if in_format is not None:
      record['in_label_format'] = in_format[i]
    records.append(record)
  return TaskResult(
      task=task_name, name=suite.display_name(task_name), split=suite.split,
      num_examples=len(data), method=method, prompt=prompt, metrics=results,
      primary_metric=primary, score=results[primary],
      format_specialization=rate,
      truncated_inputs=None if data.truncated is None else int(data.truncated.sum()),
      truncated_targets=data.truncated_targets, articles_cut=data.articles_cut,
      predictions=records)


# (task, split, decode length) already warned of references longer than the decode length.
_WARNED_LONG_TARGETS: set[tuple[str, str, int]] = set()


def _jsonable(value: Any) -> Any:
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return [_jsonable(v) for v in value.tolist()]
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return str(value)
