"""Writing T5X's legacy checkpoint layout: read back bit-identically, laid out as T5X's own fixture."""

import json
import os

import msgpack
import numpy as np
import pytest

from promot_t5x import checkpoints, convert, optimizers, param_sets
from promot_t5x.checkpoints import manager, t5x_export, t5x_legacy


@pytest.fixture(scope='module')
def fixture_dir(fixtures_dir):
  return str(fixtures_dir / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3')


def _raw_tree(checkpoint_dir):
  """The msgpack tree with inline arrays as ('array', shape, dtype) and zarr specs as dicts."""
  def hook(code, data):
    shape, dtype, _ = msgpack.unpackb(data, raw=False)
    return ('array', tuple(shape), dtype)
  with open(os.path.join(checkpoint_dir, 'checkpoint'), 'rb') as f:
    return msgpack.unpackb(f.read(), ext_hook=hook, raw=False)


def _kinds(tree, prefix=''):
  """{path: 'zarr' | 'inline'} over the tree, specs being leaves."""
  if isinstance(tree, dict) and tree.get('driver') == 'zarr':
    return {prefix: 'zarr'}
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_kinds(v, f'{prefix}/{k}' if prefix else k))
    return out
  return {prefix: 'inline'}


def _fixture_state(fixture_dir):
  """The fixture's parameters and its Adafactor state in our naming."""
  params = t5x_legacy.read_t5x_legacy_params(fixture_dir)
  t5x_state = t5x_legacy.read_t5x_optimizer_state(fixture_dir)
  ours = {path: t5x_export.our_slots_from_t5x(params[path].shape, slots)
          for path, slots in t5x_state['param_states'].items()}
  opt_state = {'count': np.int32(t5x_state['step']),
               'param_states': param_sets.unflatten(
                   {f'{p}/{k}': v for p, slots in ours.items() for k, v in slots.items()})}
  return params, opt_state, t5x_state


def test_the_fixture_written_back_is_bit_identical_and_laid_out_as_t5x_wrote_it(
    tmp_path, fixture_dir):
  params, opt_state, t5x_state = _fixture_state(fixture_dir)
  written = t5x_export.export_t5x(param_sets.unflatten(params), str(tmp_path), step=3,
                                  opt_state=opt_state)
  out = str(tmp_path / 'checkpoint_3')
  assert written == [out]

  # Every parameter and every Adafactor slot (placeholders included) reads back bit for bit.
  got = t5x_legacy.read_t5x_legacy_params(out)
  assert set(got) == set(params)
  for path, value in params.items():
    assert got[path].dtype == value.dtype and np.array_equal(got[path], value), path
  got_state = t5x_legacy.read_t5x_optimizer_state(out)
  assert got_state['step'] == 3
  assert set(got_state['param_states']) == set(t5x_state['param_states'])
  for path, slots in t5x_state['param_states'].items():
    for slot, value in slots.items():
      assert np.array_equal(got_state['param_states'][path][slot], value), (path, slot)

  # The layout: the same msgpack keys, the same parameters in zarr, the same spec fields.
  ours, theirs = _raw_tree(out), _raw_tree(fixture_dir)
  assert list(ours) == list(theirs) == ['version', 'optimizer']
  assert ours['version'] == theirs['version'] == 3
  assert _kinds(ours['optimizer']['target']) == _kinds(theirs['optimizer']['target'])
  assert set(_kinds(ours['optimizer']['state'])) == set(_kinds(theirs['optimizer']['state']))
  assert ours['optimizer']['state']['step'] == theirs['optimizer']['state']['step']
  spec = ours['optimizer']['target']['encoder']['layers_0']['mlp']['wo']['kernel']
  their_spec = theirs['optimizer']['target']['encoder']['layers_0']['mlp']['wo']['kernel']
  assert spec == their_spec  # driver, relative gfile kvstore path, metadata
  target_folders = sorted(n for n in os.listdir(out) if n.startswith('target.'))
  assert target_folders == sorted(n for n in os.listdir(fixture_dir) if n.startswith('target.'))
  for name in target_folders:
    with open(os.path.join(out, name, '.zarray')) as f, \
         open(os.path.join(fixture_dir, name, '.zarray')) as g:
      mine, theirs_meta = json.load(f), json.load(g)
    # Chunking is the writer's choice (T5X's follows the run's partitioning).
    mine.pop('chunks'), theirs_meta.pop('chunks')
    # Newer TensorStore spells out zarr v2's default separator.
    assert mine.pop('dimension_separator', '.') == theirs_meta.pop('dimension_separator', '.')
    assert mine == theirs_meta, name
  # Parameter-shaped slots of zarr parameters are zarr too, as T5X writes partitioned state.
  assert os.path.isdir(os.path.join(out, 'state.param_states.encoder.layers_0.mlp.wo.kernel.v'))


def test_our_run_exports_with_its_adafactor_state_and_prompt(tmp_path, fixture_dir, capsys):
  params = param_sets.unflatten(t5x_legacy.read_t5x_legacy_params(fixture_dir))
  rng = np.random.default_rng(0)
  params['prompt'] = {'rte': rng.normal(size=(3, 4)).astype(np.float32)}
  # Stage-1-like state: the prompt trains (unfactored v); a large matrix shows the factored
  # pair; the frozen model has no state.
  model_opt = optimizers.adafactor(0.1)
  big = {'encoder': {'extra': {'kernel': rng.normal(size=(300, 130)).astype(np.float32)}}}
  params['encoder']['extra'] = big['encoder']['extra']
  opt = optimizers.multi_set_optimizer({'prompt': 0.2, 'model': model_opt})
  trainable = {'prompt': params['prompt'], 'encoder': {'extra': big['encoder']['extra']}}
  grads = {'prompt': {'rte': rng.normal(size=(3, 4)).astype(np.float32)},
           'encoder': {'extra': {'kernel': rng.normal(size=(300, 130)).astype(np.float32)}}}
  state = opt.init(trainable)
  _, state = opt.update(grads, state, trainable)
  state = {k: {'count': np.asarray(v.count), 'param_states': v.param_states}
           for k, v in state.items()}
  ckpt = manager.TrainCheckpointManager(str(tmp_path / 'run'))
  ckpt.save(7, params, state, {'step': 7})
  ckpt.close()

  rc = convert.main(['--from=orbax', '--to=t5x', f'--input={tmp_path / "run"}',
                     f'--output={tmp_path / "t5x"}', '--t5x_prompt=target'])
  assert rc == 0, capsys.readouterr().err
  out = str(tmp_path / 't5x' / 'checkpoint_7')
  got = t5x_legacy.read_t5x_legacy_params(out)
  assert np.array_equal(got['encoder/prompt/prompt/prompt'], params['prompt']['rte'])
  assert np.array_equal(got['encoder/extra/kernel'], params['encoder']['extra']['kernel'])
  got_state = t5x_legacy.read_t5x_optimizer_state(out)
  assert got_state['step'] == 7
  slots = got_state['param_states']
  # The prompt's v, bit for bit; T5X's v_row drops the largest axis (300): our v_col.
  np.testing.assert_array_equal(slots['encoder/prompt/prompt/prompt']['v'],
                                np.asarray(state['prompt']['param_states']['prompt']['rte']['v']))
  ours_extra = state['model']['param_states']['encoder']['extra']['kernel']
  np.testing.assert_array_equal(slots['encoder/extra/kernel']['v_row'], ours_extra['v_col'])
  np.testing.assert_array_equal(slots['encoder/extra/kernel']['v_col'], ours_extra['v_row'])
  assert slots['encoder/extra/kernel']['v'].shape == (1,)
  # A frozen parameter gets T5X's initial state: zeros, with placeholders.
  wo = slots['encoder/layers_0/mlp/wo/kernel']
  assert wo['v'].shape == (8, 4) and not wo['v'].any() and wo['m'].shape == (1,)
  # ... and back to ours, unchanged.
  back = t5x_export.our_slots_from_t5x((300, 130), slots['encoder/extra/kernel'])
  np.testing.assert_array_equal(back['v_row'], ours_extra['v_row'])


def test_prompts_beside_the_checkpoint_as_npy(tmp_path, fixture_dir):
  params = param_sets.unflatten(t5x_legacy.read_t5x_legacy_params(fixture_dir))
  params['prompt'] = {'rte': np.full((2, 4), 0.5, np.float32),
                      'enfr': np.full((2, 4), -1.0, np.float32)}
  written = checkpoints.export_t5x(params, str(tmp_path), step=1)
  assert written[1:] == [str(tmp_path / 'prompts' / 'enfr.npy'),
                         str(tmp_path / 'prompts' / 'rte.npy')]
  np.testing.assert_array_equal(np.load(written[2]), params['prompt']['rte'])
  # The checkpoint itself is a plain T5X model.
  assert not any(p.startswith('prompt') or '/prompt/' in p
                 for p in t5x_legacy.read_t5x_legacy_params(written[0]))
  with pytest.raises(ValueError, match='one prompt'):
    checkpoints.export_t5x(params, str(tmp_path / 'b'), step=1, prompt_placement='target')
  with pytest.raises(FileExistsError, match='--force'):
    checkpoints.export_t5x(params, str(tmp_path), step=1)
