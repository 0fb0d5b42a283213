"""The T5 model and the soft prompt: names, axes, shapes, masks, initializers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import param_sets, partitioning
from promot_t5x.models import prompts, t5


def _config(**kw):
  base = dict(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
              num_encoder_layers=2, num_decoder_layers=2,
              relative_attention_num_buckets=8, relative_attention_max_distance=16)
  base.update(kw)
  return t5.T5Config(**base)


def _tokens(seed=0, batch=3, length=7, pad_from=(7, 5, 3)):
  rng = np.random.default_rng(seed)
  x = rng.integers(2, 64, (batch, length)).astype(np.int32)
  for i, p in enumerate(pad_from):
    x[i, p:] = 0
  return jnp.asarray(x)


def _params(module, seed=0):
  return nn.unbox(t5.init_params(module, jax.random.PRNGKey(seed)))


def test_t5_1_1_parameter_names_shapes_and_axes():
  module = t5.Transformer(_config(num_heads=3, head_dim=4))  # d_kv * heads != d_model
  boxed = t5.abstract_params(module)
  flat = param_sets.flatten(partitioning.logical_axes(boxed))
  shapes = {k: v.shape for k, v in param_sets.flatten(nn.unbox(boxed)).items()}
  assert shapes['token_embedder/embedding'] == (64, 16)
  assert flat['token_embedder/embedding'] == ('vocab', 'embed')
  assert shapes['encoder/layers_0/attention/query/kernel'] == (16, 12)
  assert flat['encoder/layers_0/attention/query/kernel'] == ('embed', 'joined_kv')
  assert shapes['decoder/layers_1/encoder_decoder_attention/out/kernel'] == (12, 16)
  assert flat['decoder/layers_1/encoder_decoder_attention/out/kernel'] == ('joined_kv', 'embed')
  assert shapes['encoder/layers_0/mlp/wi_0/kernel'] == (16, 32)
  assert flat['encoder/layers_0/mlp/wo/kernel'] == ('mlp', 'embed')
  assert shapes['encoder/relpos_bias/rel_embedding'] == (3, 8)
  assert flat['decoder/relpos_bias/rel_embedding'] == ('heads', 'relpos_buckets')
  assert flat['decoder/logits_dense/kernel'] == ('embed', 'vocab')
  assert flat['encoder/encoder_norm/scale'] == ('embed',)
  assert not any('bias' in p and 'relpos' not in p for p in flat)  # RMS norm: no biases


def test_t5_1_0_has_relu_mlp_and_tied_logits():
  module = t5.Transformer(_config(mlp_activations=('relu',), logits_via_embedding=True))
  paths = set(param_sets.flatten(nn.unbox(t5.abstract_params(module))))
  assert 'encoder/layers_0/mlp/wi/kernel' in paths
  assert 'encoder/layers_0/mlp/wi_0/kernel' not in paths
  assert 'decoder/logits_dense/kernel' not in paths


def test_forward_returns_float32_logits_for_bfloat16_activations():
  module = t5.Transformer(_config(dtype='bfloat16'))
  params = _params(module)
  enc, dec = _tokens(), _tokens(1, length=4, pad_from=(4, 4, 2))
  logits = module.apply({'params': params}, enc, dec, dec)
  assert logits.shape == (3, 4, 64) and logits.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(params))


def test_padding_does_not_change_real_positions():
  module = t5.Transformer(_config())
  params = _params(module)
  enc = _tokens(pad_from=(4, 4, 4))
  longer = enc.at[:, 4:].set(0)
  padded_more = jnp.concatenate([longer, jnp.zeros((3, 5), jnp.int32)], axis=1)
  dec = _tokens(1, length=4, pad_from=(4, 4, 4))
  a = module.apply({'params': params}, longer, dec, dec)
  b = module.apply({'params': params}, padded_more, dec, dec)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dropout_is_off_by_default_and_on_when_asked():
  module = t5.Transformer(_config(dropout_rate=0.3))
  params = _params(module)
  enc, dec = _tokens(), _tokens(1, length=4, pad_from=(4, 4, 4))
  off1 = module.apply({'params': params}, enc, dec, dec)
  off2 = module.apply({'params': params}, enc, dec, dec)
  on = module.apply({'params': params}, enc, dec, dec, enable_dropout=True,
                    rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(off1, off2)
  assert not np.allclose(off1, on)


# -----------------------------------------------------------------------------
# The soft prompt.
# -----------------------------------------------------------------------------
def test_with_a_prompt_the_encoder_is_p_plus_t_long_and_prompt_positions_are_attended():
  cfg = _config(prompt=prompts.PromptConfig(length=5))
  module = t5.Transformer(cfg)
  params = _params(module)
  enc = _tokens()
  index = jnp.zeros((3,), jnp.int32)
  encoded = module.apply({'params': params}, enc, prompt_index=index, method=t5.Transformer.encode)
  assert encoded.shape == (3, 5 + 7, 16)
  valid = module.apply({'params': params}, enc, index, method=t5.Transformer.encoder_valid)
  np.testing.assert_array_equal(valid[:, :5], True)
  np.testing.assert_array_equal(valid[:, 5:], np.asarray(enc) > 0)
  # Prompt positions act as real tokens: changing the prompt changes every real output.
  params2 = jax.tree_util.tree_map(lambda x: x, params)
  params2['prompt']['task'] = params['prompt']['task'] + 1.0
  encoded2 = module.apply({'params': params2}, enc, prompt_index=index,
                          method=t5.Transformer.encode)
  assert np.all(np.abs(np.asarray(encoded2 - encoded))[:, 5:].max(-1)[np.asarray(enc) > 0] > 1e-4)


def test_without_a_prompt_the_model_is_exactly_the_plain_model():
  plain = t5.Transformer(_config())
  prompted = t5.Transformer(_config(prompt=prompts.PromptConfig(length=5)))
  params = _params(prompted)
  plain_params = {k: v for k, v in params.items() if k != 'prompt'}
  enc, dec = _tokens(), _tokens(1, length=4, pad_from=(4, 3, 2))
  a = plain.apply({'params': plain_params}, enc, dec, dec)
  b = prompted.apply({'params': params}, enc, dec, dec)
  np.testing.assert_array_equal(a, b)
  with_prompt = prompted.apply({'params': params}, enc, dec, dec,
                               prompt_index=jnp.zeros((3,), jnp.int32))
  assert not np.allclose(a, with_prompt)


def test_several_prompts_are_chosen_per_example():
  module = t5.Transformer(_config(prompt=prompts.PromptConfig(length=3, names=('rte', 'enfr'))))
  params = _params(module)
  assert set(params['prompt']) == {'rte', 'enfr'}
  enc, dec = _tokens(), _tokens(1, length=4, pad_from=(4, 4, 4))
  mixed = module.apply({'params': params}, enc, dec, dec, prompt_index=jnp.array([0, 1, 0]))
  all_rte = module.apply({'params': params}, enc, dec, dec, prompt_index=jnp.array([0, 0, 0]))
  all_enfr = module.apply({'params': params}, enc, dec, dec, prompt_index=jnp.array([1, 1, 1]))
  np.testing.assert_allclose(mixed[0], all_rte[0], rtol=1e-6)
  np.testing.assert_allclose(mixed[1], all_enfr[1], rtol=1e-6)


def test_asking_for_a_prompt_on_a_model_without_one_is_a_clear_error():
  module = t5.Transformer(_config())
  params = _params(module)
  enc = _tokens()
  with pytest.raises(ValueError, match='has no soft prompt'):
    module.apply({'params': params}, enc, enc, enc, prompt_index=jnp.zeros((3,), jnp.int32))


def test_prompt_initializers(tmp_path):
  embedding = jax.random.normal(jax.random.PRNGKey(0), (50, 8))
  rng = jax.random.PRNGKey(1)
  uniform = prompts.init_prompt_array(rng, prompts.PromptConfig(length=6, init_scale=0.25),
                                      embedding)
  assert uniform.shape == (6, 8) and float(jnp.abs(uniform).max()) <= 0.25
  sampled = prompts.init_prompt_array(
      rng, prompts.PromptConfig(length=6, init='vocab_sample', vocab_sample_size=10), embedding)
  rows = {tuple(np.round(np.asarray(r), 6)) for r in embedding[:10]}
  assert all(tuple(np.round(np.asarray(r), 6)) in rows for r in sampled)
  labels = prompts.init_prompt_array(
      rng, prompts.PromptConfig(length=6, init='class_labels', class_label_ids=((3, 4), (7,))),
      embedding)
  np.testing.assert_allclose(labels[0], (embedding[3] + embedding[4]) / 2, rtol=1e-6)
  np.testing.assert_allclose(labels[1], embedding[7], rtol=1e-6)
  path = tmp_path / 'prompt.npy'
  np.save(path, np.arange(48, dtype=np.float32).reshape(6, 8))
  from_file = prompts.init_prompt_array(
      rng, prompts.PromptConfig(length=6, init='file', init_file=str(path)), embedding)
  np.testing.assert_array_equal(from_file, np.arange(48).reshape(6, 8))
  np.save(path, np.zeros((5, 8), np.float32))
  with pytest.raises(ValueError, match=r'holds shape \(5, 8\); the model needs \(6, 8\)'):
    prompts.init_prompt_array(rng, prompts.PromptConfig(length=6, init='file',
                                                         init_file=str(path)), embedding)


def test_prompt_config_validation():
  with pytest.raises(ValueError, match='PROMPT_LENGTH'):
    prompts.PromptConfig(length=0)
  with pytest.raises(ValueError, match='choose one of'):
    prompts.PromptConfig(init='zeros')
  with pytest.raises(ValueError, match='class_label_ids'):
    prompts.PromptConfig(init='class_labels')


def test_relative_position_buckets_are_bidirectional_in_the_encoder_and_causal_in_the_decoder():
  enc = t5.relative_position_buckets(6, 6, True, 8, 16)
  dec = t5.relative_position_buckets(6, 6, False, 8, 16)
  assert enc[0, 1] != enc[1, 0]  # looking forward and back are different buckets
  assert np.all(dec[np.triu_indices(6, 1)] == 0)  # the future all falls in bucket 0
  assert dec[5, 0] > dec[5, 4] > 0


# -----------------------------------------------------------------------------
# promot-inspect.
# -----------------------------------------------------------------------------
def test_inspect_prints_the_published_mt5_xxl_count(capsys):
  from promot_t5x import inspect_model

  assert inspect_model.main(['--gin_file=gin/models/mt5_xxl.gin', '--total_only']) == 0
  assert capsys.readouterr().out.strip() == '12,921,057,280'


def test_inspect_shows_partitioning_on_an_8_device_mesh(capsys):
  from promot_t5x import inspect_model

  assert inspect_model.main(['--gin_file=gin/models/mt5_small.gin', '--mesh_data=2',
                             '--mesh_model=4']) == 0
  out = capsys.readouterr().out
  assert 'mesh: data=2 x model=4' in out
  line = next(l for l in out.splitlines() if l.startswith('token_embedder/embedding'))
  assert "('vocab', 'embed')" in line and '(model, None)' in line and '(62528, 512)' in line
  # mT5 small has 6 heads: model=4 does not divide them, so the relpos table is replicated.
  line = next(l for l in out.splitlines() if l.startswith('encoder/relpos_bias/rel_embedding'))
  assert '(None, None)' in line and '(6, 32)' in line
  line = next(l for l in out.splitlines() if l.startswith('decoder/layers_7/mlp/wo/kernel'))
  assert "('mlp', 'embed')" in line and '(model, None)' in line and '(256, 512)' in line


def test_partitioning_places_real_arrays_on_8_fake_devices():
  assert len(jax.devices()) == 8
  module = t5.Transformer(_config(num_heads=4, head_dim=4))
  part = partitioning.Partitioner(partitioning.make_mesh(2, 4))
  params = jax.device_put(_params(module), part.param_shardings(t5.abstract_params(module)))
  q = params['encoder']['layers_0']['attention']['query']['kernel']
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  assert {s.data.shape for s in q.addressable_shards} == {(16, 4)}
  with pytest.raises(ValueError, match='needs 12 devices; 8 are available'):
    partitioning.make_mesh(3, 4)


@pytest.mark.parametrize('mask_shape', [(3, 1, 6, 6), (3, 1, 1, 6), (1, 1, 6, 6)])
def test_position_bias_sum_has_the_gradient_of_a_plain_sum(mask_shape):
  rng = np.random.default_rng(0)
  position = jnp.asarray(rng.standard_normal((1, 4, 6, 6)), jnp.float32)
  mask = jnp.asarray(rng.standard_normal(mask_shape), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((mask_shape[0], 4, 6, 6)), jnp.float32)

  def loss(add):
    return lambda p, m: jnp.sum(jnp.tanh(add(p, m)) * weights)

  ours = jax.grad(loss(t5._add_position_bias), argnums=(0, 1))(position, mask)
  plain = jax.grad(loss(jnp.add), argnums=(0, 1))(position, mask)
  for a, b in zip(ours, plain, strict=True):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(t5._add_position_bias(position, mask), position + mask)
  with pytest.raises(ValueError, match='batch dimension 1'):
    t5._add_position_bias(jnp.zeros((2, 4, 6, 6)), mask)
