"""`promot-convert` end to end on the legacy T5X fixture: t5x -> orbax -> hf, and t5x -> hf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import checkpoints, convert, param_sets
from promot_t5x.models import t5

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# What the parameter shapes cannot tell about the fixture.
MAX_DISTANCE = '--relative_attention_max_distance=8'

TINY_GIN = """
include 'models/_t5_1_1.gin'
t5.T5Config:
  emb_dim = 4
  num_heads = 2
  head_dim = 2
  mlp_dim = 8
  num_encoder_layers = 2
  num_decoder_layers = 2
  relative_attention_num_buckets = 4
  relative_attention_max_distance = 8
  dtype = 'float32'
"""


@pytest.fixture(scope='module')
def checkpoint_dir(fixtures_dir):
  return str(fixtures_dir / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3')


def _logits_ours(config, params, inputs, decoder_inputs, targets):
  return np.asarray(jax.jit(t5.Transformer(config).apply)(
      {'params': params}, jnp.asarray(inputs), jnp.asarray(decoder_inputs),
      jnp.asarray(targets)))


def test_t5x_to_orbax_to_hf(tmp_path, checkpoint_dir, capsys):
  orbax_dir, hf_dir = tmp_path / 'params', tmp_path / 'hf'
  assert convert.main(['--from=t5x', '--to=orbax', f'--input={checkpoint_dir}',
                       f'--output={orbax_dir}', MAX_DISTANCE]) == 0
  assert convert.main(['--from=orbax', '--to=hf', f'--input={orbax_dir}',
                       f'--output={hf_dir}', MAX_DISTANCE]) == 0
  printed = capsys.readouterr().out
  assert f'wrote {orbax_dir}' in printed and f'wrote {hf_dir}/model.safetensors' in printed
  assert 't5.T5Config.emb_dim = 4' in printed

  # The orbax params are the checkpoint's, bit for bit.
  config = checkpoints.t5x_config_from_checkpoint(checkpoint_dir, relative_attention_max_distance=8)
  direct = checkpoints.import_t5x(checkpoint_dir, t5.Transformer(config))
  via_orbax = checkpoints.load_params(orbax_dir)
  for path, value in param_sets.flatten(direct).items():
    np.testing.assert_array_equal(param_sets.flatten(via_orbax)[path], value, err_msg=path)

  # transformers loads the export completely and computes the same logits.
  hf_model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      str(hf_dir), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  inputs = np.array([[12, 7, 99, 31000, 1, 0], [5, 6, 1, 0, 0, 0]])
  targets = np.array([[8, 9, 1, 0], [4, 1, 0, 0]])
  decoder_inputs = np.concatenate([np.zeros((2, 1), np.int64), targets[:, :-1]], axis=1)
  with torch.no_grad():
    ref = hf_model.eval()(input_ids=torch.tensor(inputs),
                          attention_mask=torch.tensor(inputs > 0).long(),
                          decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()
  ours = _logits_ours(config, direct, inputs, decoder_inputs, targets)
  real = targets > 0
  np.testing.assert_allclose(ours[real], ref[real], rtol=1e-4,
                             atol=1e-4 * np.abs(ref[real]).max())


def test_t5x_to_hf_with_a_model_gin_and_back_to_orbax(tmp_path, checkpoint_dir):
  gin_file = tmp_path / 'tiny.gin'
  gin_file.write_text(TINY_GIN)
  hf_dir = tmp_path / 'hf'
  assert convert.main(['--from=t5x', '--to=hf', f'--input={checkpoint_dir}',
                       f'--output={hf_dir}', f'--gin_file={gin_file}']) == 0
  assert convert.main(['--from=hf', '--to=orbax', f'--input={hf_dir}',
                       f'--output={tmp_path / "params"}']) == 0
  model, hf_params = checkpoints.import_hf(str(hf_dir))
  assert model.config.relative_attention_max_distance == 8
  orbax_params = checkpoints.load_params(tmp_path / 'params')
  np.testing.assert_array_equal(orbax_params['decoder']['logits_dense']['kernel'],
                                hf_params['decoder']['logits_dense']['kernel'])


def test_convert_reports_errors_without_a_traceback(tmp_path, checkpoint_dir, capsys):
  # Shapes of a gin model that does not match the checkpoint: the error names them.
  gin_file = tmp_path / 'wide.gin'
  gin_file.write_text(TINY_GIN.replace('mlp_dim = 8', 'mlp_dim = 16'))
  assert convert.main(['--from=t5x', '--to=orbax', f'--input={checkpoint_dir}',
                       f'--output={tmp_path / "out"}', f'--gin_file={gin_file}']) == 1
  err = capsys.readouterr().err
  assert 'encoder/layers_0/mlp/wi_0/kernel: checkpoint (4, 8) vs model (4, 16)' in err
  (tmp_path / 'exists').mkdir()
  assert convert.main(['--from=hf', '--to=orbax', f'--input={tmp_path}',
                       f'--output={tmp_path / "exists"}']) == 1
  assert '--force' in capsys.readouterr().err
