"""The HF export's companions: PEFT prompt adapters (logits as ours), tokenizer files, generation config."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from promot_t5x import checkpoints, convert
from promot_t5x.models import prompts, t5

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

VOCAB = 60


def _prompted_model(prompt_names=('rte', 'enfr')):
  config = t5.T5Config(
      vocab_size=VOCAB, emb_dim=12, num_heads=2, head_dim=4, mlp_dim=20, num_encoder_layers=2,
      num_decoder_layers=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
      mlp_activations=('gelu', 'linear'), logits_via_embedding=False, dtype='float32',
      prompt=prompts.PromptConfig(length=5, names=prompt_names))
  module = t5.Transformer(config)
  rng = np.random.default_rng(3)
  params = jax.tree_util.tree_map(lambda x: rng.normal(0, 0.5, x.shape).astype(np.float32),
                                  nn.unbox(t5.abstract_params(module)))
  return config, module, params


def test_a_peft_adapter_we_export_gives_our_prompted_logits(tmp_path):
  config, module, params = _prompted_model()
  checkpoints.export_hf(params, config, str(tmp_path), model_type='mt5')

  rng = np.random.default_rng(0)
  inputs = rng.integers(2, VOCAB, size=(3, 9))
  inputs[1, 6:] = 0
  inputs[2, 2:] = 0
  targets = rng.integers(2, VOCAB, size=(3, 6))
  targets[2, 3:] = 0
  decoder_inputs = np.concatenate([np.zeros((3, 1), np.int64), targets[:, :-1]], axis=1)
  real = targets > 0

  base = transformers.MT5ForConditionalGeneration.from_pretrained(str(tmp_path))
  for index, name in enumerate(config.prompt.names):
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / 'peft' / name), adapter_name=name)
    assert isinstance(model, peft.PeftModelForSeq2SeqLM)
    with torch.no_grad():
      theirs = model.eval()(input_ids=torch.tensor(inputs),
                            attention_mask=torch.tensor(inputs > 0).long(),
                            decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()
    ours = np.asarray(module.apply({'params': params}, jnp.asarray(inputs),
                                   jnp.asarray(decoder_inputs), jnp.asarray(targets),
                                   prompt_index=jnp.full((3,), index)))
    np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=1e-4)
    # The prompt matters: without it the logits differ.
    plain = np.asarray(module.apply({'params': params}, jnp.asarray(inputs),
                                    jnp.asarray(decoder_inputs), jnp.asarray(targets)))
    assert np.abs(plain[real] - ours[real]).max() > 1e-2
    base = model.unload() if hasattr(model, 'unload') else model.get_base_model()


def test_tokenizer_files_and_generation_config(tmp_path, fixtures_dir):
  config, _, params = _prompted_model(('task',))
  vocabulary = seqio.SentencePieceVocabulary(str(fixtures_dir / 'sentencepiece.model'),
                                             extra_ids=10)
  written = checkpoints.export_hf(params, config, str(tmp_path), vocabulary=vocabulary)
  assert str(tmp_path / 'spiece.model') in written

  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = 'Hello world, this is a test. <extra_id_0> ok <extra_id_3>'
  ours = list(vocabulary.encode(text))
  assert tokenizer(text).input_ids == ours + [1]  # HF's T5 tokenizer appends EOS
  assert tokenizer.convert_tokens_to_ids('<extra_id_0>') == vocabulary.vocab_size - 1
  generation = transformers.GenerationConfig.from_pretrained(str(tmp_path))
  assert (generation.decoder_start_token_id, generation.eos_token_id,
          generation.pad_token_id) == (0, 1, 0)


def test_hf_export_without_the_max_distance_is_an_error(tmp_path, fixtures_dir, capsys):
  checkpoint = str(fixtures_dir / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3')
  assert convert.main(['--from=t5x', '--to=hf', f'--input={checkpoint}',
                       f'--output={tmp_path / "hf"}']) == 1
  err = capsys.readouterr().err
  assert 'relative_attention_max_distance' in err and '--gin_file' in err
  assert not (tmp_path / 'hf').exists()
  # Told, it exports (with the tokenizer from --sentencepiece_model).
  assert convert.main(['--from=t5x', '--to=hf', f'--input={checkpoint}',
                       f'--output={tmp_path / "hf"}', '--relative_attention_max_distance=8',
                       f'--sentencepiece_model={fixtures_dir / "sentencepiece.model"}']) == 0
  hf_config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert hf_config['relative_attention_max_distance'] == 8
  assert (tmp_path / 'hf' / 'spiece.model').exists()
