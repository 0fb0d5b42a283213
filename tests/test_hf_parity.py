"""Numerical parity with Hugging Face transformers (torch, CPU, float32).

Tiny random HF models are built in process (no download), saved with
`save_pretrained`, imported with `import_hf`, and run side by side. Our model
masks from token ids (0 = padding); HF from `attention_mask`, and its decoder
is causal without target masking, so logits are compared at real target
positions only.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import checkpoints, param_sets
from promot_t5x.checkpoints import hf as hf_lib
from promot_t5x.models import prompts, t5

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB = 60
# d_kv * num_heads (8) != d_model (12); 2 encoder vs 3 decoder layers.
SIZES = dict(vocab_size=VOCAB, d_model=12, d_kv=4, d_ff=20, num_heads=2, num_layers=2,
             num_decoder_layers=3, relative_attention_num_buckets=8,
             relative_attention_max_distance=20, dropout_rate=0.0)


def _batch(seed: int = 0):
  """Padded encoder inputs and padded targets, T5X style (0 = padding)."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, VOCAB, size=(3, 30))
  inputs[1, 17:] = 0
  inputs[2, 4:] = 0
  targets = rng.integers(2, VOCAB, size=(3, 25))  # longer than max distance
  targets[0, 11:] = 0
  targets[2, 3:] = 0
  decoder_inputs = np.concatenate([np.zeros((3, 1), np.int64), targets[:, :-1]], axis=1)
  return inputs, decoder_inputs, targets


def _hf_logits(hf_model, inputs, decoder_inputs):
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(inputs), attention_mask=torch.tensor(inputs > 0).long(),
                   decoder_input_ids=torch.tensor(decoder_inputs))
  return out.logits.numpy()


def _our_logits(module, params, inputs, decoder_inputs, targets):
  return np.asarray(jax.jit(module.apply)({'params': params}, jnp.asarray(inputs),
                                          jnp.asarray(decoder_inputs), jnp.asarray(targets)))


def _assert_close_at_real_positions(ours, ref, targets):
  real = targets > 0
  assert ours.shape == ref.shape
  scale = np.abs(ref[real]).max()
  np.testing.assert_allclose(ours[real], ref[real], rtol=1e-4, atol=1e-4 * scale)


def _random_hf_model(style: str):
  torch.manual_seed(0)
  if style == 't5.1.0':
    config = transformers.T5Config(feed_forward_proj='relu', tie_word_embeddings=True, **SIZES)
    model = transformers.T5ForConditionalGeneration(config)
  else:
    config = transformers.MT5Config(feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                                    **SIZES)
    model = transformers.MT5ForConditionalGeneration(config)
  with torch.no_grad():
    for p in model.parameters():  # larger than HF's init, so every layer matters
      p.normal_(0.0, 0.5)
    if style == 'mt5':
      # A separate LM head, as in released mT5 (transformers ties it by default).
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, SIZES['d_model']))
  return model.eval()


@pytest.mark.parametrize('style,expect_tied', [('t5.1.0', True), ('mt5', False),
                                               ('mt5_tied_head', False)])
def test_imported_hf_model_gives_the_same_logits(tmp_path, style, expect_tied):
  hf_model = _random_hf_model('mt5' if style == 'mt5' else style)
  # 'mt5_tied_head': no lm_head in the file and no rescaling (how transformers
  # 5 saves a fresh MT5); it becomes an untied copy of the embedding. Saved in
  # small shards to go through model.safetensors.index.json.
  shard = '20KB' if style == 'mt5_tied_head' else None
  hf_model.save_pretrained(tmp_path, **({'max_shard_size': shard} if shard else {}))
  if shard:
    assert (tmp_path / hf_lib.WEIGHTS_INDEX_NAME).exists()

  model, params = checkpoints.import_hf(str(tmp_path))
  config = model.config
  assert config.logits_via_embedding == expect_tied
  assert (config.emb_dim, config.head_dim, config.num_heads) == (12, 4, 2)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert config.mlp_activations == (('relu',) if style == 't5.1.0' else ('gelu', 'linear'))

  inputs, decoder_inputs, targets = _batch()
  ours = _our_logits(model.module, params, inputs, decoder_inputs, targets)
  _assert_close_at_real_positions(ours, _hf_logits(hf_model, inputs, decoder_inputs), targets)


@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 20)])
@pytest.mark.parametrize('bidirectional', [True, False])
def test_relative_position_buckets_match_hf(num_buckets, max_distance, bidirectional):
  bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
  for query_length, key_length in [(300, 300), (7, 300), (300, 1)]:
    relative = (torch.arange(key_length)[None, :] - torch.arange(query_length)[:, None])
    expected = bucket(relative, bidirectional=bidirectional, num_buckets=num_buckets,
                      max_distance=max_distance).numpy()
    ours = t5.relative_position_buckets(query_length, key_length, bidirectional,
                                        num_buckets, max_distance)
    np.testing.assert_array_equal(ours, expected)
    if query_length == key_length:  # distances past max_distance: every bucket in use
      # (bidirectional: bucket num_buckets/2 would be "after, at distance 0": never used)
      unused = {num_buckets // 2} if bidirectional else set()
      assert set(np.unique(ours)) == set(range(num_buckets)) - unused


def _our_model_params(config: t5.T5Config):
  """Random parameters with the model's exact tree (values spread so every weight matters)."""
  module = t5.Transformer(config)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(lambda x: rng.normal(0, 0.5, x.shape).astype(np.float32),
                                  nn.unbox(t5.abstract_params(module)))
  return module, params


@pytest.mark.parametrize('model_type,tied', [('t5', True), ('mt5', False)])
def test_export_round_trip_through_transformers(tmp_path, model_type, tied):
  config = t5.T5Config(
      vocab_size=VOCAB, emb_dim=12, num_heads=2, head_dim=4, mlp_dim=20, num_encoder_layers=2,
      num_decoder_layers=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
      mlp_activations=('relu',) if tied else ('gelu', 'linear'), logits_via_embedding=tied,
      prompt=prompts.PromptConfig(length=3, names=('rte', 'enfr')))
  module, params = _our_model_params(config)

  written = checkpoints.export_hf(params, config, str(tmp_path), model_type=model_type)
  assert sorted(os.path.relpath(p, tmp_path) for p in written) == [
      'config.json', 'generation_config.json', 'model.safetensors',
      'peft/enfr/adapter_config.json', 'peft/enfr/adapter_model.safetensors',
      'peft/rte/adapter_config.json', 'peft/rte/adapter_model.safetensors', 'prompts.npz']
  saved_prompts = np.load(tmp_path / 'prompts.npz')
  np.testing.assert_array_equal(saved_prompts['rte'], params['prompt']['rte'])

  cls = (transformers.MT5ForConditionalGeneration if model_type == 'mt5'
         else transformers.T5ForConditionalGeneration)
  hf_model, info = cls.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  assert not info['mismatched_keys']
  assert json.loads((tmp_path / 'config.json').read_text())['model_type'] == model_type

  inputs, decoder_inputs, targets = _batch(seed=1)
  ours = _our_logits(module, params, inputs, decoder_inputs, targets)
  _assert_close_at_real_positions(ours, _hf_logits(hf_model.eval(), inputs, decoder_inputs),
                                  targets)

  # And back: the import is exact (prompts are not in an HF model).
  _, reimported = checkpoints.import_hf(str(tmp_path))
  without_prompt = {k: v for k, v in params.items() if k != 'prompt'}
  for path, value in param_sets.flatten(without_prompt).items():
    np.testing.assert_array_equal(param_sets.flatten(reimported)[path], value, err_msg=path)


def test_bfloat16_safetensors_are_read(tmp_path):
  from safetensors.torch import save_file
  weights = torch.randn(3, 5).to(torch.bfloat16)
  save_file({'w': weights}, str(tmp_path / 'x.safetensors'))
  read = hf_lib.read_safetensors(str(tmp_path / 'x.safetensors'))['w']
  np.testing.assert_array_equal(read.astype(np.float32), weights.float().numpy())


def test_unknown_and_missing_hf_tensors_are_errors(tmp_path):
  hf_model = _random_hf_model('t5.1.0')
  hf_model.save_pretrained(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  config['num_decoder_layers'] = 4  # the file has 3
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r'decoder\.block\.3\.layer\.0\.SelfAttention\.q\.weight'):
    checkpoints.import_hf(str(tmp_path))


def test_unsupported_activation_is_an_error():
  with pytest.raises(ValueError, match='gated-silu'):
    hf_lib.t5_config_from_hf({'model_type': 't5', 'vocab_size': 8, 'd_model': 4, 'd_kv': 2,
                              'num_heads': 2, 'd_ff': 8, 'feed_forward_proj': 'gated-silu'},
                             logits_via_embedding=False)
