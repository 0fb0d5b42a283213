"""The project's orbax parameter format: save_params / load_params on every folder kind."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from promot_t5x import checkpoints, param_sets


def _params(offset: float = 0.0):
  return {
      'encoder': {'layers_0': {'mlp': {'wi_0': {'kernel': np.full((4, 8), offset, np.float32)}}}},
      'token_embedder': {'embedding': np.arange(12, dtype=np.float32).reshape(6, 2) + offset},
      'prompt': {'rte': np.ones((3, 2), np.float32) * offset},
  }


def _assert_same(a, b):
  fa, fb = param_sets.flatten(a), param_sets.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert isinstance(fb[k], np.ndarray)
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _write_run(model_dir, steps):
  """A run folder as the trainer writes it: checkpoints/<step>/{params, other items}."""
  with ocp.CheckpointManager(model_dir / 'checkpoints') as manager:
    for step in steps:
      manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(_params(float(step))),
          metadata=ocp.args.JsonSave({'step': step})))
    manager.wait_until_finished()


def test_save_and_load_a_params_folder(tmp_path):
  out = checkpoints.save_params(tmp_path / 'params', _params(1.5))
  _assert_same(checkpoints.load_params(out), _params(1.5))
  with pytest.raises(FileExistsError, match='force'):
    checkpoints.save_params(tmp_path / 'params', _params(2.0))
  checkpoints.save_params(tmp_path / 'params', _params(2.0), force=True)
  _assert_same(checkpoints.load_params(tmp_path / 'params'), _params(2.0))


def test_run_folder_loads_the_latest_finished_step(tmp_path):
  model_dir = tmp_path / 'run'
  _write_run(model_dir, [10, 20])
  # A save still in progress (orbax's temporary name) at a later step is ignored.
  (model_dir / 'checkpoints' / '30.orbax-checkpoint-tmp-1234' / 'params').mkdir(parents=True)

  assert checkpoints.latest_step(model_dir / 'checkpoints') == 20
  _assert_same(checkpoints.load_params(model_dir), _params(20.0))
  # A step folder picks that step; the params item itself works too.
  _assert_same(checkpoints.load_params(model_dir / 'checkpoints' / '10'), _params(10.0))
  _assert_same(checkpoints.load_params(model_dir / 'checkpoints' / '10' / 'params'),
               _params(10.0))
  assert checkpoints.find_params_item(str(model_dir)).name == 'params'


def test_nothing_to_load_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='No orbax parameters'):
    checkpoints.load_params(tmp_path)
  (tmp_path / 'checkpoints' / '5.orbax-checkpoint-tmp-99').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='no finished checkpoint'):
    checkpoints.load_params(tmp_path)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    checkpoints.load_params(tmp_path / 'missing')
