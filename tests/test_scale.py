"""Options for large models: rematerialization, scanned layers, their checkpoints.

Each option changes how the step runs, never what it computes: the tests
compare gradients, optimizer steps, decoded tokens and checkpoints against
the plain unrolled model. (2-D parameter sharding is in test_trainer.py's
8-device equivalence test; the memory plan's options in test_memory_plan.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trainer import make_trainer, random_batch, run_steps  # the tests folder is on sys.path

from promot_t5x import eval as eval_lib
from promot_t5x import optimizers, param_sets
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.checkpoints import matching, orbax_io
from promot_t5x.models import encoder_decoder, t5


def tiny_config(**changes) -> t5.T5Config:
  cfg = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    num_encoder_layers=2, num_decoder_layers=3,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  return cfg.replace(**changes)


def model_of(cfg: t5.T5Config) -> encoder_decoder.EncoderDecoderModel:
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg))


def grads_of(model, params, batch, dropout_rng=None):
  return jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, dropout_rng)[0]))(params)


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
  got, want = param_sets.flatten(jax.device_get(got)), param_sets.flatten(jax.device_get(want))
  assert sorted(got) == sorted(want)
  for path in want:
    np.testing.assert_allclose(np.asarray(got[path]), np.asarray(want[path]), rtol=rtol,
                               atol=atol, err_msg=path)


@pytest.mark.parametrize('policy', ['minimal', 'full'])
def test_remat_gives_the_gradients_of_the_plain_model_with_dropout_on(policy):
  plain = model_of(tiny_config(dropout_rate=0.1))
  remat = model_of(tiny_config(dropout_rate=0.1, remat_policy=policy))
  params = plain.init_params(jax.random.PRNGKey(0))
  batch = random_batch(0)
  rng = jax.random.PRNGKey(7)  # the same dropout masks: remat replays the layer's rng
  assert_trees_close(grads_of(remat, params, batch, rng), grads_of(plain, params, batch, rng))


def test_unknown_remat_policy_names_the_choices():
  with pytest.raises(ValueError, match="'none', 'minimal', 'full'"):
    tiny_config(remat_policy='everything')


def test_scanned_layers_stack_parameters_with_a_layers_axis():
  boxed = t5.abstract_params(t5.Transformer(tiny_config(scan_layers=True)))
  kernel = boxed['decoder']['layers']['mlp']['wi_0']['kernel']
  assert kernel.value.shape == (3, 16, 32)
  assert tuple(kernel.names) == ('layers', 'embed', 'mlp')
  assert 'layers_0' not in boxed['encoder']
  # What a checkpoint of it holds: the unrolled T5X paths and shapes.
  shapes = matching.expected_shapes(t5.Transformer(tiny_config(scan_layers=True)))
  assert shapes == matching.expected_shapes(t5.Transformer(tiny_config()))
  assert shapes['decoder/layers_2/mlp/wi_0/kernel'] == (16, 32)


@pytest.mark.parametrize('policy', ['none', 'full'])
def test_scanned_layers_give_the_logits_and_gradients_of_unrolled_layers(policy):
  unrolled = model_of(tiny_config())
  scanned = model_of(tiny_config(scan_layers=True, remat_policy=policy))
  params = unrolled.init_params(jax.random.PRNGKey(1))
  stacked = t5.scan_params(params, unrolled.config)
  batch = random_batch(1)
  np.testing.assert_allclose(scanned.logits(stacked, batch), unrolled.logits(params, batch),
                             rtol=1e-5, atol=1e-5)
  grads = grads_of(scanned, stacked, batch)
  assert_trees_close(t5.unscan_params(grads, unrolled.config), grads_of(unrolled, params, batch))


def test_scan_and_unscan_are_inverse_and_refuse_a_wrong_depth():
  cfg = tiny_config()
  params = model_of(cfg).init_params(jax.random.PRNGKey(2))
  assert_trees_close(t5.unscan_params(t5.scan_params(params, cfg), cfg), params, rtol=0, atol=0)
  with pytest.raises(ValueError, match='decoder/layers_3 is missing'):
    t5.scan_params(params, cfg.replace(num_decoder_layers=4))


def test_a_scanned_model_decodes_the_tokens_of_the_unrolled_one():
  unrolled = model_of(tiny_config())
  scanned = model_of(tiny_config(scan_layers=True))
  params = unrolled.init_params(jax.random.PRNGKey(3))
  batch = random_batch(3, batch=4)
  for decoder in ('greedy', 'beam'):
    want = unrolled.predict_batch(params, batch, decoder=decoder, num_beams=2)
    got = scanned.predict_batch(t5.scan_params(params, unrolled.config), batch, decoder=decoder,
                                num_beams=2)
    np.testing.assert_array_equal(got, want)


def test_adafactor_steps_a_layer_stack_as_separate_layers():
  """Factoring, update clipping and parameter scale per layer: the unrolled update."""
  opt = optimizers.adafactor(0.1, min_dim_size_to_factor=4)
  rng = np.random.default_rng(0)
  layers = [{'kernel': rng.normal(size=(8, 6)).astype(np.float32)} for _ in range(3)]
  grads = [{'kernel': rng.normal(size=(8, 6)).astype(np.float32) * (i + 1)} for i in range(3)]
  unrolled = {f'layers_{i}': p for i, p in enumerate(layers)}
  stacked = {'layers': jax.tree.map(lambda *xs: np.stack(xs), *layers)}
  unrolled_grads = {f'layers_{i}': g for i, g in enumerate(grads)}
  stacked_grads = {'layers': jax.tree.map(lambda *xs: np.stack(xs), *grads)}
  state = opt.init(stacked)
  assert state.param_states['layers']['kernel']['v_row'].shape == (3, 8)
  state_u = opt.init(unrolled)
  for _ in range(2):
    upd, state = opt.update(stacked_grads, state, stacked)
    upd_u, state_u = opt.update(unrolled_grads, state_u, unrolled)
  for i in range(3):
    np.testing.assert_allclose(upd['layers']['kernel'][i], upd_u[f'layers_{i}']['kernel'],
                               rtol=1e-6)
  specs = opt.state_partition_specs(
      {'layers': {'kernel': jax.sharding.PartitionSpec(None, 'data', 'model')}}, stacked)
  assert specs.param_states['layers']['kernel'] == {
      'v_row': jax.sharding.PartitionSpec(None, 'data'),
      'v_col': jax.sharding.PartitionSpec(None, 'model')}


def test_scanned_training_on_8_devices_takes_the_unrolled_steps():
  """Scan + remat + 2-D sharding on a (2, 4) mesh == the plain model on one device."""
  unrolled = model_of(tiny_config(num_heads=4))
  scanned = model_of(tiny_config(num_heads=4, scan_layers=True, remat_policy='minimal'))
  params = unrolled.init_params(jax.random.PRNGKey(4))
  batches = [random_batch(i) for i in range(2)]
  ref, ref_losses = run_steps(make_trainer(unrolled, param_sets.FINETUNE), params, batches)
  trainer = make_trainer(scanned, param_sets.FINETUNE, mesh=(2, 4), parameter_partitioning_dims=2)
  state, losses = run_steps(trainer, t5.scan_params(params, unrolled.config), batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  assert_trees_close(t5.unscan_params(state.params, unrolled.config), ref.params, rtol=2e-4,
                     atol=2e-6)
  kernel = state.trainable['encoder']['layers']['mlp']['wi_0']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'data', 'model')


def test_checkpoints_of_scanned_runs_are_unrolled_on_disk_both_ways(tmp_path):
  cfg = tiny_config(scan_layers=True)
  scanned = model_of(cfg)
  trainer = make_trainer(scanned, param_sets.FINETUNE, mesh=(4, 2), parameter_partitioning_dims=2)
  state = trainer.create_state(scanned.init_params(jax.random.PRNGKey(5)))
  run_dir = tmp_path / 'run'
  manager = ckpt_manager.TrainCheckpointManager(str(run_dir), model_config=cfg)
  manager.save(3, state.params, state.opt_state, {'step': 3, 'stage': 'finetune'})
  # On disk: the T5X layout, readable by anything that reads an unrolled model.
  on_disk = param_sets.flatten(orbax_io.load_params(str(run_dir)))
  assert 'decoder/layers_2/mlp/wo/kernel' in on_disk
  assert not any('/layers/' in p for p in on_disk)
  np.testing.assert_array_equal(on_disk['decoder/layers_2/mlp/wo/kernel'],
                                np.asarray(state.params['decoder']['layers']['mlp']['wo']['kernel'][2]))
  # Resume: stacked again, on the shardings of the scanned state.
  abstract = trainer.abstract_state()
  params, _, meta = manager.restore(3, param_sets.merge(abstract.trainable, abstract.frozen),
                                    abstract.opt_state)
  manager.close()
  assert meta['step'] == 3
  assert_trees_close(params, state.params, rtol=0, atol=0)
  restored = params['encoder']['layers']['attention']['query']['kernel']
  assert restored.sharding.spec == jax.sharding.PartitionSpec(None, 'data', 'model')
  # The other way: an unrolled model's checkpoint loads into a scanned model
  # (and the scanned run's into an unrolled one) for evaluation.
  plain = model_of(tiny_config())
  unrolled_params = plain.init_params(jax.random.PRNGKey(6))
  orbax_io.save_params(str(tmp_path / 'plain'), unrolled_params)
  _, loaded = eval_lib.load_params(scanned, str(tmp_path / 'plain'))
  assert_trees_close(loaded, t5.scan_params(unrolled_params, plain.config), rtol=0, atol=0)
  _, loaded_plain = eval_lib.load_params(plain, str(run_dir))
  assert_trees_close(loaded_plain, t5.unscan_params(state.params, cfg), rtol=0, atol=0)


def test_stacked_layers_compile_one_layer_body():
  """The scanned train step's program does not grow with the number of layers."""
  def hlo_size(num_layers, scan):
    model = model_of(tiny_config(num_encoder_layers=num_layers, num_decoder_layers=num_layers,
                                 scan_layers=scan))
    trainer = make_trainer(model, param_sets.FINETUNE)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in random_batch(0).items()}
    return len(trainer.lower_train_step(trainer.abstract_state(), batch).as_text())

  assert hlo_size(6, scan=True) < 1.1 * hlo_size(2, scan=True)
  assert hlo_size(6, scan=False) > 2 * hlo_size(2, scan=False)


def test_stacked_layer_leaves_are_found_by_their_layers_key():
  tree = {'encoder': {'layers': {'k': jnp.zeros((2, 3))}, 'norm': jnp.zeros(3)}}
  assert optimizers.stacked_layer_leaves(tree) == [True, False]


@pytest.mark.slow
def test_promot_train_with_scan_remat_and_2d_restores_and_resumes_in_the_unrolled_layout(
    tmp_path, fixtures_dir):
  """promot-train by gin macros: from an unrolled checkpoint, killed-and-resumed, same result.

  A scanned run (remat full, 2-D sharding on 4 devices) starts from an unrolled
  model's checkpoint, stops after 2 steps and resumes for a third; it ends with
  the parameters of an unrolled 1-device run of 3 steps, and its checkpoints
  are unrolled on disk.
  """
  from test_train_runs import _cmd, _env, _final_params, _run, _toy_args

  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'base'), '--gin_file=runs/finetune.gin',
            '--gin.TRAIN_STEPS=1'), _env(fixtures_dir), timeout=900)
  start = f'--gin.INITIAL_CHECKPOINT_PATH={tmp_path / "base"}'
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'plain'), '--gin_file=runs/finetune.gin', start,
            '--gin.TRAIN_STEPS=3'), _env(fixtures_dir), timeout=900)
  scaled = ['--gin.SCAN_LAYERS=True', "--gin.REMAT_POLICY='full'",
            '--gin.PARAMETER_PARTITIONING_DIMS=2', '--gin.CHECKPOINT_PERIOD=1']
  env = _env(fixtures_dir, devices=4)
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'scan'), '--gin_file=runs/finetune.gin', start,
            '--gin.TRAIN_STEPS=2', *scaled), env, timeout=900)
  r = _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'scan'), '--gin_file=runs/finetune.gin', start,
                '--gin.TRAIN_STEPS=3', *scaled), env, timeout=900)
  assert 'resuming' in r.stdout + r.stderr
  plain, scan = _final_params(tmp_path / 'plain'), _final_params(tmp_path / 'scan')
  assert sorted(scan) == sorted(plain) and 'encoder/layers_0/mlp/wi_0/kernel' in scan
  for path in plain:
    np.testing.assert_allclose(scan[path], plain[path], rtol=2e-4, atol=2e-6, err_msg=path)
