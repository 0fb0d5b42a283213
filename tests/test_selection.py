"""Checkpoint selection by validation: the best step is checkpointed, recorded, kept and read back."""

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from promot_t5x import data, optimizers, param_sets, partitioning, selection
from promot_t5x import train as train_lib
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.models import encoder_decoder, t5


def _model():
  cfg = t5.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg))


def _meta(step):
  return {'step': step, 'batches_consumed': step, 'stage': 'x'}


def test_a_tie_keeps_the_earlier_best_and_pruning_never_deletes_it(tmp_path):
  params = _model().init_params(jax.random.PRNGKey(0))
  run = str(tmp_path / 'run')
  mgr = ckpt_manager.TrainCheckpointManager(run, keep=1, best_metric='acc')
  for step, acc in [(1, 50.0), (2, 90.0), (3, 90.0), (4, 60.0), (5, None)]:
    mgr.save(step, params, {}, _meta(step), metrics=None if acc is None else {'acc': acc})
  assert sorted(mgr.all_steps()) == [2, 5]
  mgr.close()
  best = selection.read_best(ckpt_manager.checkpoint_dir(run))
  assert (best.step, best.metric, best.value, best.order) == (2, 'acc', 90.0, 2)
  assert selection.checkpoint_step(run) == 'best'
  # A resumed manager knows the best: 90 again is no improvement, 95 is.
  mgr = ckpt_manager.TrainCheckpointManager(run, keep=1, best_metric='acc')
  assert not mgr.is_new_best({'acc': 90.0}) and mgr.is_new_best({'acc': 95.0})
  # ... and keeps it while it prunes (a resumed run once lost its best step here, orbax's
  # keep-best policy not reading back the metrics it had ranked the checkpoints by).
  for step in (6, 7):
    mgr.save(step, params, {}, _meta(step), metrics={'acc': 80.0})
  assert sorted(mgr.all_steps()) == [2, 7]
  # A new best replaces the old, which is pruned only at the next save: a crash between
  # orbax's save and best.json's update leaves best.json naming a step that exists.
  mgr.save(8, params, {}, _meta(8), metrics={'acc': 95.0})
  assert sorted(mgr.all_steps()) == [2, 8]
  assert selection.read_best(ckpt_manager.checkpoint_dir(run)).step == 8
  mgr.save(9, params, {}, _meta(9), metrics={'acc': 10.0})
  assert sorted(mgr.all_steps()) == [8, 9]
  mgr.close()


def test_min_mode_and_a_missing_metric():
  best = selection.BestRecord(step=3, metric='loss', value=2.0)
  assert selection.improves(best, 1.5, 'min') and not selection.improves(best, 2.5, 'min')
  assert selection.improves(None, 0.0, 'max')
  with pytest.raises(ValueError, match='CHECKPOINT_BEST_METRIC'):
    selection.metric_value({'rte/accuracy': 1.0}, 'rte/acc')


def test_a_best_metric_without_validation_is_refused_with_the_fix():
  with pytest.raises(ValueError, match='eval/during_training.gin'):
    selection.check_config('rte/accuracy', 'max', has_evaluator=False, eval_period=None)
  with pytest.raises(ValueError, match="'max' or 'min'"):
    selection.check_config(None, 'best', has_evaluator=True, eval_period=1)
  selection.check_config(None, 'max', has_evaluator=False, eval_period=None)


def _register_task(vocab_path):
  vocab = seqio.SentencePieceVocabulary(vocab_path, extra_ids=0)

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'inputs': ['test at', 'the see', 'what is'] * 4,
                                               'targets': ['test', 'see', 'what'] * 4})
  name = 'selectiontest_task'
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  features = {'inputs': seqio.Feature(vocab, add_eos=True),
              'targets': seqio.Feature(vocab, add_eos=True)}
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=('train',)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features)
  return name


def _scripted(metric, values, seen):
  """An evaluator that returns `values[step]` for `metric` and records the steps it saw."""
  def evaluator(model, params, step):
    del model, params
    seen.append(step)
    return {metric: values[step]}
  return evaluator


def _train(task, evaluator, model_dir, steps, metric, **kwargs):
  """A tiny fine-tuning run validated every step, selecting on `metric`."""
  return train_lib.train(
      model=_model(), stage=param_sets.stage_by_name('finetune'),
      train_dataset=data.DatasetConfig(task, {'inputs': 8, 'targets': 4}, batch_size=2),
      model_dir=model_dir, train_steps=steps, optimizer=optimizers.adafactor(1e-2),
      partitioner=partitioning.Partitioner(partitioning.make_mesh(1, 1, devices=jax.devices()[:1])),
      checkpoint_period=100, keep_checkpoints=1, best_metric=metric,
      eval_period=1, evaluator=evaluator, log_period=100, **kwargs)


def test_training_checkpoints_the_best_step_between_periods_and_keeps_it(tmp_path, fixtures_dir):
  task = _register_task(str(fixtures_dir / 'sentencepiece.model'))
  seen = []
  evaluator = _scripted('task/accuracy', {1: 10.0, 2: 50.0, 3: 30.0, 4: 40.0, 5: 45.0}, seen)
  run = str(tmp_path / 'run')
  result = _train(task, evaluator, run, 5, 'task/accuracy')
  assert result.step == 5 and seen == [1, 2, 3, 4, 5]
  # Step 2 was checkpointed although the period is 100, and KEEP_CHECKPOINTS=1 kept it.
  assert ckpt_manager.best_step(run) == 2
  assert sorted(int(d.name) for d in (tmp_path / 'run' / 'checkpoints').iterdir() if d.name.isdigit()) == [2, 5]
  best = param_sets.flatten(ckpt_manager.load_run_params(run, step=selection.checkpoint_step(run)))
  last = param_sets.flatten(ckpt_manager.load_run_params(run, step='latest'))
  assert any(not np.array_equal(best[p], last[p]) for p in best)  # a different model


def test_a_run_stops_once_its_best_reaches_the_ceiling_and_a_rerun_does_nothing(tmp_path, fixtures_dir):
  task = _register_task(str(fixtures_dir / 'sentencepiece.model'))
  # BLEU's float noise above 100 counts as the ceiling.
  seen = []
  evaluator = _scripted('task/bleu', {1: 40.0, 2: 100.00000000000004, 3: 100.0, 4: 100.0, 5: 100.0}, seen)

  def run(steps, stop_at_best=100.0):
    return _train(task, evaluator, str(tmp_path / 'run'), steps, 'task/bleu', stop_at_best=stop_at_best)

  result = run(5)
  assert result.step == 2 and seen == [1, 2]
  assert ckpt_manager.best_step(str(tmp_path / 'run')) == 2
  # Run again (the same or more steps): the best has reached the ceiling, nothing trains.
  again = run(8)
  assert again.step == 2 and seen == [1, 2]
  # Without the stop the run goes on, and the ties keep step 2 as its best: what the stop saved.
  run(5, stop_at_best=None)
  assert seen == [1, 2, 3, 4, 5] and ckpt_manager.best_step(str(tmp_path / 'run')) == 2


def test_stop_at_best_needs_a_selection_metric_and_reads_the_mode():
  with pytest.raises(ValueError, match='CHECKPOINT_BEST_METRIC'):
    selection.check_config(None, 'max', has_evaluator=True, eval_period=1, stop_at_best=100.0)
  assert selection.reached(100.0, 100.0, 'max') and not selection.reached(99.99, 100.0, 'max')
  assert selection.reached(0.0, 0.0, 'min') and not selection.reached(0.01, 0.0, 'min')
