"""TensorBoard summaries in T5X's layout, the learning rate, and a progress line with ETA.

T5X writes one TensorBoard run per purpose under MODEL_DIR, and so do we:

  MODEL_DIR/train/                 loss, accuracy, learning_rate, grad_norm,
                                   timing/steps_per_second, timing/tokens_per_second,
                                   timing/seconds (since the previous summary),
                                   timing/uptime (since the run started)
  MODEL_DIR/training_eval/<task>/  teacher-forced metrics on held-out data (loss, accuracy)
  MODEL_DIR/inference_eval/<task>/ metrics of decoded predictions, tagged `eval/<metric>`
                                   (as seqio's TensorBoardLogger tags them)

An evaluator metric named `<task>/<metric>` (`rte/accuracy`,
`fewshot/triviaqa/exact_match`) goes to `inference_eval/<task>/` as
`eval/<metric>`. `tensorboard --logdir=MODEL_DIR` shows the three side by
side, as for a T5X run.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import numpy as np

from promot_t5x import fs

TRAIN_DIR = 'train'
TRAINING_EVAL_DIR = 'training_eval'
INFERENCE_EVAL_DIR = 'inference_eval'


class RunSummaries:
  """TensorBoard writers for one run, one event folder per purpose (created on first write)."""

  def __init__(self, model_dir: str, enabled: bool = True):
    """Args: model_dir: MODEL_DIR. enabled: False on processes other than 0 (they write nothing)."""
    self.model_dir = model_dir
    self.enabled = enabled
    self._writers: dict[str, Any] = {}

  def _writer(self, relative: str) -> Any:
    if relative not in self._writers:
      from clu import metric_writers

      self._writers[relative] = metric_writers.create_default_writer(
          fs.join(self.model_dir, relative), asynchronous=False)
    return self._writers[relative]

  def _write(self, relative: str, step: int, scalars: Mapping[str, float]) -> None:
    if self.enabled and scalars:
      self._writer(relative).write_scalars(step, {k: float(v) for k, v in scalars.items()})

  def train(self, step: int, scalars: Mapping[str, float]) -> None:
    """Training scalars (loss, accuracy, learning_rate, timing/*) into MODEL_DIR/train/."""
    self._write(TRAIN_DIR, step, scalars)

  def training_eval(self, step: int, task: str, scalars: Mapping[str, float]) -> None:
    """Teacher-forced metrics of `task` into MODEL_DIR/training_eval/<task>/."""
    self._write(f'{TRAINING_EVAL_DIR}/{task}', step, scalars)

  def inference_eval(self, step: int, metrics: Mapping[str, float]) -> None:
    """Evaluator metrics `<task>/<metric>` into MODEL_DIR/inference_eval/<task>/ as `eval/<metric>`."""
    by_task: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
      task, _, metric = name.rpartition('/')
      by_task.setdefault(task, {})[f'eval/{metric}'] = value
    for task, scalars in by_task.items():
      self._write(f'{INFERENCE_EVAL_DIR}/{task}' if task else INFERENCE_EVAL_DIR,
                  step, scalars)

  def close(self) -> None:
    for writer in self._writers.values():
      writer.flush()
      writer.close()
    self._writers = {}


def learning_rates(optimizer: Any, step: int) -> dict[str, float]:
  """The learning rate(s) applied at `step`: {'learning_rate': lr}, or one per parameter set.

  Reads our optimizers (`optimizers.adafactor`, `multi_set_optimizer`): a
  number or a schedule in `.learning_rate`. Optimizers that do not expose one
  (a plain optax transformation) give {}.

  Args:
    optimizer: the run's optimizer.
    step: the step count before the update.

  Returns:
    {'learning_rate': lr} for one optimizer; {'learning_rate/<set>': lr} for
    several parameter sets; {} when unknown.
  """
  def one(tx: Any) -> float | None:
    lr = getattr(tx, 'learning_rate', None)
    if lr is None:
      return None
    value = lr(step) if callable(lr) else lr
    return float(np.asarray(value))

  per_set = getattr(optimizer, 'per_set', None)
  if per_set is None:
    lr = one(optimizer)
    return {} if lr is None else {'learning_rate': lr}
  rates = {name: one(tx) for name, tx in per_set.items()}
  rates = {name: lr for name, lr in rates.items() if lr is not None}
  if len(rates) == 1:
    return {'learning_rate': next(iter(rates.values()))}
  return {f'learning_rate/{name}': lr for name, lr in rates.items()}


def format_duration(seconds: float) -> str:
  """`1:02:03` (hours unbounded), or `?` for a rate not yet known."""
  if not np.isfinite(seconds) or seconds < 0:
    return '?'
  return str(datetime.timedelta(seconds=int(round(seconds))))


def progress_line(step: int, train_steps: int, loss: float, grad_norm: float,
                  steps_per_second: float, tokens_per_second: float) -> str:
  """`step 120/1000 (12%)  loss 2.3100  grad_norm 0.812  3.10 steps/s  4,096 tokens/s  ETA 0:04:44`."""
  remaining = (train_steps - step) / steps_per_second if steps_per_second > 0 else float('inf')
  return (f'step {step}/{train_steps} ({100 * step / train_steps:.0f}%)  loss {loss:.4f}  '
          f'grad_norm {grad_norm:.3f}  {steps_per_second:.2f} steps/s  '
          f'{tokens_per_second:,.0f} tokens/s  ETA {format_duration(remaining)}')
