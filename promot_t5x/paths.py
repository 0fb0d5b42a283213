"""Checks on the run paths promot-train and promot-eval use with local file operations
(stdlib only: the TPU launcher imports this on the user's machine)."""

from __future__ import annotations

import re


def url_path_problem(name: str, path: str, program: str = 'promot-train') -> str | None:
  """Why `path` cannot be `name` (MODEL_DIR, INITIAL_CHECKPOINT_PATH; for
  promot-eval CHECKPOINT_PATH, EVAL_OUTPUT_DIR), or None if it can.

  Both programs read and write these with local file operations, so a URL
  such as `gs://bucket/run` would become a local folder named `gs:` on each
  host and the run's checkpoints would vanish with the machine.
  """
  if not re.match(r'^[A-Za-z][\w+.-]*://', str(path)):
    return None
  return (f'{name}={str(path)!r} is a URL, but {program} reads and writes it with local file '
          'operations. Mount the bucket on every host (e.g. `gcsfuse my-bucket /mnt/gcs`) and '
          f'pass the mounted path (e.g. --gin.{name}=/mnt/gcs/...); for a gs:// T5X checkpoint, '
          'convert it first with promot-convert --from=t5x.')
