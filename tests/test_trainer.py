"""The two-stage trainer: which parameters train, sharded and accumulated steps.

Each test is a tiny run a user could copy: build a model, pick a stage, step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import optimizers, param_sets, partitioning
from promot_t5x import trainer as trainer_lib
from promot_t5x.models import encoder_decoder, prompts, t5


def tiny_model(prompt_length: int | None = None, names=('task',), dropout=0.0, heads=2):
  prompt = prompts.PromptConfig(length=prompt_length, names=names) if prompt_length else None
  cfg = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=heads, head_dim=8, mlp_dim=32,
                    num_encoder_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    dropout_rate=dropout, prompt=prompt)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg))


def random_batch(seed=0, batch=8, inputs=10, targets=5, prompt_index=None):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 64, (batch, inputs)).astype(np.int32)
  tgt = rng.integers(2, 64, (batch, targets)).astype(np.int32)
  for i in range(batch):  # ragged lengths: trailing padding
    enc[i, rng.integers(inputs // 2, inputs + 1):] = 0
    tgt[i, rng.integers(2, targets + 1):] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  out = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
         'decoder_target_tokens': tgt, 'decoder_loss_weights': (tgt > 0).astype(np.float32)}
  if prompt_index is not None:
    out['prompt_index'] = np.full((batch,), prompt_index, np.int32)
  return out


def make_trainer(model, stage, mesh=(1, 1), lr=1e-2, microbatches=None,
                 parameter_partitioning_dims=1):
  devices = jax.devices()[: mesh[0] * mesh[1]]
  part = partitioning.Partitioner(
      partitioning.make_mesh(*mesh, devices=devices),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims))
  opt = optimizers.adafactor(lr, min_dim_size_to_factor=4)
  return trainer_lib.Trainer(model, stage, opt, part, num_microbatches=microbatches)


def run_steps(trainer, params, batches):
  state = trainer.create_state(params)
  losses = []
  for b in batches:
    state, metrics = trainer.train_step(state, trainer.partitioner.shard_batch(b))
    losses.append(float(metrics['loss']))
  return state, losses


def flat_np(tree):
  return {k: np.asarray(v) for k, v in param_sets.flatten(jax.device_get(tree)).items()}


def test_prompt_tuning_changes_only_the_prompt_and_keeps_optimizer_state_for_it_alone():
  model = tiny_model(prompt_length=4)
  params = model.init_params(jax.random.PRNGKey(0))
  trainer = make_trainer(model, param_sets.PROMPT_TUNING)
  state, losses = run_steps(trainer, params, [random_batch(i, prompt_index=0) for i in range(3)])

  before, after = flat_np(params), flat_np(state.params)
  changed = sorted(p for p in before if not np.array_equal(before[p], after[p]))
  assert changed == ['prompt/task']
  # Optimizer state exists only for the prompt: every array is prompt-sized.
  prompt_shape = before['prompt/task'].shape
  state_shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(state.opt_state)
                  if np.ndim(x) > 0}
  assert state_shapes and all(s in {prompt_shape, prompt_shape[:1], prompt_shape[1:]}
                              for s in state_shapes)
  assert list(param_sets.flatten(state.trainable)) == ['prompt/task']
  assert np.isfinite(losses).all()


def test_stage2_keeps_the_stage1_prompt_bit_identical_and_trains_the_model():
  model = tiny_model(prompt_length=4)
  params = model.init_params(jax.random.PRNGKey(0))
  stage1, _ = run_steps(make_trainer(model, param_sets.PROMPT_TUNING), params,
                        [random_batch(i, prompt_index=0) for i in range(2)])
  stage1_params = flat_np(stage1.params)
  stage2, _ = run_steps(make_trainer(model, param_sets.PROMOT_STAGE2), param_sets.unflatten(
      stage1_params), [random_batch(10 + i, prompt_index=0) for i in range(2)])
  after = flat_np(stage2.params)
  assert np.array_equal(after['prompt/task'], stage1_params['prompt/task'])
  model_paths = [p for p in after if not p.startswith('prompt/')]
  assert all(not np.array_equal(after[p], stage1_params[p]) for p in model_paths
             if p.endswith('kernel'))
  assert 'prompt' not in stage2.trainable


def test_standard_finetuning_has_no_prompt_and_trains_everything():
  model = tiny_model()
  params = model.init_params(jax.random.PRNGKey(1))
  assert not any(p.startswith('prompt') for p in param_sets.flatten(params))
  trainer = make_trainer(model, param_sets.FINETUNE)
  assert all(trainer.trainable_mask.values())
  state, losses = run_steps(trainer, params, [random_batch(i) for i in range(2)])
  assert state.frozen == {}
  assert int(state.step) == 2


def test_prompt_tuning_on_a_model_without_a_prompt_is_a_clear_error():
  with pytest.raises(ValueError, match='no soft prompt'):
    make_trainer(tiny_model(), param_sets.PROMPT_TUNING)


def test_multi_task_prompts_are_separate_sets():
  model = tiny_model(prompt_length=3, names=('rte', 'enfr'))
  params = model.init_params(jax.random.PRNGKey(0))
  stage = param_sets.PROMPT_TUNING.replace(trainable=('prompt/rte',), frozen=('model', 'prompt/enfr'))
  trainer = make_trainer(model, stage)
  state, _ = run_steps(trainer, params, [random_batch(i, prompt_index=0) for i in range(2)])
  before, after = flat_np(params), flat_np(state.params)
  assert not np.array_equal(before['prompt/rte'], after['prompt/rte'])
  assert np.array_equal(before['prompt/enfr'], after['prompt/enfr'])


@pytest.mark.parametrize('mesh,dims', [((8, 1), 1), ((4, 2), 1), ((2, 4), 1), ((4, 2), 2), ((2, 4), 2)],
                         ids=['data8', 'data4_model2', 'data2_model4', 'data4_model2_2d',
                              'data2_model4_2d'])
def test_sharded_steps_match_one_device(mesh, dims):
  """Data- and model-parallel steps give the single-device loss and parameters.

  heads=4 so model=2 and model=4 both split the attention heads; vocab 64 and
  mlp 32 split too. dims=2 (T5X's parameter_partitioning_dims=2) also splits
  the parameters' embed dimension, and with it the gradients and Adafactor's
  factored statistics, over `data`.
  """
  model = tiny_model(prompt_length=4, heads=4)
  params = model.init_params(jax.random.PRNGKey(2))
  batches = [random_batch(i, prompt_index=0) for i in range(2)]
  ref_state, ref_losses = run_steps(make_trainer(model, param_sets.JOINT), params, batches)
  trainer = make_trainer(model, param_sets.JOINT, mesh=mesh, parameter_partitioning_dims=dims)
  state, losses = run_steps(trainer, params, batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  ref, got = flat_np(ref_state.params), flat_np(state.params)
  for p in ref:
    np.testing.assert_allclose(got[p], ref[p], rtol=2e-4, atol=2e-6, err_msg=p)
  # The parameters really are split over the mesh where the rules say so.
  kernel = state.trainable['encoder']['layers_0']['mlp']['wi_0']['kernel']  # [embed, mlp]
  embed_axis = 'data' if dims == 2 else None
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(embed_axis, 'model')
  assert len(kernel.addressable_shards) == mesh[0] * mesh[1]
  # Adafactor's factored rows [embed] and columns [mlp] keep their dimension's axis.
  stats = state.opt_state.param_states['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert stats['v_row'].sharding.spec == jax.sharding.PartitionSpec(embed_axis)
  assert stats['v_col'].sharding.spec == jax.sharding.PartitionSpec('model')
  # 2-D: each device holds 1 / (data x model) of the kernel.
  shard = kernel.addressable_shards[0].data.shape
  assert shard == (16 // (mesh[0] if dims == 2 else 1), 32 // mesh[1])


def test_gradient_accumulation_matches_the_full_batch():
  model = tiny_model(prompt_length=4)
  params = model.init_params(jax.random.PRNGKey(3))
  batches = [random_batch(i, prompt_index=0) for i in range(2)]
  full, full_losses = run_steps(make_trainer(model, param_sets.JOINT), params, batches)
  acc, acc_losses = run_steps(make_trainer(model, param_sets.JOINT, microbatches=4), params,
                              batches)
  np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
  for p, v in flat_np(full.params).items():
    np.testing.assert_allclose(flat_np(acc.params)[p], v, rtol=1e-4, atol=1e-6, err_msg=p)


def test_frozen_parameters_get_no_gradient_computation():
  """Stage 1's compiled step holds no weight-gradient buffers of the frozen model."""
  model = tiny_model(prompt_length=4)
  trainer = make_trainer(model, param_sets.PROMPT_TUNING)
  abstract = trainer.abstract_state()
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in random_batch(0, prompt_index=0).items()}
  stage1_out = trainer.lower_train_step(abstract, batch).compile().memory_analysis()
  full = make_trainer(model, param_sets.JOINT)
  full_out = full.lower_train_step(full.abstract_state(), batch).compile().memory_analysis()
  assert stage1_out.temp_size_in_bytes < full_out.temp_size_in_bytes


def test_model_info_lists_every_parameter_with_set_and_role():
  trainer = make_trainer(tiny_model(prompt_length=4), param_sets.PROMOT_STAGE2, mesh=(4, 2))
  text = trainer_lib.describe_params(trainer)
  assert 'stage: promot_stage2' in text
  line = next(l for l in text.splitlines() if l.startswith('prompt/task'))
  assert 'frozen' in line and "('prompt', 'prompt_embed')" in line
  line = next(l for l in text.splitlines()
              if l.startswith('encoder/layers_0/mlp/wi_0/kernel'))
  assert "(None, 'model')" in line and 'trainable' in line and "('embed', 'mlp')" in line
  assert jnp.asarray(1) == 1


# -----------------------------------------------------------------------------
# Which data shard each process loads (`partitioning.data_layout`).
# -----------------------------------------------------------------------------
def _pod_rows(hosts, chips_per_host, data, model):
  """Process index of each device of a data x model mesh over hosts' chips in order."""
  return np.repeat(np.arange(hosts), chips_per_host).reshape(data, model)


def test_data_layout_model_axis_within_hosts_gives_each_host_its_shard():
  # v4-128: 16 hosts x 4 chips, MESH_DATA=16 x MESH_MODEL=4: a host is one data row.
  rows = _pod_rows(16, 4, 16, 4)
  layouts = [partitioning.data_layout(rows, p) for p in range(16)]
  assert [(x.shard_index, x.num_shards) for x in layouts] == [(p, 16) for p in range(16)]


def test_data_layout_model_axis_across_hosts_shares_a_shard_between_them():
  # The README's pod example: MESH_DATA=8 x MESH_MODEL=8 over 16 hosts of 4 chips.
  # Hosts 2k and 2k+1 hold the same data row k, so they must load the same rows.
  rows = _pod_rows(16, 4, 8, 8)
  layouts = [partitioning.data_layout(rows, p) for p in range(16)]
  assert [(x.shard_index, x.num_shards) for x in layouts] == [(p // 2, 8) for p in range(16)]
  # The README's SLURM example: 8 nodes x 8 GPUs, one process per GPU, the same mesh:
  # the 8 processes of a node share its row.
  rows = _pod_rows(64, 1, 8, 8)
  assert [partitioning.data_layout(rows, p).shard_index for p in range(64)] == [
      p // 8 for p in range(64)]
  # One host with many rows (a GPU node of 8, one process): all of them.
  assert partitioning.data_layout(np.zeros((8, 1), int), 0) == partitioning.DataLayout(0, 1)


def test_data_layout_refuses_processes_that_share_only_part_of_their_rows():
  # 3 hosts of 2 chips on a 2 x 3 mesh: host 1 straddles rows 0 and 1.
  rows = np.array([[0, 0, 1], [1, 2, 2]])
  with pytest.raises(ValueError, match=r'share the batch positions \[0\]'):
    partitioning.data_layout(rows, 0)


def test_shard_batch_on_one_process_takes_the_local_batch_as_the_global_one():
  part = partitioning.Partitioner(partitioning.make_mesh(2, 4))
  assert part.data_layout() == partitioning.DataLayout(0, 1)
  x = part.shard_batch({'x': np.arange(8 * 3).reshape(8, 3)})['x']
  assert x.shape == (8, 3)
  np.testing.assert_array_equal(np.asarray(x), np.arange(8 * 3).reshape(8, 3))


def test_dropout_seed_is_an_input_of_one_compiled_step():
  """Seeds differ in their dropout masks, not in their program: one compilation serves all."""
  model = tiny_model(dropout=0.3)
  params = model.init_params(jax.random.PRNGKey(0))
  batch = random_batch()
  texts, losses = [], []
  for seed in (0, 1):
    trainer = make_trainer(model, param_sets.FINETUNE)
    trainer.dropout_seed = seed
    state = trainer.create_state(params)
    texts.append(trainer.lower_train_step(state, trainer.partitioner.shard_batch(batch)).as_text())
    losses.append(run_steps(trainer, params, [batch] * 2)[1])
  assert texts[0] == texts[1]
  assert losses[0] != losses[1]  # the masks did differ
  again = make_trainer(model, param_sets.FINETUNE)
  assert run_steps(again, params, [batch] * 2)[1] == losses[0]  # and each seed's is reproducible
