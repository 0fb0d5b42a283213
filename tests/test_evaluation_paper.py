"""End to end: `promot-eval` on the paper's 1-shot suite, from mock TFDS data.

A tiny random T5 (emb 16) with a soft prompt is saved as a checkpoint and
evaluated the way a user runs promot-eval (model gin + eval/fewshot_paper.gin
+ overrides): the fine-tuned task (RTE) with the checkpoint's prompt, the 8
evaluation tasks without it, beam search of width 4 on a 8-device CPU mesh.
TFDS is mocked from each builder's feature spec
(`tfds.testing.mock_data(policy=USE_CODE)`); the tasks are registered with the
SentencePiece fixture under a test prefix.
"""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from promot_t5x_tasks import paper, vocab

from promot_t5x import checkpoints, evaluation, metrics
from promot_t5x import eval as eval_script
from promot_t5x.models import encoder_decoder, prompts, t5

PREFIX = 'test_eval_paper_'
EIGHT = ('cb', 'wic', 'triviaqa', 'webquestions', 'wmt16_ende', 'wmt16_enro', 'xsum',
         'wikilingua_en')


@pytest.fixture(scope='module')
def paper_tasks(fixtures_dir):
  vocabulary = vocab.sentencepiece_vocabulary(str(fixtures_dir / 'sentencepiece.model'),
                                              extra_ids=100)
  paper.register_paper_tasks(vocabulary, prefix=PREFIX, shots=(0, 1), overwrite=True)
  evaluation.clear_data_cache()
  # 3 examples per split: a 1-shot pool of 2 once the query is left out.
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=3):
    yield
  evaluation.clear_data_cache()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """A tiny random T5 (tests/testdata/tiny_model.gin's sizes) with a 4-token prompt 'task'."""
  config = t5.T5Config(vocab_size=128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=2, num_decoder_layers=2,
                       relative_attention_num_buckets=8, relative_attention_max_distance=20,
                       prompt=prompts.PromptConfig(length=4, names=('task',)))
  model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config))
  path = tmp_path_factory.mktemp('ckpt') / 'params'
  checkpoints.save_params(str(path), model.init_params(jax.random.PRNGKey(1)))
  return path


@pytest.mark.slow
def test_promot_eval_on_the_paper_1shot_suite(paper_tasks, checkpoint, fixtures_dir, tmp_path):
  out = tmp_path / 'eval'
  assert jax.device_count() == 8  # the eval gin's mesh puts all 8 on 'data'
  code = eval_script.main([
      '--gin_file=tests/testdata/tiny_model.gin', '--gin_file=eval/fewshot_paper.gin',
      f"--gin.SPM_PATH='{fixtures_dir / 'sentencepiece.model'}'",
      f'--gin.CHECKPOINT_PATH={checkpoint}', f'--gin.EVAL_OUTPUT_DIR={out}',
      f'--gin.MIXTURE_OR_TASK_NAME={PREFIX}rte',
      f'--gin.EVAL_SUITE={paper.eval_mixture_name(1, PREFIX)}',
      "--gin.EVAL_SUITE_NAMES=['fewshot_1shot']",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 8}",
      '--gin.LENGTH_BUCKETS=()', '--gin.BATCH_SIZE=8',
      f"--gin.TASK_NAME_PREFIXES=['{PREFIX}']",
      "--gin.evaluation.EvalSettings.try_in_mem_cache=False"])
  assert code == 0

  data = json.loads((out / 'results.json').read_text())
  result = evaluation.EvalResult.from_json(data)
  assert result.settings['decoder'] == 'beam' and result.settings['num_beams'] == 4
  suite = result.suites['fewshot_1shot']
  assert list(suite.tasks) == list(EIGHT)  # in the paper's order
  primary = {'cb': 'accuracy', 'wic': 'accuracy', 'triviaqa': 'exact_match',
             'webquestions': 'exact_match', 'wmt16_ende': 'bleu', 'wmt16_enro': 'bleu',
             'xsum': 'rouge2', 'wikilingua_en': 'rouge2'}
  assert {n: t.primary_metric for n, t in suite.tasks.items()} == primary
  scores = [t.score for t in suite.tasks.values()]
  assert all(0.0 <= s <= 100.0 for s in scores)
  assert suite.norm_avg == pytest.approx(np.mean(scores))
  assert suite.norm_avg == pytest.approx(metrics.normalized_average(scores))
  # The prompt: attached for the fine-tuned task only.
  rte = result.suites['target'].tasks['rte']
  assert rte.prompt == 'task' and rte.primary_metric == 'accuracy'
  assert {t.prompt for t in suite.tasks.values()} == {None}
  # RTE's labels measure format specialization on every suite task.
  assert all(t.format_specialization is not None for t in suite.tasks.values())
  for name, task in suite.tasks.items():
    assert task.num_examples == 3 and task.truncated_inputs is not None
    lines = (out / 'predictions' / 'fewshot_1shot' / f'{name}.jsonl').read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0])['task'] == f'{PREFIX}{name}_1shot'

  table = (out / 'table.md').read_text()
  assert '| **Norm. Avg.** |' in table
  for name in EIGHT:
    assert f'| {name} ({primary[name]}) |' in table
  assert f'{suite.norm_avg:.2f}' in table
  assert 'rte (accuracy) ‡' in table
