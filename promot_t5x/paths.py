"""Checks on the run paths promot-train and promot-eval accept
(stdlib only: the TPU launcher imports this on the user's machine)."""

from __future__ import annotations

import re

# URL schemes the run's file-system layer (promot_t5x.fs) reads and writes:
# orbax and TensorStore write checkpoints to local paths and Cloud Storage only.
SUPPORTED_SCHEMES = ('gs',)


def url_path_problem(name: str, path: str, program: str = 'promot-train') -> str | None:
  """Why `path` cannot be `name` (MODEL_DIR, INITIAL_CHECKPOINT_PATH; for
  promot-eval CHECKPOINT_PATH, EVAL_OUTPUT_DIR), or None if it can.

  Local paths and `gs://` URLs are accepted. Another URL (`s3://...`,
  `http://...`) would become a local folder named `s3:` on each host and the
  run's checkpoints would vanish with the machine.
  """
  m = re.match(r'^([A-Za-z][\w+.-]*)://', str(path))
  if not m or m.group(1) in SUPPORTED_SCHEMES:
    return None
  return (f'{name}={str(path)!r} is a URL, but {program} reads and writes only local paths and '
          'gs:// (Cloud Storage) URLs. Copy the data to a bucket, or mount the '
          f'storage on every host (e.g. with gcsfuse or s3fs at /mnt/gcs) and pass the mounted '
          f'path (e.g. --gin.{name}=/mnt/gcs/...).')
