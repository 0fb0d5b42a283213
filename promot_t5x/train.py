r"""`promot-train`: one training run (a stage of ProMoT, fine-tuning, pretraining).

  promot-train \
    --gin_file=models/t5_1_1_small.gin --gin_file=runs/prompt_tuning.gin \
    --gin.MIXTURE_OR_TASK_NAME=my_task --gin.MIXTURE_OR_TASK_MODULE=my_tasks \
    --gin.MODEL_DIR=/tmp/stage1 --gin.INITIAL_CHECKPOINT_PATH=/path/to/pretrained

Read top to bottom, a run (`train`) is:
  1. check the configuration and which prompt each example runs with;
  2. build the trainer for the stage (which parameter sets train, which are frozen);
  3. resume from MODEL_DIR if it holds a checkpoint, else start from
     INITIAL_CHECKPOINT_PATH (T5X restore semantics) or from initialization;
  4. stream batches of this host's data shard, skipping those already consumed;
  5. step, log (console with ETA, TensorBoard in T5X's train/ and inference_eval/
     folders, metrics.jsonl), evaluate every EVAL_PERIOD,
     checkpoint every CHECKPOINT_PERIOD; stop on a NaN/Inf loss without saving it.

Every start that its checkpoints accept writes config.gin (all gin bindings)
and model-info.txt beside them and appends both to MODEL_DIR/history/; the
configuration is validated first, one run holds MODEL_DIR at a time, and
SIGTERM/SIGINT save a checkpoint before exiting (run_guard, preflight,
docs/errors.md). `promot` (gin/promot/*.gin) chains stage 1 and stage 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax

from promot_t5x import (
  cli,
  data,
  fs,
  gin_utils,
  param_sets,
  partitioning,
  paths,
  preflight,
  prompt_routing,
  run_guard,
  selection,
  summaries,
  t5x_flags,
)
from promot_t5x import trainer as trainer_lib
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.checkpoints import orbax_io
from promot_t5x.models import encoder_decoder, t5
from promot_t5x.models import prompts as prompts_lib

Evaluator = Callable[[encoder_decoder.EncoderDecoderModel, Any, int], Mapping[str, float]]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  step: int
  loss: float | None
  eval_metrics: dict[str, float]
  resumed_from: int | None
  stopped_by: str | None = None  # the signal's name when a SIGTERM/SIGINT stopped the run


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


class _RunLog:
  """Console + TensorBoard in T5X's layout (`summaries`) + metrics.jsonl (process 0 writes)."""

  # Our metrics.jsonl names -> T5X's TensorBoard tags.
  _T5X_TAGS = {'token_accuracy': 'accuracy', 'steps_per_sec': 'timing/steps_per_second',
               'tokens_per_sec': 'timing/tokens_per_second'}

  def __init__(self, model_dir: str):
    self.enabled = jax.process_index() == 0
    self.jsonl = fs.join(model_dir, 'metrics.jsonl')
    self.summaries = summaries.RunSummaries(model_dir, enabled=self.enabled)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    evals = {k[len('eval/'):]: v for k, v in scalars.items() if k.startswith('eval/')}
    self.summaries.inference_eval(step, evals)
    self.summaries.train(step, {self._T5X_TAGS.get(k, k): v for k, v in scalars.items()
                                if not k.startswith('eval/')})
    fs.append_text(self.jsonl, json.dumps({'step': step, **scalars}) + '\n')

  def close(self) -> None:
    self.summaries.close()


def _initial_params(trainer: trainer_lib.Trainer, restore: ckpt_manager.RestoreConfig | None,
                    seed: int) -> Any:
  """The first step's parameters, laid out on the mesh.

  Each process initializes, and reads from INITIAL_CHECKPOINT_PATH, only the
  slices its own devices hold: no process ever holds the whole model on its
  host or on one device (mT5 XXL is 52 GB in float32).
  """
  model = trainer.model
  shardings = param_sets.merge(trainer.state_shardings.trainable, trainer.state_shardings.frozen)
  rng = jax.random.PRNGKey(seed)
  # Checkpoints hold the unrolled layout: a model with scanned layers restores
  # and initializes in that layout, then stacks (t5.scan_params).
  scanned = model.config if (restore is not None and model.config.scan_layers) else None
  if scanned is not None:
    scanned_shardings = shardings
    shardings = t5.unscan_params(shardings, scanned, take=t5.take_layer_abstract)
  flat_shardings = param_sets.flatten(shardings)

  def init(paths: list[str]) -> dict[str, jax.Array]:
    def selected(key):
      params = model.init_params(key)
      if scanned is not None:
        params = t5.unscan_params(params, scanned)
      flat = param_sets.flatten(params)
      return {p: flat[p] for p in paths}

    # Compiled with only `paths` as outputs, the initialization of the rest
    # is pruned away.
    with trainer.partitioner.activate():
      return jax.jit(selected, out_shardings={p: flat_shardings[p] for p in paths})(rng)

  if restore is None:
    _log(f'initializing parameters from seed {seed}')
    return param_sets.unflatten(init(list(flat_shardings)))

  def init_from_restored(paths: list[str], restored: dict[str, Any]) -> dict[str, Any]:
    fresh = init(paths)
    # Prompt initializers that read the vocabulary embedding must read the
    # *restored* table, not a random one.
    prompt_cfg = model.config.prompt
    embedding = restored.get('token_embedder/embedding')
    if prompt_cfg is not None and prompt_cfg.init in ('vocab_sample', 'class_labels') and (
        embedding is not None):
      for i, name in enumerate(prompt_cfg.names):
        path = f'{param_sets.PROMPT_ROOT}/{name}'
        if path in fresh:
          make = jax.jit(functools.partial(prompts_lib.init_prompt_array, config=prompt_cfg),
                         out_shardings=flat_shardings[path])
          fresh[path] = make(jax.random.fold_in(rng, i), embedding=embedding)
    return fresh

  abstract_params = trainer.abstract_params
  if scanned is not None:
    abstract_params = t5.unscan_params(abstract_params, scanned, take=t5.take_layer_abstract)
  try:
    params, report = ckpt_manager.restore_params(restore, abstract_params,
                                                 init_from_restored, model.module, shardings)
  except Exception as e:
    run_guard.raise_if_unreadable_initial(e, restore.path)
    raise
  _log(report.summary())
  if scanned is not None:
    params = jax.device_put(t5.scan_params(params, scanned), scanned_shardings)
  return params


def _require_file_system_path(name: str, path: str) -> None:
  problem = paths.url_path_problem(name, path)
  if problem:
    raise ValueError(problem)
  if not fs.is_local(path):
    fs.exists(path)  # a bucket out of reach fails here, saying why (fs.RemoteAccessError)


def train(*,
          model: encoder_decoder.EncoderDecoderModel,
          stage: param_sets.Stage,
          train_dataset: data.DatasetConfig,
          model_dir: str,
          train_steps: int,
          optimizer: Any,
          partitioner: partitioning.Partitioner | None = None,
          initial_checkpoint: ckpt_manager.RestoreConfig | None = None,
          checkpoint_period: int = 1000,
          keep_checkpoints: int | None = 3,
          best_metric: str | None = None,
          best_mode: str = 'max',
          eval_period: int | None = None,
          evaluator: Evaluator | None = None,
          num_microbatches: int | None = None,
          seed: int = 0,
          dropout_seed: int | None = None,
          log_period: int = 10,
          prompt_for_task: Mapping[str, str] | None = None,
          max_grad_norm: float | None = None,
          stop_after_steps: int | None = None,
          run_eval_before_training: bool = False,
          stop_at_best: float | None = None) -> TrainResult:
  """Trains `model` for `train_steps` steps of `stage` and checkpoints to `model_dir`.

  The body takes these steps in this order (each under a banner comment):
    1. Check the configuration, and which prompt the examples run with;
       nothing is read from or written to MODEL_DIR before this passes.
    2. Build the trainer for the stage and take MODEL_DIR's lock.
    3. Resume from MODEL_DIR's newest intact checkpoint, else start from
       `initial_checkpoint` or from initialization.
    4. Open the input pipeline: this host's data shard, each example with its
       prompt, after the batches the run already consumed.
    5. Train: step; log every `log_period` steps; evaluate every `eval_period`;
       checkpoint every `checkpoint_period`, at the last step, on a new best,
       on SIGTERM/SIGINT and after `stop_after_steps`; stop on a NaN/Inf loss
       without saving it.

  Args:
    model: the encoder-decoder model; its `T5Config` holds the soft prompt(s), if any.
    stage: which parameter sets train and which stay frozen, and whether the
      examples run through the prompt (`param_sets.Stage`).
    train_dataset: the task or mixture, feature lengths, global batch size
      and shuffling (`data.DatasetConfig`).
    model_dir: the run's folder (MODEL_DIR): checkpoints, logs, config.gin,
      history; a local or mounted path.
    train_steps: the step to train up to (TRAIN_STEPS); a resumed run continues
      toward it, one already there does nothing.
    optimizer: the optax transformation applied to the trainable sets
      (`optimizers`, e.g. Adafactor with per-set learning rates).
    partitioner: the device mesh and logical-axis rules (None: every device on
      the `data` axis, `partitioning.make_mesh()`).
    initial_checkpoint: where a fresh run takes its parameters from
      (INITIAL_CHECKPOINT_PATH, T5X restore semantics); None: initialization.
      Not read when MODEL_DIR holds a checkpoint to resume from.
    checkpoint_period: steps between checkpoints (CHECKPOINT_PERIOD).
    keep_checkpoints: how many of the newest checkpoints to keep (None: all);
      the best one is kept besides.
    best_metric: an evaluation metric (e.g. 'rte/accuracy') whose best
      checkpoint is kept and recorded in best.json; needs `evaluator` and
      `eval_period`. None: no selection.
    best_mode: 'max' or 'min': whether a higher or a lower `best_metric` is better.
    eval_period: steps between evaluations (None: none); the last step is
      evaluated too.
    evaluator: `evaluator(model, params, step) -> {metric: value}`, e.g.
      `evaluation.TrainingEvaluator`; None: no evaluation.
    num_microbatches: split each batch into this many and accumulate their
      gradients (None: one).
    seed: the parameter initialization's seed, and dropout's unless `dropout_seed`.
    dropout_seed: dropout's seed (None: `seed`).
    log_period: steps between log lines (console with ETA, TensorBoard,
      metrics.jsonl).
    prompt_for_task: {task name: prompt name} for a multi-task mixture
      (multi-task ProMoT: each task's examples run with their own prompt);
      None: one prompt for the run (`prompt_routing.training_routes`).
    max_grad_norm: clip the gradients' global norm to this (None: no clipping).
    stop_after_steps: stop (after checkpointing) once this many steps ran in
      this call; for preemption drills and tests. The next call resumes.
    run_eval_before_training: as in T5X, also evaluate the starting parameters
      (step 0 of a fresh run) when an evaluator is given.
    stop_at_best: stop once `best_metric` reaches this value, its best possible
      one (e.g. 100 for accuracy or BLEU): ties keep the earlier step, so no
      later checkpoint could be selected, and the steps after it would change
      nothing the run reports. A run that reached it does nothing when run
      again. None: train all `train_steps`.

  Returns:
    A `TrainResult`: the folder, the last step, its loss, the last
    evaluation's metrics, the step resumed from (None: a fresh start) and the
    signal that stopped the run, if one did.

  Raises:
    ValueError: a configuration that cannot run (before anything is written).
    CheckpointError: MODEL_DIR's checkpoints or `initial_checkpoint` do not
      fit the run.
    NonFiniteLossError: the loss or the parameter update became NaN or Inf.
  """
  # ---------------------------------------------------------------------------
  # 1. Check the configuration.
  # ---------------------------------------------------------------------------
  if train_steps <= 0:
    raise ValueError(f'TRAIN_STEPS must be positive, got {train_steps}.')
  if checkpoint_period <= 0:
    raise ValueError(f'CHECKPOINT_PERIOD must be positive, got {checkpoint_period}.')
  _require_file_system_path('MODEL_DIR', model_dir)
  selection.check_config(best_metric, best_mode, evaluator is not None, eval_period, stop_at_best)
  if initial_checkpoint is not None:
    _require_file_system_path('INITIAL_CHECKPOINT_PATH', initial_checkpoint.path)
  partitioner = partitioner or partitioning.Partitioner(partitioning.make_mesh())
  prompt_index, prompt_for_task_idx = prompt_routing.training_routes(stage, model.config.prompt,
                                                                     prompt_for_task)
  preflight.check_training(model=model, stage=stage, train_dataset=train_dataset,
                           model_dir=model_dir, partitioner=partitioner,
                           initial_checkpoint=initial_checkpoint,
                           resuming=bool(orbax_io.finished_steps(ckpt_manager.checkpoint_dir(model_dir))))

  # ---------------------------------------------------------------------------
  # 2. Build the trainer; take MODEL_DIR.
  # ---------------------------------------------------------------------------
  trainer = trainer_lib.Trainer(model, stage, optimizer, partitioner, num_microbatches,
                                seed if dropout_seed is None else dropout_seed, max_grad_norm)
  created = run_guard.first_missing_folder(model_dir)
  fs.makedirs(model_dir)
  lock = run_guard.RunLock(model_dir)
  lock.acquire()

  # ---------------------------------------------------------------------------
  # 3. Resume or start.
  # ---------------------------------------------------------------------------
  try:
    manager = ckpt_manager.TrainCheckpointManager(model_dir, keep_checkpoints, best_metric,
                                                  best_mode, model.config)
    state, latest, run_meta = _resume_or_start(trainer, manager, model_dir, initial_checkpoint,
                                               train_dataset.batch_size, seed)
  except BaseException as e:
    run_guard.remove_unused_start(created, model_dir)  # a failed first start leaves nothing
    lock.release()
    run_guard.raise_if_disk_full(e, model_dir)
    raise
  batches_consumed = run_meta['batches_consumed']
  start = int(state.step)
  best = manager.best if stop_at_best is not None else None
  if start >= train_steps or (best is not None and selection.reached(best.value, stop_at_best, best_mode)):
    _log(f'{model_dir} is already at step {start} >= TRAIN_STEPS={train_steps}; nothing to do.'
         if start >= train_steps else
         f'{model_dir}: its best, {best.metric} {best.value:.2f} at step {best.step}, reached '
         f'stop_at_best={stop_at_best}; nothing to do.')
    manager.close()
    lock.release()
    return TrainResult(model_dir, start, None, {}, latest)

  # ---------------------------------------------------------------------------
  # 4. Input pipeline.
  # ---------------------------------------------------------------------------
  layout = partitioner.data_layout()
  batches = _train_batches(train_dataset, layout, prompt_index, prompt_for_task_idx,
                           batches_consumed)

  # ---------------------------------------------------------------------------
  # 5. Train loop.
  # ---------------------------------------------------------------------------
  log = _RunLog(model_dir)
  preemption = run_guard.Preemption().install()
  _log(f'training {stage.name}: steps {start} -> {train_steps}, global batch '
       f'{train_dataset.batch_size}, mesh {dict(partitioner.mesh_shape)}, '
       f'{sum(trainer.trainable_mask.values())} trainable / {len(trainer.trainable_mask)} '
       'parameter arrays')

  def check_finite(step: int, metrics: Mapping[str, Any]) -> float:
    return _finite_loss(step, metrics, model_dir, manager.latest_step)

  def evaluate(params: Any, at_step: int) -> dict[str, float]:
    metrics = {k: float(v) for k, v in evaluator(model, params, at_step).items()}
    log.write(at_step, {f'eval/{k}': v for k, v in metrics.items()})
    _log(f'eval at step {at_step}: ' + ', '.join(f'{k} {v:.2f}' for k, v in metrics.items()))
    return metrics

  eval_metrics: dict[str, float] = {}
  last_loss = None
  pending: tuple[int, Any] | None = None  # (step, metrics) not yet checked on the host
  t0, tokens, t_step = time.time(), 0, start
  t_run = t0
  steps_this_process = 0
  step = start
  stopped_by = None
  try:
    if run_eval_before_training and evaluator is not None and latest is None:
      eval_metrics = evaluate(state.params, start)
    while step < train_steps:
      try:
        batch = next(batches)
      except StopIteration:
        raise RuntimeError(f'The training data of {train_dataset.mixture_or_task_name!r} ran '
                           'out; it is read with num_epochs=None, so the task yields no '
                           'examples for this split/shard.') from None
      tokens += data.count_tokens(batch) * layout.num_shards
      state, metrics = trainer.train_step(state, partitioner.shard_batch(batch))
      step += 1
      steps_this_process += 1
      batches_consumed += 1
      # Check the previous step's loss while this one runs (keeps an accelerator busy; on
      # one CPU device computations run inline, see host_memory).
      if pending is not None:
        last_loss = check_finite(*pending)
      pending = (step, metrics)

      do_eval = evaluator is not None and eval_period and (
          step % eval_period == 0 or step == train_steps)
      preempted = preemption.stop_requested()
      do_ckpt = step % checkpoint_period == 0 or step == train_steps or preempted or (
          stop_after_steps is not None and steps_this_process >= stop_after_steps)
      if step % log_period == 0 or do_ckpt or do_eval:
        last_loss = check_finite(*pending)
        pending = None
        now = time.time()
        rate = (step - t_step) / max(now - t0, 1e-9)
        scalars = {'loss': last_loss, 'grad_norm': float(metrics['grad_norm']),
                   'token_accuracy': float(metrics['correct']) / max(float(metrics['weight_sum']), 1.0),
                   'steps_per_sec': rate, 'tokens_per_sec': tokens / max(now - t0, 1e-9),
                   'timing/seconds': now - t0, 'timing/uptime': now - t_run,
                   **summaries.learning_rates(optimizer, step)}
        log.write(step, scalars)
        _log(summaries.progress_line(step, train_steps, last_loss, scalars['grad_norm'], rate,
                                     scalars['tokens_per_sec']))
        t0, tokens, t_step = now, 0, step
      if do_eval:
        eval_metrics = evaluate(state.params, step)
        do_ckpt = do_ckpt or manager.is_new_best(eval_metrics)  # the best always has a checkpoint
      if do_ckpt:
        meta = {**run_meta, 'step': step, 'batches_consumed': batches_consumed,
                'stage': stage.name, 'loss': last_loss}
        ckpt_metrics = eval_metrics if (best_metric and do_eval) else None
        manager.save(step, state.params, state.opt_state, meta, ckpt_metrics)
        _log(f'saved checkpoint {manager.directory}/{step}')
        if preempted:
          stopped_by = preemption.name
          _log(f'stopped by {stopped_by} at step {step}/{train_steps}: checkpoint '
               f'{manager.directory}/{step} is saved; run the same command again to resume.')
          break
        if stop_after_steps is not None and steps_this_process >= stop_after_steps:
          _log(f'stopping after {steps_this_process} steps as asked (stop_after_steps)')
          break
      if (do_eval and stop_at_best is not None
          and selection.reached(selection.metric_value(eval_metrics, best_metric), stop_at_best, best_mode)):
        _log(f'stopping at step {step}/{train_steps}: {best_metric} reached stop_at_best={stop_at_best} '
             '(no later step could be selected)')
        break
    if pending is not None:
      last_loss = check_finite(*pending)
  except Exception as e:
    run_guard.raise_if_disk_full(e, model_dir)
    raise
  finally:
    preemption.uninstall()
    log.close()
    manager.close()
    lock.release()
  return TrainResult(model_dir, step, last_loss, eval_metrics, latest, stopped_by)


def _train_batches(train_dataset: data.DatasetConfig, layout: Any, prompt_index: int | None,
                   prompt_for_task: Mapping[str, int] | None, batches_consumed: int
                   ) -> Iterator[dict[str, Any]]:
  """This host's numpy batches (its data shard of `layout`), after `batches_consumed`.

  Processes on the same data rows of the mesh load the same shard, so they
  must shuffle alike (a fixed seed).
  """
  if layout.num_shards < jax.process_count():
    if train_dataset.shuffle and train_dataset.seed is None:
      raise ValueError(
          f'{jax.process_count()} processes load {layout.num_shards} data shards (processes '
          "sharing the mesh's data rows load the same one), so they must shuffle alike: set "
          'SEED (DatasetConfig.seed) instead of None.')
    _log(f'{jax.process_count()} processes load {layout.num_shards} data shards (processes '
         "on the same data rows of the mesh share one); this one loads shard "
         f'{layout.shard_index}')
  ds = data.get_dataset(train_dataset, layout.shard_index, layout.num_shards,
                        num_epochs=None, prompt_index=prompt_index,
                        prompt_for_task=prompt_for_task)
  return data.numpy_batches(ds, skip_batches=batches_consumed)


def _finite_loss(step: int, metrics: Mapping[str, Any], model_dir: str,
                 last_good: Callable[[], int | None]) -> float:
  """The step's loss; raises `NonFiniteLossError` if it or the update is NaN/Inf.

  last_good: the newest saved checkpoint's step (None: none yet), asked for the message only.
  """
  loss, update_norm = float(metrics['loss']), float(metrics['update_norm'])
  if not (math.isfinite(loss) and math.isfinite(update_norm)):
    what = f'Loss is {loss}' if not math.isfinite(loss) else (
        f'The parameter update is {update_norm} (loss {loss})')
    good = last_good()
    kept = (f'the last good checkpoint (step {good}) is intact' if good is not None else
            'no checkpoint had been saved yet, so a rerun starts from the beginning')
    raise NonFiniteLossError(
        f'{what} at step {step} of {model_dir}. Stopped without saving; {kept}. Lower the '
        'learning rate, check the data (and that its vocabulary fits the model), or resume '
        'from that checkpoint.')
  return loss


def _resume_or_start(trainer: trainer_lib.Trainer, manager: ckpt_manager.TrainCheckpointManager,
                     model_dir: str, initial_checkpoint: ckpt_manager.RestoreConfig | None,
                     batch_size: int, seed: int) -> tuple[Any, int | None, dict[str, Any]]:
  """The run's first state: resumed from MODEL_DIR's newest intact checkpoint, else new.

  The configuration is checked against the checkpoint (stage, the source a
  stage 2 started from) before its arrays are read, and the run's start is
  recorded (MODEL_DIR/history/) only once it was accepted.

  Returns:
    (train state, the step resumed from or None, the record carried in every
    checkpoint's meta: batches consumed, batch size, learning rate, source checkpoint).
  """
  source = run_guard.source_of(initial_checkpoint)
  learning_rate = run_guard.learning_rate_macro()
  latest, moved = None, []
  run_meta = {'batches_consumed': 0, 'batch_size': batch_size, 'learning_rate': learning_rate,
              'initial_checkpoint': source}
  if manager.all_steps():
    abstract = trainer.abstract_state()
    params_abs = param_sets.merge(abstract.trainable, abstract.frozen)
    latest, params, opt_state, meta, moved = manager.restore_newest_intact(
        params_abs, abstract.opt_state,
        lambda m: run_guard.refuse_mismatch(model_dir, m, trainer.stage.name, source))
    run_guard.warn_changes(model_dir, meta, batch_size, learning_rate)
    state = trainer.state_from_parts(params, opt_state, latest)
    run_meta.update(batches_consumed=int(meta['batches_consumed']),
                    initial_checkpoint=meta.get('initial_checkpoint', source))
    _log(f'resuming {model_dir} from step {latest}')
  else:
    state = trainer.create_state(_initial_params(trainer, initial_checkpoint, seed))
  run_guard.record_start(model_dir, _gin_config_or_empty(), trainer_lib.describe_params(trainer), {
      'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'argv': sys.argv, 'resumed_from': latest,
      'bad_checkpoints_moved': moved, 'processes': jax.process_count(), **run_meta})
  return state, latest, run_meta


def _gin_config_or_empty() -> str:
  try:
    return gin_utils.config_str()
  except Exception:  # train() called directly from Python, without gin.
    return '# train() was called without gin.\n'


def promot(*, model_dir: str, stage1: Callable[..., TrainResult],
           stage2: Callable[..., TrainResult], stage2_from: str = 'latest'
           ) -> tuple[TrainResult, TrainResult]:
  """ProMoT end to end: stage 1 in MODEL_DIR/stage1, stage 2 from it in MODEL_DIR/stage2.

  stage1/stage2 are gin-scoped `train` functions (gin/promot/*.gin). Stage 2
  starts from stage 1's result (prompt and model); each stage resumes or is
  skipped if already finished, so the recipe can be re-run after a crash.
  """
  dir1 = fs.join(model_dir, 'stage1')
  dir2 = fs.join(model_dir, 'stage2')
  # Before stage 1 spends a step: would stage 2 still resume after it?
  run_guard.refuse_stale_stage2(dir1, dir2, stage2_from,
                                run_guard.stage_train_steps('train.promot', 'stage1'))
  r1 = stage1(model_dir=dir1)
  if r1.stopped_by:  # preempted: stage 2 must not start from an unfinished stage 1
    return r1, r1
  r2 = stage2(model_dir=dir2,
              initial_checkpoint=ckpt_manager.RestoreConfig(dir1, step=stage2_from))
  return r1, r2


def run(entry: str = 'promot_t5x.train.train') -> Any:
  """Calls the gin-configured entry point (`train` by default; see gin/runs)."""
  return gin_utils.bind_and_call(entry, '')


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main('promot-train', __doc__, _main, argv, add_flags=_flags, gin=True,
                  multi_process=True,
                  gin_required='--gin_file is required (a model gin and a run gin, or a recipe).')


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--entry', default=None,
                      help='gin configurable to run (default: the run gin\'s RUN_ENTRY, '
                           'else promot_t5x.train.train).')
  t5x_flags.add_flags(parser)


def _main(args: argparse.Namespace) -> int:
  t5x_flags.apply(args, 'promot-train')
  result = run(args.entry or _gin_macro_or('RUN_ENTRY', 'promot_t5x.train.train'))
  _log(f'done: {result}')
  # Duck-typed: under `python -m promot_t5x.train` this module is __main__, not gin's promot_t5x.train.
  stopped = [r for r in (result if isinstance(result, tuple) else (result,))
             if getattr(r, 'stopped_by', None)]
  if stopped:
    import signal

    return 128 + int(getattr(signal, stopped[0].stopped_by, signal.SIGTERM))
  return 0


def _gin_macro_or(name: str, default: str) -> str:
  import gin

  try:
    return gin.query_parameter(f'%{name}')
  except ValueError:
    return default


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()
