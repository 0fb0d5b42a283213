"""Checkpoint selection by validation: which step is best, and keeping it.

The paper keeps, of each run, the checkpoint that scores best on the
fine-tuned task's validation metric (stage 1: the best of 5 prompts, one per
1,000 steps; stage 2 and fine-tuning: the best of 10 models, one per 100
steps), starts stage 2 from stage 1's best prompt, and reports the best
model. Any run gets the same with three gin bindings (gin/eval/during_training.gin):

  train.train.evaluator = @evaluation.TrainingEvaluator()   # validation metrics
  train.train.eval_period = %EVAL_PERIOD                    # how often
  train.train.best_metric = %CHECKPOINT_BEST_METRIC         # e.g. 'rte/accuracy'

How it works (one decision, here; the checkpoint manager and `train` call it):

  * every evaluation is compared with the best so far (`improves`; ties keep
    the earlier step); a new best is checkpointed even between checkpoint
    periods, so the best step always has a checkpoint;
  * the best is recorded in `<run>/checkpoints/best.json` (`BestRecord`:
    step, metric, value and an `order` that grows with each new best); the
    checkpoint manager's keep-best policy keeps exactly the recorded step
    (read back from best.json on resume) while KEEP_CHECKPOINTS prunes the
    others;
  * `checkpoint_step(run_dir)` is 'best' for a run that recorded one, so
    evaluation (`CHECKPOINT_STEP`), stage 2 (`train.promot.stage2_from`) and
    experiments read the selected checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from promot_t5x import fs

BEST_FILE = 'best.json'
MODES = ('max', 'min')


@dataclasses.dataclass(frozen=True)
class BestRecord:
  """The best checkpoint of a run so far.

  Attributes:
    step: its training step.
    metric: the validation metric it was chosen on (e.g. 'rte/accuracy').
    value: that metric's value at the step.
    order: 1 for the first best, +1 for each later improvement.
  """

  step: int
  metric: str
  value: float
  order: int = 1


def check_config(best_metric: str | None, best_mode: str, has_evaluator: bool,
                 eval_period: int | None, stop_at_best: float | None = None) -> None:
  """Raises a ValueError naming the fix when selection is asked for but cannot run."""
  if best_mode not in MODES:
    raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
  if stop_at_best is not None and not best_metric:
    raise ValueError(f'stop_at_best={stop_at_best!r} stops a run once its best validation value '
                     'reaches it, but the run selects on no metric; set CHECKPOINT_BEST_METRIC '
                     '(and validation), or set stop_at_best to None.')
  if best_metric and not (has_evaluator and eval_period):
    raise ValueError(
        f'CHECKPOINT_BEST_METRIC={best_metric!r} selects checkpoints by validation, but the run '
        'has no evaluator or no EVAL_PERIOD; include eval/during_training.gin (or bind '
        'train.train.evaluator and EVAL_PERIOD), or set CHECKPOINT_BEST_METRIC = None.')


def read_best(checkpoint_directory: str) -> BestRecord | None:
  """The run's recorded best (None when it records none)."""
  path = fs.join(checkpoint_directory, BEST_FILE)
  if not fs.exists(path):
    return None
  raw = json.loads(fs.read_text(path))
  return BestRecord(step=int(raw['step']), metric=raw['metric'], value=float(raw['value']),
                    order=int(raw.get('order', 1)))


def write_best(checkpoint_directory: str, record: BestRecord) -> None:
  """Writes best.json atomically (call it on one process)."""
  fs.write_text(fs.join(checkpoint_directory, BEST_FILE), json.dumps(dataclasses.asdict(record)),
                atomic=True)


def improves(best: BestRecord | None, value: float, mode: str) -> bool:
  """Whether `value` beats the best so far (strictly: a tie keeps the earlier step)."""
  if best is None:
    return True
  return value > best.value if mode == 'max' else value < best.value


def reached(value: float, stop_at: float, mode: str) -> bool:
  """Whether a validation value has reached `stop_at` (the metric's best possible value).

  A run may stop there: ties keep the earlier step, so no later checkpoint could be
  selected. Float noise (BLEU of 100.00000000000004) counts as reached.
  """
  tolerance = 1e-9 * max(1.0, abs(stop_at))
  return value >= stop_at - tolerance if mode == 'max' else value <= stop_at + tolerance


def metric_value(metrics: Mapping[str, Any], best_metric: str) -> float:
  """The selection metric out of an evaluation's metrics, or a ValueError listing them."""
  if best_metric not in metrics:
    raise ValueError(f'best_metric {best_metric!r} is not among the evaluation metrics '
                     f'{sorted(metrics)}; fix CHECKPOINT_BEST_METRIC.')
  return float(metrics[best_metric])


def checkpoint_step(run_dir: str) -> str:
  """'best' when the run folder recorded a best checkpoint, else 'latest'."""
  return 'best' if read_best(fs.join(run_dir, 'checkpoints')) is not None else 'latest'
