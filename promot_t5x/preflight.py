"""Checks a training run's configuration before any checkpoint is read or anything written.

A run that would fail at its first step, or train something other than what
was asked, should fail in seconds with the fix, not after a checkpoint restore
(minutes at mT5 XXL) and not after leaving a half-made MODEL_DIR behind.
`check_training` runs first in `train.train`:

- the task or mixture exists (its module imported), and its vocabulary fits the
  model's embedding (a larger vocabulary gives NaN losses, not an error);
- the global batch divides over the mesh's data axis and the data shards;
- MODEL_DIR (or the folder that would hold it) is writable;
- warnings: examples longer than TASK_FEATURE_LENGTHS (counted on the first
  examples of the split; they are truncated), a prompt-tuning stage starting
  from a random model (no INITIAL_CHECKPOINT_PATH).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from promot_t5x import data, fs, param_sets, partitioning

# Examples read from the start of the training split to count truncation.
TRUNCATION_SAMPLE = 200


def _warn(msg: str) -> None:
  from promot_t5x import run_guard

  run_guard.warn(msg)


def writable_problem(name: str, path: str) -> str | None:
  """Why `path` (a folder to be created or written) cannot be written, or None.

  Probes by creating a file in the folder, or in the nearest existing parent
  of a folder not yet made (file modes alone do not tell: root, ACLs, read-only mounts).
  A `gs://` path is probed by writing and deleting an object in it.
  """
  if not fs.is_local(path):
    return _url_writable_problem(name, path)
  probe_dir = os.path.abspath(path)
  while not os.path.isdir(probe_dir):
    if os.path.exists(probe_dir):
      return f'{name}={path!r} is a file, not a folder. Give a folder path.'
    parent = os.path.dirname(probe_dir)
    if parent == probe_dir:
      break
    probe_dir = parent
  try:
    with tempfile.NamedTemporaryFile(dir=probe_dir, prefix='.promot-write-test-'):
      pass
  except OSError as e:
    return (f'{name}={path!r} cannot be written: {probe_dir} refuses new files ({e.strerror}). '
            f'Choose a writable {name}, or fix the folder\'s permissions or mount.')
  return None


def _url_writable_problem(name: str, path: str) -> str | None:
  probe = fs.join(path, f'.promot-write-test-{os.getpid()}')
  try:
    if fs.isfile(path):
      return f'{name}={path!r} is a file, not a folder. Give a folder path.'
    fs.write_text(probe, '')
    fs.remove(probe)
  except OSError as e:
    return f'{name}={path!r} cannot be written: {e}'
  return None


def _tasks(provider: Any) -> list[Any]:
  import seqio

  if isinstance(provider, seqio.Mixture):
    return list(provider.tasks)
  return [provider]


def check_vocabulary(provider: Any, vocab_size: int, name: str) -> None:
  """Refuses a task whose vocabulary has more ids than the model's embedding rows."""
  for task in _tasks(provider):
    for key, feature in task.output_features.items():
      if key not in ('inputs', 'targets'):
        continue
      size = feature.vocabulary.vocab_size
      if size > vocab_size:
        raise ValueError(
            f'The vocabulary of task {task.name!r} ({key}) has {size} ids but the model\'s '
            f'embedding has {vocab_size} rows (T5Config.vocab_size), so ids >= {vocab_size} '
            f'would index outside it (NaN losses). Use the model gin that matches the task\'s '
            f'vocabulary, or set --gin.t5.T5Config.vocab_size={size} (or larger) for a new '
            f'model. ({name})')


def count_truncated(provider: Any, feature_lengths: dict[str, int], split: str,
                    sample: int = TRUNCATION_SAMPLE) -> tuple[int, dict[str, int], int]:
  """(examples read, {feature: how many are longer than its length}, targets cut to EOS only)."""
  import seqio  # noqa: F401 (registers the providers' dataset functions)

  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False,
                            num_epochs=1)
  counts = dict.fromkeys(feature_lengths, 0)
  eos_only, n = 0, 0
  for ex in ds.take(sample).as_numpy_iterator():
    n += 1
    for key, length in feature_lengths.items():
      if key in ex and len(ex[key]) > length:
        counts[key] += 1
        if key == 'targets' and length <= 1:
          eos_only += 1
  return n, counts, eos_only


def check_training(*, model: Any, stage: param_sets.Stage, train_dataset: data.DatasetConfig,
                   model_dir: str, partitioner: partitioning.Partitioner,
                   initial_checkpoint: Any, resuming: bool) -> None:
  """Runs every check named in the module docstring; raises ValueError with the fix.

  Args:
    model: the EncoderDecoderModel (its config's vocab_size).
    stage: the run's stage (whether it tunes a prompt on a frozen model).
    train_dataset: the training data's DatasetConfig.
    model_dir: MODEL_DIR (not yet created or written).
    partitioner: the mesh the batch is split over.
    initial_checkpoint: INITIAL_CHECKPOINT_PATH's RestoreConfig, or None.
    resuming: MODEL_DIR already holds a checkpoint.
  """
  import jax

  problem = writable_problem('MODEL_DIR', model_dir)
  if problem:
    raise ValueError(problem)
  data.import_task_modules(train_dataset.module)
  name = train_dataset.mixture_or_task_name
  provider = data.get_mixture_or_task(name)
  check_vocabulary(provider, model.config.vocab_size, f'MIXTURE_OR_TASK_NAME={name!r}')

  batch = train_dataset.batch_size
  data_axis = partitioner.mesh_shape.get('data', 1)
  shards = partitioner.data_layout().num_shards
  for parts, what in ((data_axis, f"the mesh's data axis ({data_axis}, MESH_DATA)"),
                      (shards, f'the {shards} data shards (processes on distinct data rows)')):
    if batch % parts:
      raise ValueError(f'BATCH_SIZE={batch} does not divide over {what}. Use a BATCH_SIZE '
                       f'that is a multiple of {parts}, or change the mesh.')

  try:
    n, counts, eos_only = count_truncated(provider, dict(train_dataset.task_feature_lengths),
                                          train_dataset.split)
  except Exception as e:  # noqa: BLE001 (a task whose preprocessors need lengths: not counted)
    logging.info('truncation not counted for %s: %s', name, e)
    n, counts, eos_only = 0, {}, 0
  cut = {k: c for k, c in counts.items() if c}
  if cut and jax.process_index() == 0:
    lengths = train_dataset.task_feature_lengths
    detail = ', '.join(f'{k}: {c} longer than {lengths[k]}' for k, c in cut.items())
    extra = f'; {eos_only} targets keep only EOS' if eos_only else ''
    _warn(f'of the first {n} training examples of {name!r}, {detail}{extra}. They are '
          'truncated to TASK_FEATURE_LENGTHS; raise the lengths if the cut part matters.')
  tunes_prompt_only = 'model' in stage.frozen and all(
      t == param_sets.PROMPT_ROOT or t.startswith(param_sets.PROMPT_ROOT + '/') for t in stage.trainable)
  if tunes_prompt_only and initial_checkpoint is None and not resuming:
    _warn(f'stage {stage.name!r} tunes a prompt on a frozen model, but no '
          'INITIAL_CHECKPOINT_PATH is set: the model stays at its random initialization. Set '
          'INITIAL_CHECKPOINT_PATH to the pretrained model.')
