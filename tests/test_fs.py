"""The file-system layer (`promot_t5x.fs`): local paths and gs:// alike.

A training run writes to and resumes from `gs://` on an in-memory Cloud
Storage (tests/fake_gcs.py): its Python file operations go through epath's
fsspec backend, orbax's arrays through TensorStore's `gcs` driver speaking
HTTP to the fake; nothing lands on the local disk.
"""

import json
import os

import fake_gcs
import jax
import numpy as np
import pytest
from etils.epath import gpath
from test_reports import make_result
from test_selection import _model, _register_task

from promot_t5x import data, fs, optimizers, param_sets, partitioning, paths, preflight, reports, summaries
from promot_t5x import eval as eval_script
from promot_t5x import train as train_lib
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.checkpoints import orbax_io, sources


@pytest.fixture(scope='module')
def gcs_server():
  server = fake_gcs.FakeGCS()
  yield server
  server.close()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
  for k, v in gcs_server.env.items():
    monkeypatch.setenv(k, v)
  # epath decides once per process whether gs:// goes through TensorFlow; EPATH_USE_TF
  # changed, so let it decide again (and again after the test).
  gpath._is_tf_installed.cache_clear()
  yield gcs_server
  monkeypatch.undo()
  gpath._is_tf_installed.cache_clear()


def _objects(prefix):
  return [k[len(prefix):] for k in fake_gcs.STORE.keys(prefix)]


@pytest.mark.parametrize('where', ['local', 'gs'])
def test_files_and_folders_behave_alike_locally_and_on_gs(where, tmp_path, request):
  if where == 'gs':
    request.getfixturevalue('gcs')
    root = 'gs://bucket/fs-basics'
  else:
    root = str(tmp_path / 'fs-basics')
  folder = fs.join(root, 'a', 'b')
  assert not fs.exists(folder)
  fs.makedirs(folder)
  assert fs.isdir(folder) and fs.exists(folder)
  fs.write_text(fs.join(folder, 'x.txt'), 'one\n', atomic=True)
  fs.append_text(fs.join(folder, 'x.txt'), 'two\n')
  fs.append_text(fs.join(folder, 'new.jsonl'), '{}\n')
  assert fs.read_text(fs.join(folder, 'x.txt')) == 'one\ntwo\n'
  assert fs.listdir(folder) == ['new.jsonl', 'x.txt']
  assert fs.isfile(fs.join(folder, 'x.txt')) and not fs.isdir(fs.join(folder, 'x.txt'))
  fs.replace(folder, fs.join(root, 'moved'))
  assert not fs.exists(folder) and fs.read_text(fs.join(root, 'moved', 'x.txt')) == 'one\ntwo\n'
  with fs.open(fs.join(root, 'moved', 'new.jsonl')) as f:
    assert f.read() == '{}\n'
  fs.remove(fs.join(root, 'moved', 'new.jsonl'))
  assert fs.listdir(fs.join(root, 'moved')) == ['x.txt']
  with pytest.raises(FileNotFoundError):
    fs.read_text(fs.join(root, 'missing.txt'))
  if where == 'gs':
    assert 'bucket/fs-basics/moved/x.txt' in fake_gcs.STORE.keys('bucket/fs-basics/')
  assert fs.basename(root + '/') == 'fs-basics' and fs.dirname(fs.join(root, 'm')) == root


def test_gs_is_accepted_and_other_urls_are_refused_up_front():
  assert paths.url_path_problem('MODEL_DIR', 'gs://bucket/run') is None
  assert paths.url_path_problem('MODEL_DIR', '/mnt/runs/run') is None
  problem = paths.url_path_problem('MODEL_DIR', 's3://bucket/run')
  assert "MODEL_DIR='s3://bucket/run' is a URL" in problem and 'gs://' in problem
  assert fs.absolute('gs://bucket/run/') == 'gs://bucket/run'
  assert fs.join('gs://bucket', 'run', 'checkpoints') == 'gs://bucket/run/checkpoints'


def test_gs_without_credentials_says_what_cloud_storage_needs(monkeypatch):
  # The real gs:// path (TensorFlow's file system): no credentials and no network here.
  for k in ('EPATH_USE_TF', 'GOOGLE_AUTH_TOKEN_FOR_TESTING', 'STORAGE_EMULATOR_HOST'):
    monkeypatch.delenv(k, raising=False)
  # Even where Google's servers are reachable: credentials that do not exist, no VM's.
  monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', '/nonexistent/credentials.json')
  monkeypatch.setenv('NO_GCE_CHECK', 'true')
  monkeypatch.setenv('GCS_RETRY_CONFIG_MAX_RETRIES', '0')
  with pytest.raises(fs.RemoteAccessError, match='credentials') as e:
    fs.exists('gs://promot-t5x-no-such-bucket/run')
  assert 'gs://promot-t5x-no-such-bucket/run' in str(e.value)
  problem = preflight.writable_problem('MODEL_DIR', 'gs://promot-t5x-no-such-bucket/run')
  assert problem.startswith("MODEL_DIR='gs://promot-t5x-no-such-bucket/run' cannot be written")
  assert 'credentials' in problem
  assert not os.path.exists('gs:')  # never a local folder named after the URL


def _train(model_dir, task, steps=4, **kw):
  return train_lib.train(
      model=_model(), stage=param_sets.stage_by_name('finetune'),
      train_dataset=data.DatasetConfig(task, {'inputs': 8, 'targets': 4}, batch_size=2),
      model_dir=model_dir, train_steps=steps, optimizer=optimizers.adafactor(1e-2),
      partitioner=partitioning.Partitioner(partitioning.make_mesh(1, 1, devices=jax.devices()[:1])),
      checkpoint_period=2, keep_checkpoints=2, log_period=1, **kw)


def _params(path):
  return {k: np.asarray(v) for k, v in
          param_sets.flatten(ckpt_manager.load_run_params(path)).items()}


def test_a_run_writes_and_resumes_on_gs(gcs, tmp_path, fixtures_dir, monkeypatch):
  task = _register_task(str(fixtures_dir / 'sentencepiece.model'))
  # TensorBoard goes through TensorFlow's own GCS client, which cannot be pointed at the
  # fake: record what would be written instead.
  tensorboard = []
  monkeypatch.setattr(summaries.RunSummaries, '_write',
                      lambda self, rel, step, scalars: tensorboard.append((self.model_dir, rel, step)))
  monkeypatch.chdir(tmp_path)
  run = 'gs://bucket/runs/finetune'
  first = _train(run, task, stop_after_steps=2)
  assert (first.step, first.resumed_from) == (2, None)
  assert orbax_io.finished_steps(ckpt_manager.checkpoint_dir(run)) == [2]
  requests_before = len(gcs.store.requests)
  second = _train(run, task)
  assert (second.step, second.resumed_from) == (4, 2)
  assert len(gcs.store.requests) > requests_before  # TensorStore read and wrote over HTTP
  assert orbax_io.finished_steps(ckpt_manager.checkpoint_dir(run)) == [2, 4]

  # The run's records are in the bucket, and nothing was written locally.
  objects = _objects('bucket/runs/finetune/')
  assert {'config.gin', 'model-info.txt', 'metrics.jsonl', 'history/001/start.json',
          'history/002/start.json', 'checkpoints/4/params/manifest.ocdbt'} <= set(objects)
  assert any(o.startswith('checkpoints/4/params/') and '/d/' in o for o in objects)
  assert os.listdir(tmp_path) == []
  steps = [json.loads(line)['step']
           for line in fs.read_text(f'{run}/metrics.jsonl').splitlines()]
  assert steps == [1, 2, 3, 4]
  start = json.loads(fs.read_text(f'{run}/history/002/start.json'))
  assert start['resumed_from'] == 2
  assert {(rel, step) for _, rel, step in tensorboard} >= {('train', 1), ('train', 4)}
  assert {d for d, _, _ in tensorboard} == {run}

  # The same run, uninterrupted on the local disk, ends with the same parameters.
  local = str(tmp_path / 'local')
  _train(local, task)
  on_gs, on_disk = _params(run), _params(local)
  assert on_gs.keys() == on_disk.keys()
  for k in on_gs:
    np.testing.assert_array_equal(on_gs[k], on_disk[k], err_msg=k)

  # A next stage starts from the gs:// run (INITIAL_CHECKPOINT_PATH), and promot-eval finds it.
  assert sources.detect_kind(run) == 'orbax' and eval_script.resolve_step(run, 'latest') == 4
  nxt = _train('gs://bucket/runs/next', task, steps=1,
               initial_checkpoint=ckpt_manager.RestoreConfig(run))
  assert nxt.step == 1
  start = json.loads(fs.read_text('gs://bucket/runs/next/history/001/start.json'))
  assert start['initial_checkpoint'] == {'path': run, 'step': 4}
  assert os.listdir(tmp_path) == ['local']


def test_eval_outputs_are_written_and_read_back_on_gs(gcs):
  result = make_result('promot', 92.0, [50.0, 20.0, 10.0], {'triviaqa': 5.0}, prompt='task')
  out = 'gs://bucket/eval/promot'
  assert preflight.writable_problem('EVAL_OUTPUT_DIR', out) is None
  with pytest.raises(ckpt_manager.CheckpointError, match="CHECKPOINT_PATH='gs://bucket/none'"):
    eval_script._check_paths('gs://bucket/none', out)
  eval_script.write_outputs(result, out)
  assert {'results.json', 'table.md', 'config.gin'} <= set(_objects('bucket/eval/promot/'))
  assert any(o.startswith('predictions/') for o in _objects('bucket/eval/promot/'))
  assert reports.read_results(out).to_json() == result.to_json()
  merged = eval_script.merge([f'{out}/results.json'])
  assert 'promot' in merged
