"""Mesh-TensorFlow T5/mT5 checkpoints (written here by TensorFlow itself) and telling checkpoint kinds apart."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import convert, param_sets
from promot_t5x.checkpoints import manager, mesh_tf, sources, t5x_legacy
from promot_t5x.models import t5

tf = pytest.importorskip('tensorflow')

# The legacy fixture's architecture (fixtures/README.md).
TINY = t5.T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                   num_encoder_layers=2, num_decoder_layers=2,
                   mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
                   relative_attention_num_buckets=4, relative_attention_max_distance=8)


def _mesh_tf_name(path):
  """Mesh-TF's variable name for one of our parameters, spelled out as the T5 codebase names them."""
  fixed = {'token_embedder/embedding': 'shared/embedding',
           'encoder/encoder_norm/scale': 'encoder/final_layer_norm/scale',
           'decoder/decoder_norm/scale': 'decoder/final_layer_norm/scale',
           'decoder/logits_dense/kernel': 'decoder/logits/kernel',
           'encoder/relpos_bias/rel_embedding':
               'encoder/block_000/layer_000/SelfAttention/relative_attention_bias',
           'decoder/relpos_bias/rel_embedding':
               'decoder/block_000/layer_000/SelfAttention/relative_attention_bias'}
  if path in fixed:
    return fixed[path]
  stack, layer, *rest = path.split('/')
  block = f'{stack}/block_{int(layer[len("layers_"):]):03d}'
  rest = '/'.join(rest)
  qkvo = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'o'}
  sublayers = {
      'encoder': {'attention': ('layer_000', 'SelfAttention'), 'mlp': ('layer_001', None),
                  'pre_attention_layer_norm': ('layer_000', None),
                  'pre_mlp_layer_norm': ('layer_001', None)},
      'decoder': {'self_attention': ('layer_000', 'SelfAttention'),
                  'encoder_decoder_attention': ('layer_001', 'EncDecAttention'),
                  'mlp': ('layer_002', None), 'pre_self_attention_layer_norm': ('layer_000', None),
                  'pre_cross_attention_layer_norm': ('layer_001', None),
                  'pre_mlp_layer_norm': ('layer_002', None)}}[stack]
  module, leaf = rest.split('/', 1)
  sub, attention = sublayers[module]
  if attention:
    return f'{block}/{sub}/{attention}/{qkvo[leaf.split("/")[0]]}'
  if module == 'mlp':
    return f'{block}/{sub}/DenseReluDense/{leaf}'
  return f'{block}/{sub}/layer_norm/scale'


def _write_mesh_tf(directory, flat_params, step=1000000):
  """A TensorFlow checkpoint with Mesh-TF's names, Adafactor slots and global_step."""
  variables = {}
  for path, value in flat_params.items():
    name = _mesh_tf_name(path)
    variables[name] = tf.Variable(value)
    if value.ndim == 2:  # factored second moments, as Mesh-TF's Adafactor keeps them
      variables[f'{name}_slot_vr'] = tf.Variable(np.ones(value.shape[0], np.float32))
      variables[f'{name}_slot_vc'] = tf.Variable(np.ones(value.shape[1], np.float32))
    else:
      variables[f'{name}_slot_v'] = tf.Variable(np.ones(value.shape, np.float32))
  variables['global_step'] = tf.Variable(np.int64(step))
  saver = tf.compat.v1.train.Saver(var_list=variables)
  return saver.save(None, str(directory / 'model.ckpt'), global_step=step)


@pytest.fixture(scope='module')
def fixture_params(fixtures_dir):
  return t5x_legacy.read_t5x_legacy_params(
      str(fixtures_dir / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3'))


def test_a_mesh_tf_t5_1_1_checkpoint_imports_with_the_right_values(tmp_path, fixture_params):
  prefix = _write_mesh_tf(tmp_path, fixture_params)
  assert (tmp_path / 'checkpoint').read_text().startswith('model_checkpoint_path')

  assert sources.detect_kind(str(tmp_path)) == 'mesh_tf'
  assert sources.detect_kind(prefix) == 'mesh_tf'
  config = mesh_tf.mesh_tf_config_from_checkpoint(str(tmp_path), relative_attention_max_distance=8)
  assert config == TINY
  params = mesh_tf.import_mesh_tf(str(tmp_path), t5.Transformer(TINY))
  flat = param_sets.flatten(params)
  assert set(flat) == set(fixture_params)  # the slots and global_step were skipped
  for path, value in fixture_params.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)

  # The trainer's and evaluator's reader (restore_params, promot-eval) reads it too.
  read = sources.read_params(str(tmp_path))
  np.testing.assert_array_equal(read['decoder/layers_1/mlp/wo/kernel'],
                                fixture_params['decoder/layers_1/mlp/wo/kernel'])


def test_promot_convert_takes_mesh_tf_to_t5x(tmp_path, fixture_params, capsys):
  (tmp_path / 'mtf').mkdir()
  _write_mesh_tf(tmp_path / 'mtf', fixture_params, step=1000)
  rc = convert.main(['--from=mesh_tf', '--to=t5x', f'--input={tmp_path / "mtf"}',
                     f'--output={tmp_path / "t5x"}'])
  assert rc == 0, capsys.readouterr().err
  got = t5x_legacy.read_t5x_legacy_params(str(tmp_path / 't5x' / 'checkpoint_1000'))
  assert set(got) == set(fixture_params)
  for path, value in fixture_params.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_a_t5_1_0_checkpoint_with_tied_embedding_and_relu(tmp_path):
  config = t5.T5Config(vocab_size=64, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                       num_encoder_layers=1, num_decoder_layers=2, mlp_activations=('relu',),
                       logits_via_embedding=True, relative_attention_num_buckets=8,
                       relative_attention_max_distance=16, dtype='float32')
  model = t5.Transformer(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens, tokens)['params'])
  flat = {k: np.asarray(v) for k, v in param_sets.flatten(params).items()}
  assert 'encoder/layers_0/mlp/wi/kernel' in flat and 'decoder/logits_dense/kernel' not in flat
  _write_mesh_tf(tmp_path, flat, step=500)

  assert mesh_tf.mesh_tf_config_from_checkpoint(
      str(tmp_path), relative_attention_max_distance=16, dtype='float32') == config
  imported = mesh_tf.import_mesh_tf(str(tmp_path), model)
  inputs = jnp.array([[5, 9, 1, 0]])
  want = model.apply({'params': params}, inputs, inputs, inputs)
  got = model.apply({'params': imported}, inputs, inputs, inputs)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_unknown_variables_are_named(tmp_path, fixture_params):
  _write_mesh_tf(tmp_path, {'token_embedder/embedding': fixture_params['token_embedder/embedding']})
  saver_dir = tmp_path / 'other'
  saver_dir.mkdir()
  tf.compat.v1.train.Saver(var_list={'dense/bias': tf.Variable(np.zeros(3, np.float32))}).save(
      None, str(saver_dir / 'model.ckpt'))
  with pytest.raises(ValueError, match=r"not Mesh-TF T5/mT5 parameters: \['dense/bias'\]"):
    mesh_tf.read_mesh_tf_params(str(saver_dir))


def test_each_kind_is_detected_and_anything_else_is_a_clear_error(tmp_path, fixtures_dir):
  legacy = fixtures_dir / 't5x_legacy_t5_1_1_tiny'
  assert sources.detect_kind(str(legacy / 'checkpoint_3')) == 't5x_legacy'
  assert sources.detect_kind(str(legacy)) == 't5x_legacy'  # a T5X model folder
  assert sources.detect_kind(str(legacy / 'checkpoint_3' / 'checkpoint')) == 't5x_legacy'
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'checkpoint').write_text('not a checkpoint\n')
  with pytest.raises(manager.CheckpointError) as e:
    sources.detect_kind(str(tmp_path / 'notes'))
  for kind in ('orbax', 't5x_legacy', 'mesh_tf', 'hf'):
    assert f'  {kind}: ' in str(e.value)
  with pytest.raises(manager.CheckpointError, match='does not exist'):
    sources.detect_kind(str(tmp_path / 'missing'))
  # A restore from such a folder fails with the same message, before anything else starts.
  with pytest.raises(manager.CheckpointError, match='The kinds it reads'):
    sources.read_params(str(tmp_path / 'notes'))
