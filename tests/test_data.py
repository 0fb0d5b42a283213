"""The training data pipeline: length bucketing keeps every token and cuts padding."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
from promot_t5x_tasks import vocab as vocab_lib
from promot_t5x_tasks.synthetic import vocabulary as mini_vocabulary

from promot_t5x import data

TASK = 'test_data_varied_lengths'
WORDS = 'the cat sat on a mat while rain fell over the old river town'.split()


def _register():
  if TASK in seqio.TaskRegistry.names():
    return
  rng = np.random.default_rng(0)
  inputs = [' '.join(rng.choice(WORDS, size=int(n))) for n in rng.integers(1, 40, size=50)]

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'inputs': inputs, 'targets': ['x'] * len(inputs)})

  seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(dataset_fn, splits=('train',)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=vocab_lib.output_features(mini_vocabulary.get_vocabulary()))


def _rows(cfg):
  rows, lengths = [], []
  for batch in data.numpy_batches(data.get_dataset(cfg, num_epochs=1, drop_remainder=False)):
    lengths.append(batch['encoder_input_tokens'].shape[1])
    for row in batch['encoder_input_tokens']:
      rows.append(tuple(int(t) for t in row if t))
    assert batch['encoder_input_tokens'].shape[0] == batch['decoder_target_tokens'].shape[0]
  return sorted(rows), lengths


def test_length_buckets_keep_every_token_and_cut_batches_to_a_bucket():
  _register()
  plain = data.DatasetConfig(TASK, {'inputs': 64, 'targets': 4}, batch_size=4, shuffle=False)
  bucketed = data.DatasetConfig(TASK, {'inputs': 64, 'targets': 4}, batch_size=4, shuffle=False,
                                length_buckets=(16, 32))
  assert bucketed.length_buckets == (16, 32, 64)
  plain_rows, plain_lengths = _rows(plain)
  rows, lengths = _rows(bucketed)
  assert rows == plain_rows and len(rows) == 50  # nothing lost, nothing truncated
  assert set(plain_lengths) == {64}
  assert set(lengths) <= {16, 32, 64} and min(lengths) < 64
  assert sum(lengths) < sum(plain_lengths)


def test_length_buckets_refuse_packing_and_multiple_processes():
  _register()
  with pytest.raises(ValueError, match='packing'):
    data.DatasetConfig(TASK, {'inputs': 64, 'targets': 4}, pack=True, length_buckets=(16,))
  cfg = data.DatasetConfig(TASK, {'inputs': 64, 'targets': 4}, batch_size=4, length_buckets=(16,))
  with pytest.raises(ValueError, match='one process'):
    data.get_dataset(cfg, shard_index=0, num_shards=2)
