"""A user's own task module, as a README example: a local TSV file as a seqio task.

MIXTURE_OR_TASK_MODULE=copy_tasks (with tests/testdata on PYTHONPATH) registers
`user_tsv_task`, whose TSV path and vocabulary come from environment variables
so the same module works in every test's tmp folder.
"""

import os

import seqio
from promot_t5x_tasks import templates

TSV = os.environ.get('PROMOT_TEST_TSV', '')
SPM = os.environ.get('PROMOT_TEST_SPM', '')


def _parse_tsv(ds):
  import tensorflow as tf

  def parse(line):
    fields = tf.strings.split(line, '\t')
    return {'premise': fields[0], 'hypothesis': fields[1], 'label': fields[2]}
  return ds.map(parse)


@seqio.map_over_dataset
def _render(ex):
  import tensorflow as tf

  inputs = tf.strings.join([ex['premise'], ' question: ', ex['hypothesis'],
                            ' Is it true or false? answer:'])
  return {'inputs': inputs, 'targets': ex['label']}


if TSV and SPM and 'user_tsv_task' not in seqio.TaskRegistry.names():
  vocab = seqio.SentencePieceVocabulary(SPM, extra_ids=100)
  assert templates.binary_inference('a', 'b') == 'a question: b Is it true or false? answer:'
  seqio.TaskRegistry.add(
      'user_tsv_task',
      source=seqio.TextLineDataSource({'train': TSV, 'validation': TSV}),
      preprocessors=[_parse_tsv, _render, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(vocab, add_eos=True),
                       'targets': seqio.Feature(vocab, add_eos=True)},
      metric_fns=[])
