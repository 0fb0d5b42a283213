"""Importing a legacy T5X checkpoint (msgpack + zarr): the fixture written by T5X itself."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import checkpoints, param_sets
from promot_t5x.checkpoints import matching
from promot_t5x.models import encoder_decoder, prompts, t5

# The fixture's architecture (tests/testdata/README.md).
TINY = t5.T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                   num_encoder_layers=2, num_decoder_layers=2,
                   mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
                   relative_attention_num_buckets=4, relative_attention_max_distance=8)


@pytest.fixture(scope='module')
def checkpoint_dir(fixtures_dir):
  return str(fixtures_dir / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3')


def _batch():
  encoder_input_tokens = jnp.array([[12, 7, 99, 1, 0, 0], [5, 31000, 1, 0, 0, 0]])
  decoder_target_tokens = jnp.array([[8, 9, 1, 0], [4, 1, 0, 0]])
  decoder_input_tokens = jnp.array([[0, 8, 9, 0], [0, 4, 0, 0]])
  return encoder_input_tokens, decoder_input_tokens, decoder_target_tokens


def test_legacy_checkpoint_imports_every_parameter_and_runs(checkpoint_dir):
  model = encoder_decoder.EncoderDecoderModel(module=t5.Transformer(TINY))
  params = checkpoints.import_t5x(checkpoint_dir, model)

  got = {p: v.shape for p, v in param_sets.flatten(params).items()}
  abstract = param_sets.flatten(nn.unbox(t5.abstract_params(model.module)))
  assert got == {p: tuple(v.shape) for p, v in abstract.items()}
  assert all(v.dtype == np.float32 for v in param_sets.flatten(params).values())
  # Inline (msgpack) and zarr arrays both hold trained values, not an init.
  np.testing.assert_allclose(
      params['encoder']['relpos_bias']['rel_embedding'][0],
      [0.03067291, -0.78316545, -0.41009307, -0.10208409], rtol=1e-6)
  assert params['token_embedder']['embedding'].std() > 0.1

  logits = jax.jit(model.module.apply)({'params': params}, *_batch())
  assert logits.shape == (2, 4, 32128)
  assert np.isfinite(np.asarray(logits)).all()


def test_architecture_is_read_off_the_checkpoint(checkpoint_dir):
  config = checkpoints.t5x_config_from_checkpoint(checkpoint_dir,
                                                  relative_attention_max_distance=8)
  assert config == TINY
  # A model folder with checkpoint_<step>/ inside resolves to the latest step.
  parent = checkpoint_dir.rsplit('/', 1)[0]
  assert checkpoints.t5x_config_from_checkpoint(parent, relative_attention_max_distance=8) == TINY


def test_mismatched_model_names_parameter_and_both_shapes(checkpoint_dir):
  wrong = t5.Transformer(TINY.replace(mlp_dim=16))
  with pytest.raises(checkpoints.CheckpointMismatchError) as info:
    checkpoints.import_t5x(checkpoint_dir, wrong)
  message = str(info.value)
  assert 'encoder/layers_0/mlp/wi_0/kernel: checkpoint (4, 8) vs model (4, 16)' in message
  assert 'decoder/layers_1/mlp/wo/kernel: checkpoint (8, 4) vs model (16, 4)' in message
  assert 'mlp_dim' in message  # says what to change


def test_extra_layer_is_reported_missing(checkpoint_dir):
  deeper = t5.Transformer(TINY.replace(num_decoder_layers=3))
  with pytest.raises(checkpoints.CheckpointMismatchError, match='decoder/layers_2/mlp/wo/kernel'):
    checkpoints.import_t5x(checkpoint_dir, deeper)


def test_prompt_is_missing_unless_allowed(checkpoint_dir):
  prompt_model = t5.Transformer(TINY.replace(prompt=prompts.PromptConfig(length=3)))
  with pytest.raises(checkpoints.CheckpointMismatchError, match='prompt/task'):
    checkpoints.import_t5x(checkpoint_dir, prompt_model)

  params, report = checkpoints.import_t5x(
      checkpoint_dir, prompt_model, allow_missing=(checkpoints.PROMPT_PATTERN,),
      return_report=True)
  assert report.left_out == ('prompt/task',)
  assert 'prompt' not in params
  assert len(report.loaded) == len(param_sets.flatten(params))

  # With fallback parameters (e.g. the model's initialization) the tree is complete.
  # (Any tree of the model's parameters works; a real run passes its initialization.)
  init = jax.tree_util.tree_map(lambda x: np.full(x.shape, 0.25, np.float32),
                                nn.unbox(t5.abstract_params(prompt_model)))
  params, report = checkpoints.import_t5x(
      checkpoint_dir, prompt_model, allow_missing=('prompt/.*',), fallback_params=init,
      return_report=True)
  assert report.from_fallback == ('prompt/task',)
  np.testing.assert_array_equal(params['prompt']['task'], init['prompt']['task'])
  logits = jax.jit(prompt_model.apply)({'params': params}, *_batch(),
                                       prompt_index=jnp.zeros(2, int))
  assert np.isfinite(np.asarray(logits)).all()


def test_checkpoint_parameters_the_model_lacks_are_errors_unless_dropped(checkpoint_dir):
  flat = checkpoints.read_t5x_legacy_params(checkpoint_dir)
  flat['decoder/extra/kernel'] = np.zeros((2, 2), np.float32)
  model = t5.Transformer(TINY)
  with pytest.raises(checkpoints.CheckpointMismatchError, match='decoder/extra/kernel'):
    matching.match_params(flat, model, source='test')
  params, report = matching.match_params(flat, model, source='test',
                                         allow_unused=(r'decoder/extra/.*',))
  assert report.unused == ('decoder/extra/kernel',)
  assert 'extra' not in params['decoder']


def test_adafactor_slots_and_step(checkpoint_dir):
  state = checkpoints.read_t5x_optimizer_state(checkpoint_dir)
  assert state['step'] == 3
  slots = state['param_states']
  assert set(slots) == set(param_sets.flatten(checkpoints.import_t5x(checkpoint_dir,
                                                                     t5.Transformer(TINY))))
  assert set(slots['decoder/logits_dense/kernel']) == {'m', 'v', 'v_row', 'v_col'}
  assert slots['decoder/logits_dense/kernel']['v'].shape == (4, 32128)
  assert (slots['decoder/logits_dense/kernel']['v'] >= 0).all()  # second moments


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='checkpoint'):
    checkpoints.import_t5x(str(tmp_path), t5.Transformer(TINY))
