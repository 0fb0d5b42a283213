"""`promot-train` (and `promot-eval`) runs as a user launches them: gin files, overrides, restarts.

These tests start real processes (the console script, SIGKILL, two JAX
processes with CPU collectives) on the toy tasks of tests/testdata and, for
evaluation, the miniature's synthetic suites.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from promot_t5x import param_sets
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.checkpoints import orbax_io

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTDATA = REPO / 'tests' / 'testdata'


def _cmd(*args, program='train'):
  """promot-train (or promot-eval with program='eval'): the console script, else `python -m`."""
  script = str(REPO / '.venv' / 'bin' / f'promot-{program}')
  base = [script] if os.path.exists(script) else [sys.executable, '-m', f'promot_t5x.{program}']
  return base + list(args)


def _env(fixtures_dir, devices=1, **extra):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(TESTDATA), env.get('PYTHONPATH', '')])
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PROMOT_TEST_SPM'] = str(fixtures_dir / 'sentencepiece.model')
  env.update(extra)
  return env


def _toy_args(fixtures_dir, model_dir, *overrides):
  return ['--gin_file=tests/testdata/tiny_model.gin',
          f"--gin.SPM_PATH='{fixtures_dir / 'sentencepiece.model'}'",
          '--gin.MIXTURE_OR_TASK_NAME=toy_copy', '--gin.MIXTURE_OR_TASK_MODULE=toy_tasks',
          f'--gin.MODEL_DIR={model_dir}', '--gin.BATCH_SIZE=8',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}", *overrides]


def _run(args, env, timeout=300, check=True):
  r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  if check and r.returncode != 0:
    raise AssertionError(f'{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}')
  return r


def _final_params(model_dir):
  return {k: np.asarray(v) for k, v in
          param_sets.flatten(ckpt_manager.load_run_params(str(model_dir))).items()}


@pytest.mark.slow
def test_kill_and_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path, fixtures_dir):
  common = ['--gin_file=runs/finetune.gin', '--gin.TRAIN_STEPS=30', '--gin.CHECKPOINT_PERIOD=3',
            '--gin.DROPOUT_RATE=0.1', '--gin.LEARNING_RATE=0.01']
  env = _env(fixtures_dir)
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'straight'), *common), env)

  killed_dir = tmp_path / 'killed'
  proc = subprocess.Popen(_cmd(*_toy_args(fixtures_dir, killed_dir), *common), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckdir = killed_dir / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if (ckdir / '6').is_dir():
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = orbax_io.finished_steps(str(ckdir))
  assert steps_at_kill and steps_at_kill[-1] < 30

  r = _run(_cmd(*_toy_args(fixtures_dir, killed_dir), *common), env)
  assert f'resuming {killed_dir} from step {steps_at_kill[-1]}' in r.stdout
  straight, resumed = _final_params(tmp_path / 'straight'), _final_params(killed_dir)
  assert straight.keys() == resumed.keys()
  for p in straight:
    assert np.array_equal(straight[p], resumed[p]), p


def _one_and_two_processes(tmp_path, fixtures_dir, *args):
  """The same run as 1 process x 2 devices (tmp_path/one) and 2 processes x 1 device (two).

  Returns (stdout of process 0 of the two-process run, params of one, params of two).
  """
  from promot_t5x_launch import local

  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'one'), *args), _env(fixtures_dir, devices=2))
  results = local.launch(_cmd(*_toy_args(fixtures_dir, tmp_path / 'two'), *args),
                         num_processes=2, devices_per_process=1, env=_env(fixtures_dir),
                         timeout=300)
  for r in results:
    assert r.returncode == 0, r.stderr[-4000:]
  return results[0].stdout, _final_params(tmp_path / 'one'), _final_params(tmp_path / 'two')


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, fixtures_dir):
  common = ['--gin_file=runs/finetune.gin', '--gin.TRAIN_STEPS=4', '--gin.CHECKPOINT_PERIOD=4',
            '--gin.SHUFFLE_TRAIN_EXAMPLES=False', '--gin.LEARNING_RATE=0.01']
  stdout, one, two = _one_and_two_processes(tmp_path, fixtures_dir, *common)
  assert "mesh {'data': 2, 'model': 1}" in stdout
  for p in one:
    np.testing.assert_allclose(two[p], one[p], rtol=1e-5, atol=1e-7, err_msg=p)
  assert any(not np.allclose(one[p], 0) for p in one)


@pytest.mark.slow
def test_model_axis_across_two_processes_equals_one_process(tmp_path, fixtures_dir):
  """Stage 1 from a pretrained run on a mesh whose model axis spans the processes.

  Both processes hold the same data row, so they must load the same data shard
  (partitioning.data_layout), and each reads only its half of the sharded parameters
  from INITIAL_CHECKPOINT_PATH (checkpoints.sources); the prompt is initialized from the
  restored, sharded embedding ('vocab_sample').
  """
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'base'), '--gin_file=runs/finetune.gin',
            '--gin.TRAIN_STEPS=2'), _env(fixtures_dir))
  common = ['--gin_file=runs/prompt_tuning.gin', '--gin.TRAIN_STEPS=3',
            '--gin.CHECKPOINT_PERIOD=3', f'--gin.INITIAL_CHECKPOINT_PATH={tmp_path / "base"}',
            '--gin.PROMPT_LENGTH=4', "--gin.PROMPT_INIT='vocab_sample'",
            '--gin.MESH_DATA=1', '--gin.MESH_MODEL=2']
  stdout, one, two = _one_and_two_processes(tmp_path, fixtures_dir, *common)
  assert "mesh {'data': 1, 'model': 2}" in stdout
  assert '2 processes load 1 data shards' in stdout
  base = _final_params(tmp_path / 'base')
  for p in one:
    np.testing.assert_allclose(two[p], one[p], rtol=1e-5, atol=1e-7, err_msg=p)
  assert all(np.array_equal(one[p], base[p]) for p in base)  # the model stayed frozen
  # The prompt started from rows of the restored embedding and then trained.
  assert not np.allclose(one['prompt/task'], 0)


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path):
  """promot-eval on 2 processes x 1 device gives one process x 2 devices' outputs."""
  import json

  import jax
  from promot_t5x_launch import local

  from promot_t5x import checkpoints
  from promot_t5x.models import encoder_decoder, prompts, t5

  # gin/miniature/model.gin's vocabulary and layout, smaller; with a prompt, so
  # the fine-tuned task is scored with it and the suite without.
  sizes = {'emb_dim': 32, 'num_heads': 2, 'head_dim': 16, 'mlp_dim': 64,
           'num_encoder_layers': 2, 'num_decoder_layers': 2}
  config = t5.T5Config(vocab_size=2000, mlp_activations=('gelu', 'linear'),
                       logits_via_embedding=False, relative_attention_num_buckets=32,
                       relative_attention_max_distance=128,
                       prompt=prompts.PromptConfig(length=4, names=('task',)), **sizes)
  model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config))
  checkpoints.save_params(str(tmp_path / 'params'), model.init_params(jax.random.PRNGKey(3)))
  args = ['--gin_file=miniature/model.gin', '--gin_file=eval/fewshot_miniature.gin',
          *(f'--gin.t5.T5Config.{k}={v}' for k, v in sizes.items()),
          f'--gin.CHECKPOINT_PATH={tmp_path / "params"}', '--gin.MIXTURE_OR_TASK_NAME=mini_rte',
          "--gin.EVAL_SUITE=['mini_triviaqa_1shot', 'mini_cb_1shot']",
          "--gin.EVAL_SUITE_NAMES=['qa', 'cls']",
          '--gin.MAX_EXAMPLES=6', '--gin.BATCH_SIZE=4', '--gin.LENGTH_BUCKETS=()']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  _run(_cmd(*args, f'--gin.EVAL_OUTPUT_DIR={tmp_path / "one"}', program='eval'),
       dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  results = local.launch(_cmd(*args, f'--gin.EVAL_OUTPUT_DIR={tmp_path / "two"}',
                              program='eval'),
                         num_processes=2, devices_per_process=1, env=env, timeout=300)
  for r in results:
    assert r.returncode == 0, r.stderr[-4000:]
  assert 'wrote' in results[0].stdout and 'wrote' not in results[1].stdout  # process 0 writes

  one, two = (json.loads((tmp_path / d / 'results.json').read_text()) for d in ('one', 'two'))
  assert one['suites'] == two['suites']
  tasks = {(s, t): task for s, suite in one['suites'].items() for t, task in suite['tasks'].items()}
  assert sorted(tasks) == [('cls', 'cb'), ('qa', 'triviaqa'), ('target', 'rte')]
  assert [t['num_examples'] for t in tasks.values()] == [6, 6, 6]
  assert [tasks['target', 'rte']['prompt'], tasks['qa', 'triviaqa']['prompt']] == ['task', None]
  files = sorted(p.relative_to(tmp_path / 'one') for p in (tmp_path / 'one' / 'predictions')
                 .rglob('*.jsonl'))
  assert len(files) == 3
  outputs = set()
  for f in files:
    a, b = ((tmp_path / d / f).read_text().splitlines() for d in ('one', 'two'))
    assert len(a) == 6 and a == b, f
    outputs |= {json.loads(line)['output'] for line in a}
  assert len(outputs) > 5  # the model's own decodes, not one constant string


def test_readme_user_task_runs_both_stages_by_overrides(tmp_path, fixtures_dir):
  """The README's example: a user's TSV task (tests/testdata/copy_tasks.py) and ProMoT."""
  tsv = tmp_path / 'data.tsv'
  rows = [('the cat sat', 'the cat sat', 'True'), ('a dog ran', 'nobody ran', 'False')] * 16
  tsv.write_text(''.join('\t'.join(r) + '\n' for r in rows))
  env = _env(fixtures_dir, PROMOT_TEST_TSV=str(tsv))
  spm = f"--gin.SPM_PATH='{fixtures_dir / 'sentencepiece.model'}'"
  common = ['--gin_file=tests/testdata/tiny_model.gin', spm,
            '--gin.MIXTURE_OR_TASK_NAME=user_tsv_task', '--gin.MIXTURE_OR_TASK_MODULE=copy_tasks',
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}", '--gin.BATCH_SIZE=8']
  # A "pretrained" model to start from (in real use: a released checkpoint).
  _run(_cmd(*common, '--gin_file=runs/finetune.gin', f'--gin.MODEL_DIR={tmp_path / "base"}',
            '--gin.TRAIN_STEPS=2'), env)
  r = _run(_cmd(*common, '--gin_file=promot/promot.gin', f'--gin.MODEL_DIR={tmp_path / "promot"}',
                f'--gin.INITIAL_CHECKPOINT_PATH={tmp_path / "base"}', '--gin.PROMPT_LENGTH=5',
                '--gin.STAGE1_STEPS=4', '--gin.STAGE2_STEPS=3', '--gin.STAGE1_CHECKPOINT_PERIOD=2',
                '--gin.STAGE2_CHECKPOINT_PERIOD=3'), env)
  assert "initialized (not in checkpoint or mapped to None): ['prompt/task']" in r.stdout
  base = _final_params(tmp_path / 'base')
  s1 = _final_params(tmp_path / 'promot' / 'stage1')
  s2 = _final_params(tmp_path / 'promot' / 'stage2')
  assert all(np.array_equal(s1[p], base[p]) for p in base)  # stage 1: model frozen
  assert np.array_equal(s2['prompt/task'], s1['prompt/task'])  # stage 2: prompt frozen
  assert not np.array_equal(s2['decoder/logits_dense/kernel'], s1['decoder/logits_dense/kernel'])
  for stage in ('stage1', 'stage2'):
    run_dir = tmp_path / 'promot' / stage
    assert (run_dir / 'config.gin').read_text().count('MIXTURE_OR_TASK_NAME') >= 1
    assert 'prompt/task' in (run_dir / 'model-info.txt').read_text()
    assert (run_dir / 'metrics.jsonl').read_text().strip()
    assert list((run_dir / 'train').iterdir())  # TensorBoard, T5X's layout


# -----------------------------------------------------------------------------
# Errors a user meets, with messages that name the problem and the fix.
# -----------------------------------------------------------------------------
def test_unknown_task_lists_the_registered_names(tmp_path, fixtures_dir):
  r = _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'x'), '--gin_file=runs/finetune.gin',
                '--gin.TRAIN_STEPS=1', '--gin.MIXTURE_OR_TASK_NAME=toy_cpoy'),
           _env(fixtures_dir), check=False)
  assert r.returncode != 0
  assert "Unknown task or mixture 'toy_cpoy'" in r.stderr
  assert "'toy_copy'" in r.stderr and 'MIXTURE_OR_TASK_MODULE' in r.stderr


def test_a_url_model_dir_is_refused_before_anything_is_written(tmp_path, fixtures_dir):
  # gs:// goes through promot_t5x.fs (tests/test_fs.py); another URL would become a
  # local folder 's3:' and the run's checkpoints would stay on this machine.
  assert not (REPO / 's3:').exists()
  r = _run(_cmd(*_toy_args(fixtures_dir, 's3://bucket/run'), '--gin_file=runs/finetune.gin',
                '--gin.TRAIN_STEPS=1'), _env(fixtures_dir), check=False)
  assert r.returncode != 0
  assert "MODEL_DIR='s3://bucket/run' is a URL" in r.stderr and 'gcsfuse' in r.stderr
  assert 'gs://' in r.stderr
  assert not (REPO / 's3:').exists()


def test_gin_typo_names_the_file_line_and_binding(tmp_path, fixtures_dir):
  bad = tmp_path / 'bad.gin'
  bad.write_text("include 'runs/finetune.gin'\n\ntrain.train.trian_steps = 3\n")
  r = _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'x'), f'--gin_file={bad}'),
           _env(fixtures_dir), check=False)
  assert r.returncode == 2
  assert 'gin config error' in r.stderr and 'trian_steps' in r.stderr
  assert str(bad) in r.stderr and 'line 3' in r.stderr


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  run_dir = tmp_path / 'nan'
  common = ['--gin_file=runs/finetune.gin', '--gin.CHECKPOINT_PERIOD=2']
  _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common, '--gin.TRAIN_STEPS=4'), env)
  good = _final_params(run_dir)
  # Resume with a learning rate that overflows the parameters to Inf/NaN.
  r = _run(_cmd(*_toy_args(fixtures_dir, run_dir), *common, '--gin.TRAIN_STEPS=8',
                '--gin.LEARNING_RATE=1e38'), env, check=False)
  assert r.returncode == 1
  assert 'NonFiniteLossError' in r.stderr and 'at step 5' in r.stderr
  assert 'last good checkpoint (step 4) is intact' in r.stderr
  assert orbax_io.finished_steps(str(run_dir / 'checkpoints'))[-1] == 4
  after = _final_params(run_dir)
  assert all(np.array_equal(good[p], after[p]) for p in good)


def test_incompatible_initial_checkpoint_names_parameter_and_shapes(tmp_path, fixtures_dir):
  env = _env(fixtures_dir)
  _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'small'), '--gin_file=runs/finetune.gin',
            '--gin.TRAIN_STEPS=1'), env)
  r = _run(_cmd(*_toy_args(fixtures_dir, tmp_path / 'wide'), '--gin_file=runs/finetune.gin',
                '--gin.TRAIN_STEPS=1', '--gin.t5.T5Config.mlp_dim=48',
                f'--gin.INITIAL_CHECKPOINT_PATH={tmp_path / "small"}'), env, check=False)
  assert r.returncode != 0
  assert 'encoder/layers_0/mlp/wi_0/kernel: checkpoint (16, 32) vs model (16, 48)' in r.stderr


def test_eval_multi_process_flags_must_come_together(capsys):
  from promot_t5x import eval as eval_script

  for argv in (['--gin_file=eval/_base.gin', '--process_count=2', '--process_index=0'],
               ['--merge', 'a/results.json', '--process_count=2']):
    with pytest.raises(SystemExit) as e:
      eval_script.main(argv)
    assert e.value.code == 2
  first, second = capsys.readouterr().err.split('usage:')[1:]
  assert 'Multi-process needs --coordinator_address, --process_count and --process_index' in first
  assert '--merge runs as one process' in second
