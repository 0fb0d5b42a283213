"""T5X's launch habits: absl flags on promot-train, absl logging, a progress line with ETA, T5X's TensorBoard layout."""

import argparse
import logging
import re

import pytest
import seqio
from absl import logging as absl_logging
from test_train_runs import _cmd, _env, _run, _toy_args

from promot_t5x import optimizers, summaries, t5x_flags

event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
tensor_util = pytest.importorskip('tensorboard.util.tensor_util')


def _tags(folder):
  acc = event_accumulator.EventAccumulator(str(folder), size_guidance={'tensors': 0})
  acc.Reload()
  return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
          for tag in acc.Tags()['tensors']}


def test_promot_train_takes_t5x_flags_and_writes_t5x_tensorboard(tmp_path, fixtures_dir):
  model_dir = tmp_path / 'run'
  r = _run(_cmd(*_toy_args(fixtures_dir, model_dir), '--gin_file=runs/finetune.gin',
                '--gin.TRAIN_STEPS=4', '--gin.train.train.log_period=2', '--alsologtostderr',
                f'--tfds_data_dir={tmp_path / "tfds"}',
                f'--seqio_additional_cache_dirs={tmp_path / "cache"}'), _env(fixtures_dir))
  # The progress line carries an ETA; absl formats the logs (INFO with --alsologtostderr).
  assert re.search(r'step 2/4 \(50%\)  loss \d+\.\d+ .* ETA \d+:\d\d:\d\d', r.stdout), r.stdout
  assert re.search(rf'^I\d{{4}} [\d:.]+ +\d+ t5x_flags.py:\d+\] TFDS data dir: {tmp_path}/tfds$',
                   r.stderr, re.M), r.stderr[-3000:]

  tags = _tags(model_dir / 'train')
  for tag in ('loss', 'accuracy', 'learning_rate', 'grad_norm', 'timing/steps_per_second',
              'timing/tokens_per_second', 'timing/seconds', 'timing/uptime'):
    assert [step for step, _ in tags[tag]] == [2, 4], tag
  assert all(value > 0 for _, value in tags['learning_rate'])
  assert not (model_dir / 'tensorboard').exists()


def test_flags_reach_seqio():
  parser = argparse.ArgumentParser()
  t5x_flags.add_flags(parser)
  before = list(seqio.get_global_cache_dirs())
  args = parser.parse_args(['--tfds_data_dir=/data/tfds', '--seqio_additional_cache_dirs=/c1,/c2',
                            '--seqio_additional_cache_dirs=/c3', '-v', '1'])
  try:
    t5x_flags.apply(args, 'promot-test')
    assert seqio.utils._TFDS_DATA_DIR_OVERRIDE == '/data/tfds'
    assert list(seqio.get_global_cache_dirs())[-3:] == ['/c1', '/c2', '/c3']
    assert logging.getLogger().level == logging.DEBUG  # -v 1
    assert absl_logging.get_absl_handler() in logging.getLogger().handlers
  finally:
    seqio.set_tfds_data_dir_override(None)
    seqio.set_global_cache_dirs(before)
    # Leave pytest's logging as it was (absl's handler holds pytest's captured stderr).
    logging.getLogger().removeHandler(absl_logging.get_absl_handler())
    logging.getLogger().setLevel(logging.WARNING)


def test_inference_and_training_eval_folders(tmp_path):
  runs = summaries.RunSummaries(str(tmp_path))
  runs.inference_eval(10, {'rte/accuracy': 75.0, 'fewshot/triviaqa/exact_match': 12.5})
  runs.training_eval(10, 'rte', {'loss': 0.5})
  runs.close()
  assert _tags(tmp_path / 'inference_eval' / 'rte') == {'eval/accuracy': [(10, 75.0)]}
  assert _tags(tmp_path / 'inference_eval' / 'fewshot' / 'triviaqa') == {
      'eval/exact_match': [(10, 12.5)]}
  assert _tags(tmp_path / 'training_eval' / 'rte') == {'loss': [(10, 0.5)]}


def test_learning_rates_and_eta():
  schedule = optimizers.learning_rate_schedule('constant*rsqrt_decay', base=1.0, warmup_steps=100)
  assert summaries.learning_rates(optimizers.adafactor(schedule), 400) == {
      'learning_rate': pytest.approx(float(schedule(400)))}
  both = optimizers.multi_set_optimizer({'model': 0.001, 'prompt': 0.2})
  assert summaries.learning_rates(both, 7) == {'learning_rate/model': pytest.approx(0.001),
                                                'learning_rate/prompt': pytest.approx(0.2)}
  line = summaries.progress_line(100, 1000, 2.5, 0.8, 2.0, 4096.0)
  assert line.endswith('ETA 0:07:30') and '(10%)' in line
  assert summaries.progress_line(1, 10, 1.0, 1.0, 0.0, 0.0).endswith('ETA ?')


@pytest.mark.parametrize('program', ['train', 'eval'])
def test_both_programs_parse_t5x_flags(program, capsys):
  import importlib

  main = importlib.import_module(f'promot_t5x.{program}').main
  with pytest.raises(SystemExit) as e:
    main(['--alsologtostderr', '--tfds_data_dir=/data/tfds', '--seqio_additional_cache_dirs=/c'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert '--gin_file is required' in err and 'unrecognized arguments' not in err
