"""The paper's tables as experiment specs: every spec resolves to the paper's recipe, and
every column of the main RTE table runs end to end on mock TFDS data with a tiny model.
"""

import dataclasses
import glob
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from promot_t5x_tasks import paper

import gin
from promot_t5x import evaluation, experiment, gin_utils, selection
from promot_t5x.checkpoints import manager as ckpt_manager
from promot_t5x.checkpoints import orbax_io
from promot_t5x.models import encoder_decoder, t5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = sorted(glob.glob(os.path.join(ROOT, 'experiments', 'paper', '*.toml')))


def _resolved(exp, variant, name):
  return gin.query_parameter(name)


@pytest.mark.parametrize('spec', SPECS, ids=os.path.basename)
def test_each_table_spec_resolves_to_the_papers_recipe(spec):
  exp = experiment.load_spec(spec)
  assert exp.reference is not None and exp.reference.values
  assert exp.model_gin_files == ('models/mt5_xxl.gin',)
  for variant in exp.variants:
    if not variant.train:
      continue
    gin_utils.parse(exp.model_gin_files + exp.gin_files + variant.gin_files,
                    experiment.variant_bindings(exp, variant, 0), finalize=False)
    q = gin.query_parameter
    assert q('%SENTINEL_FORMAT') is True
    assert (q('%DROPOUT_RATE'), q('%LABEL_SMOOTHING')) == (0.1, 0.1)
    assert q('%BATCH_SIZE') == 64 and q('%TASK_FEATURE_LENGTHS')['inputs'] == 1024
    metric = q('%CHECKPOINT_BEST_METRIC')
    task = q('%MIXTURE_OR_TASK_NAME')
    assert metric.split('/')[0] in task or task.endswith('multitask')
    if q('%RUN_ENTRY').endswith('.promot'):
      assert q('train.promot.stage2_from') == 'best'
      assert q('%STAGE1_STEPS') == (10000 if 'multitask' in variant.name else 5000)
      assert (q('%STAGE1_CHECKPOINT_PERIOD'), q('%STAGE2_CHECKPOINT_PERIOD')) == (1000, 100)
    else:
      assert (q('%TRAIN_STEPS'), q('%EVAL_PERIOD')) == (1000, 100)
    if variant.name == 'joint':
      assert q('%PROMPT_LEARNING_RATE') == q('%LEARNING_RATE') == 0.001
    gin.clear_config()
  gin_utils.parse(exp.model_gin_files + exp.eval_gin_files,
                  experiment.bindings(exp.eval_overrides), finalize=False)
  assert gin.query_parameter('%SENTINEL_FORMAT') is True
  assert gin.query_parameter('%DECODER') == 'beam'
  gin.clear_config()


# -----------------------------------------------------------------------------
# The main RTE table end to end on mock data.
# -----------------------------------------------------------------------------
TINY = os.path.join(ROOT, 'tests', 'testdata', 'tiny_model.gin')


@pytest.fixture
def fixture_tasks(fixtures_dir):
  """The paper's tasks under their own names, on the fixture vocabulary (with sentinels)."""
  from promot_t5x_tasks import vocab

  fixture = vocab.sentencepiece_vocabulary(str(fixtures_dir / 'sentencepiece.model'), extra_ids=100)
  paper.register_paper_tasks(fixture, overwrite=True)
  evaluation.clear_data_cache()
  yield fixture
  evaluation.clear_data_cache()
  paper.register_paper_tasks(vocab.default_vocabulary(), overwrite=True)


def _tiny_start(path, fixtures_dir):
  cfg = t5.T5Config(vocab_size=128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    num_encoder_layers=2, num_decoder_layers=2, mlp_activations=('gelu', 'linear'),
                    logits_via_embedding=False, relative_attention_num_buckets=8,
                    relative_attention_max_distance=20)
  params = encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg)).init_params(jax.random.PRNGKey(0))
  orbax_io.save_params(path, params)
  return str(path)


@pytest.mark.slow(minutes=1)
def test_every_column_of_the_main_rte_table_runs_end_to_end_on_mock_data(
    tmp_path, fixtures_dir, fixture_tasks):
  exp = experiment.load_spec(os.path.join(ROOT, 'experiments', 'paper', 'main_rte.toml'))
  start = _tiny_start(tmp_path / 'mt5_start', fixtures_dir)
  devices = len(jax.devices())
  small = [
      f"SPM_PATH = {str(fixtures_dir / 'sentencepiece.model')!r}",
      f'INITIAL_CHECKPOINT_PATH = {start!r}',
      "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 8}",
      f'BATCH_SIZE = {devices}', f'EVAL_BATCH_SIZE = {devices}', 'EVAL_MAX_EXAMPLES = 4',
      "EVAL_DECODER = 'greedy'", 'PROMPT_LENGTH = 2',
      'TRAIN_STEPS = 2', 'CHECKPOINT_PERIOD = 1', 'EVAL_PERIOD = 1',
      'STAGE1_STEPS = 2', 'STAGE2_STEPS = 2',
      'STAGE1_CHECKPOINT_PERIOD = 1', 'STAGE2_CHECKPOINT_PERIOD = 1',
  ]
  # Mock TFDS data cannot be served from seqio's in-memory cache (recipes import these).
  no_cache = ('data.DatasetConfig.try_in_mem_cache = False',
              'evaluation.EvalSettings.try_in_mem_cache = False')
  variants = tuple(dataclasses.replace(v, overrides=v.overrides + no_cache) if v.train else v
                   for v in exp.variants)
  eval_small = [
      f"SPM_PATH = {str(fixtures_dir / 'sentencepiece.model')!r}",
      "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 8}", 'LENGTH_BUCKETS = (96,)',
      "DECODER = 'greedy'", f'BATCH_SIZE = {devices}', 'MAX_EXAMPLES = 2',
      # The 1-shot suite only (the main table's): the 4-shot one doubles the time, same code.
      "EVAL_SUITE = ['promot_paper_1shot_eval']", "EVAL_SUITE_NAMES = ['fewshot_1shot']",
      'evaluation.EvalSettings.try_in_mem_cache = False',
  ]
  exp = dataclasses.replace(exp, output_dir=str(tmp_path / 'main_rte'), model_gin_files=(TINY,),
                            variants=variants,
                            overrides=exp.overrides + tuple(small),
                            eval_overrides=tuple(eval_small) + exp.eval_overrides)
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=8):
    done = experiment.run(exp, log=lambda msg: None)

  assert list(done) == ['pretrained', 'finetune', 'promot', 'prompt_tuning', 'promot_1shot']
  out = tmp_path / 'main_rte'
  for name, paths in done.items():
    with open(paths[0]) as f:
      results = json.load(f)
    suites = results['suites']
    assert set(suites) == {'target', 'fewshot_1shot'}, name
    assert results['settings']['sentinel_format'] is True
    assert len(suites['fewshot_1shot']['tasks']) == 8
    assert all(t['num_examples'] == 2 for t in suites['fewshot_1shot']['tasks'].values())
    assert suites['fewshot_1shot']['norm_avg'] is not None
    assert list(suites['target']['tasks']) == ['rte'], name
    target_task = suites['target']['tasks']['rte']['task']
    assert target_task == ('promot_rte_1shot' if name == 'promot_1shot' else 'promot_rte')
  # Selection: each trained run recorded its best by validation and was scored there;
  # stage 2 started from stage 1's best.
  for run in ('finetune/seed_0', 'promot/seed_0/stage1', 'promot/seed_0/stage2',
              'promot_1shot/seed_0/stage2'):
    assert selection.checkpoint_step(str(out / run)) == 'best', run
    best = ckpt_manager.best_step(str(out / run))
    assert os.path.isdir(out / run / 'checkpoints' / str(best))
  with open(done['promot'][0]) as f:
    assert json.load(f)['step'] == ckpt_manager.best_step(str(out / 'promot/seed_0/stage2'))
  # Stage 2 froze stage 1's *best* prompt (with the tiny model's scores, usually a tie at
  # step 1, which keeps the earlier step), not its latest.
  def prompt(run, step):
    return ckpt_manager.load_run_params(str(out / run), step=step)['prompt']['task']
  np.testing.assert_array_equal(prompt('promot/seed_0/stage2', 'latest'),
                                prompt('promot/seed_0/stage1', 'best'))
  if ckpt_manager.best_step(str(out / 'promot/seed_0/stage1')) != 2:
    assert not np.array_equal(prompt('promot/seed_0/stage1', 'latest'),
                              prompt('promot/seed_0/stage1', 'best'))
  table = (out / 'paper_table.md').read_text()
  assert '| promot | ' in table and '(20.10)' in table and '(92.78)' in table
  assert '| promot_1shot | ' in table and '(93.86)' in table
  assert (out / 'table.md').exists()


def test_the_command_line_adds_gin_overrides_to_every_run(monkeypatch, tmp_path):
  seen = {}
  monkeypatch.setattr(experiment, 'run', lambda exp, only=None: seen.setdefault('exp', exp))
  spec = os.path.join(ROOT, 'experiments', 'paper', 'main_rte.toml')
  assert experiment.main([spec, '--gin.INITIAL_CHECKPOINT_PATH=/ckpts/mt5_xxl',
                          f'--output_dir={tmp_path}']) == 0
  exp = seen['exp']
  assert exp.output_dir == str(tmp_path)
  assert "INITIAL_CHECKPOINT_PATH = '/ckpts/mt5_xxl'" in experiment.bindings(exp.overrides)
  with pytest.raises(SystemExit):
    experiment.main([spec, '--initial_checkpoint=/x'])
