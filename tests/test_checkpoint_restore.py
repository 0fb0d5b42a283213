"""Restoring a run from another checkpoint (T5X semantics) and crash-safe saves."""

import jax
import numpy as np
import pytest

from promot_t5x import param_sets
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.models import encoder_decoder, prompts, t5


def _model(prompt_length=None, mlp=32):
  prompt = prompts.PromptConfig(length=prompt_length) if prompt_length else None
  cfg = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=mlp,
                    num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    prompt=prompt)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg))


def _save_run(model_dir, params, step=1):
  mgr = ckpt_manager.TrainCheckpointManager(str(model_dir), keep=3)
  mgr.save(step, params, {}, {'step': step, 'batches_consumed': step, 'stage': 'finetune'})
  mgr.close()


def _abstract(model):
  import flax.linen as nn

  return nn.unbox(model.abstract_params())


def test_stage1_from_a_pretrained_model_initializes_only_the_prompt(tmp_path):
  base = _model()
  base_params = base.init_params(jax.random.PRNGKey(0))
  _save_run(tmp_path / 'pretrained', base_params)
  prompted = _model(prompt_length=4)
  cfg = ckpt_manager.RestoreConfig(str(tmp_path / 'pretrained'), fallback_to_init=('prompt/.*',))
  params, report = ckpt_manager.restore_params(
      cfg, _abstract(prompted),
      lambda paths, restored: param_sets.flatten(prompted.init_params(jax.random.PRNGKey(1))))
  assert report.left_out == ('prompt/task',)
  flat, base_flat = param_sets.flatten(params), param_sets.flatten(base_params)
  assert all(np.array_equal(flat[p], np.asarray(base_flat[p])) for p in base_flat)
  assert flat['prompt/task'].shape == (4, 16)


def test_missing_prompt_without_fallback_names_it(tmp_path):
  _save_run(tmp_path / 'pretrained', _model().init_params(jax.random.PRNGKey(0)))
  cfg = ckpt_manager.RestoreConfig(str(tmp_path / 'pretrained'))
  with pytest.raises(ckpt_manager.CheckpointError, match=r"Missing in the checkpoint: \['prompt/task'\]"):
    ckpt_manager.restore_params(cfg, _abstract(_model(prompt_length=4)))


def test_wrong_shape_names_the_parameter_and_both_shapes(tmp_path):
  _save_run(tmp_path / 'run', _model().init_params(jax.random.PRNGKey(0)))
  cfg = ckpt_manager.RestoreConfig(str(tmp_path / 'run'))
  with pytest.raises(ckpt_manager.CheckpointError) as e:
    ckpt_manager.restore_params(cfg, _abstract(_model(mlp=24)))
  assert 'decoder/layers_0/mlp/wo/kernel: checkpoint (32, 16) vs model (24, 16)' in str(e.value)


def test_assignment_map_renames_and_skips(tmp_path):
  base_params = _model().init_params(jax.random.PRNGKey(0))
  _save_run(tmp_path / 'run', base_params)
  target = _model()
  fresh = target.init_params(jax.random.PRNGKey(7))
  cfg = ckpt_manager.RestoreConfig(
      str(tmp_path / 'run'),
      assignment_map=((r'decoder/logits_dense/kernel', None),  # re-initialize the head
                      # load the decoder's norm from the encoder's (a rename)
                      (r'decoder/decoder_norm/scale', 'encoder/encoder_norm/scale')))
  params, report = ckpt_manager.restore_params(cfg, _abstract(target),
                                               lambda paths, restored: param_sets.flatten(fresh))
  flat, base_flat = param_sets.flatten(params), param_sets.flatten(base_params)
  assert report.left_out == ('decoder/logits_dense/kernel',)
  assert np.array_equal(flat['decoder/logits_dense/kernel'],
                        np.asarray(param_sets.flatten(fresh)['decoder/logits_dense/kernel']))
  assert np.array_equal(flat['decoder/decoder_norm/scale'],
                        np.asarray(base_flat['encoder/encoder_norm/scale']))


def test_a_crash_during_save_leaves_the_previous_checkpoint_intact(tmp_path):
  params = _model().init_params(jax.random.PRNGKey(0))
  _save_run(tmp_path / 'run', params, step=2)

  class Unserializable:
    pass

  mgr = ckpt_manager.TrainCheckpointManager(str(tmp_path / 'run'), keep=3)
  broken = param_sets.unflatten({**param_sets.flatten(params), 'encoder/x': Unserializable()})
  with pytest.raises(Exception):  # noqa: B017 -- whatever orbax raises for an unserializable leaf
    mgr.save(4, broken, {}, {'step': 4, 'batches_consumed': 4, 'stage': 'finetune'})
  mgr.close()
  # A restart sees step 2 only, and its parameters load unchanged.
  mgr = ckpt_manager.TrainCheckpointManager(str(tmp_path / 'run'), keep=3)
  assert mgr.latest_step() == 2
  mgr.close()
  loaded = param_sets.flatten(ckpt_manager.load_run_params(str(tmp_path / 'run')))
  for p, v in param_sets.flatten(params).items():
    assert np.array_equal(loaded[p], np.asarray(v))


def test_keep_best_keeps_the_best_and_the_latest(tmp_path):
  params = _model().init_params(jax.random.PRNGKey(0))
  mgr = ckpt_manager.TrainCheckpointManager(str(tmp_path / 'run'), keep=1, best_metric='acc')
  for step, acc in [(1, 50.0), (2, 90.0), (3, 70.0), (4, 60.0)]:
    mgr.save(step, params, {}, {'step': step, 'batches_consumed': step, 'stage': 'x'},
             metrics={'acc': acc})
  assert sorted(mgr.all_steps()) == [2, 4]
  mgr.close()
  assert ckpt_manager.best_step(str(tmp_path / 'run')) == 2
  best = ckpt_manager.load_run_params(str(tmp_path / 'run'), step='best')
  assert param_sets.flatten(best).keys() == param_sets.flatten(params).keys()
