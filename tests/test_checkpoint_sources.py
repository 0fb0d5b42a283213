"""Checkpoints read shard by shard onto a mesh (`checkpoints.sources`), as every process of a
multi-process run reads them: each format's sharded read equals its whole read, lands with
the asked sharding, and (T5X zarr) reads only slices, never a sharded parameter whole."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from promot_t5x import param_sets, partitioning
from promot_t5x.checkpoints import hf, manager, sources, t5x_legacy
from promot_t5x.models import encoder_decoder, prompts, t5

TINY_LEGACY = t5.T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                          num_encoder_layers=2, num_decoder_layers=2,
                          mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
                          relative_attention_num_buckets=4, relative_attention_max_distance=8)


def _model(config=None, prompt_length=None):
  config = config or t5.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                                 num_encoder_layers=1, num_decoder_layers=1,
                                 relative_attention_num_buckets=8,
                                 relative_attention_max_distance=16)
  if prompt_length:
    config = config.replace(prompt=prompts.PromptConfig(length=prompt_length))
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config))


def _save_run(model_dir, params, step=1):
  mgr = manager.TrainCheckpointManager(str(model_dir))
  mgr.save(step, params, {}, {'step': step, 'batches_consumed': step, 'stage': 'finetune'})
  mgr.close()


def _partitioner(model_axis=2):
  mesh = partitioning.make_mesh(1, model_axis, jax.devices()[:model_axis])
  return partitioning.Partitioner(mesh)


def _shardings(model, partitioner):
  return param_sets.flatten(partitioner.param_shardings(model.abstract_params()))


def _check_sharded_equals_whole(source, shardings):
  whole = source.read(dict.fromkeys(shardings))
  placed = source.read(shardings)
  split = 0
  for path, sharding in shardings.items():
    array = placed[path]
    assert isinstance(array, jax.Array) and array.sharding == sharding, path
    assert array.dtype == np.float32 and whole[path].dtype == np.float32, path
    np.testing.assert_array_equal(np.asarray(array), whole[path], err_msg=path)
    shard_shapes = {tuple(s.data.shape) for s in array.addressable_shards}
    if shard_shapes != {tuple(whole[path].shape)}:
      split += 1
  return split


def test_orbax_run_read_onto_a_model_parallel_mesh(tmp_path):
  model = _model()
  params = model.init_params(jax.random.PRNGKey(0))
  _save_run(tmp_path / 'run', params)

  source = sources.open_source(str(tmp_path / 'run'))
  flat = param_sets.flatten(params)
  assert source.kind == 'orbax'
  assert {k: v.shape for k, v in source.shapes.items()} == {k: v.shape for k, v in flat.items()}
  # The model axis splits the kernels, so the devices hold halves.
  assert _check_sharded_equals_whole(source, _shardings(model, _partitioner())) >= 8
  whole = source.read(dict.fromkeys(flat))
  for path, value in flat.items():
    np.testing.assert_array_equal(whole[path], np.asarray(value), err_msg=path)


def test_t5x_legacy_reads_only_each_devices_slices(checkpoint_fixture, monkeypatch):
  reads = []
  original = t5x_legacy.TensorStoreArray.__getitem__

  def recording(self, index):
    out = original(self, index)
    reads.append((self.name, tuple(self.shape), out.shape))
    return out

  monkeypatch.setattr(t5x_legacy.TensorStoreArray, '__getitem__', recording)
  source = sources.open_source(checkpoint_fixture)
  assert source.kind == 't5x_legacy'
  model = _model(TINY_LEGACY)
  shardings = _shardings(model, _partitioner())
  assert set(shardings) == set(source.shapes)
  placed = source.read(shardings)
  sharded_reads = [(name, full, got) for name, full, got in reads if got != full]
  assert sharded_reads, 'no zarr array was read in slices'
  for name, full, got in reads:
    spec = shardings[name].spec
    if any(axis is not None for axis in spec):
      assert got != full, f'{name} is split over the mesh but was read whole'
  # Every slice read once: two devices hold different halves.
  assert len(reads) == sum(2 if any(a is not None for a in shardings[n].spec) else 1
                           for n in {r[0] for r in reads})
  whole = t5x_legacy.read_t5x_legacy_params(checkpoint_fixture)
  for path, array in placed.items():
    assert array.sharding == shardings[path]
    np.testing.assert_array_equal(np.asarray(array), np.asarray(whole[path], np.float32))


@pytest.mark.parametrize('rescaled_head', [False, True])
def test_hf_folder_read_onto_the_mesh_equals_its_import(tmp_path, rescaled_head):
  model = _model(_model().config.replace(logits_via_embedding=False))
  params = model.init_params(jax.random.PRNGKey(3))
  hf.export_hf(params, model.config, str(tmp_path / 'hf'))
  if rescaled_head:
    # A T5 whose decoder output HF rescales before a separate head: the import
    # folds the scale into our kernel.
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    (tmp_path / 'hf' / 'config.json').write_text(json.dumps({**config,
                                                             'scale_decoder_outputs': True}))
  source = sources.open_source(str(tmp_path / 'hf'))
  assert source.kind == 'hf'
  # Opening reads no tensor: every array is a view of the memory-mapped file.
  for path, array in source._arrays.items():
    base = array.base if isinstance(array, hf._Scaled) else array
    assert not base.flags.owndata, path
  assert isinstance(source._arrays['decoder/logits_dense/kernel'], hf._Scaled) == rescaled_head
  imported = param_sets.flatten(hf.import_hf(str(tmp_path / 'hf'))[1])
  whole = source.read(dict.fromkeys(source.shapes))
  assert whole.keys() == imported.keys()
  for path, value in imported.items():
    np.testing.assert_array_equal(whole[path], value, err_msg=path)
  shardings = _shardings(model, _partitioner())
  assert _check_sharded_equals_whole(source, shardings) >= 8


def test_restore_params_lays_out_restored_and_initialized_parameters(tmp_path):
  base = _model()
  base_params = base.init_params(jax.random.PRNGKey(0))
  _save_run(tmp_path / 'pretrained', base_params)
  prompted = _model(prompt_length=4)
  partitioner = _partitioner()
  shardings = partitioner.param_shardings(prompted.abstract_params())
  flat_shardings = param_sets.flatten(shardings)
  asked = []

  def init_fn(paths, restored):
    asked.append((list(paths), sorted(restored)))
    return {p: jax.device_put(np.full((4, 16), 0.5, np.float32), flat_shardings[p])
            for p in paths}

  cfg = manager.RestoreConfig(str(tmp_path / 'pretrained'), fallback_to_init=('prompt/.*',))
  params, report = manager.restore_params(cfg, nn.unbox(prompted.abstract_params()), init_fn,
                                          shardings=shardings)
  assert report.left_out == ('prompt/task',)
  assert asked == [(['prompt/task'], sorted(param_sets.flatten(base_params)))]
  flat = param_sets.flatten(params)
  for path, value in param_sets.flatten(base_params).items():
    assert flat[path].sharding == flat_shardings[path], path
    np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(value), err_msg=path)
  assert flat['prompt/task'].sharding == flat_shardings['prompt/task']


@pytest.fixture
def checkpoint_fixture(fixtures_dir):
  return str(fixtures_dir / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3')
