"""gin file lookup: a folder in the working directory named like a gin subfolder does not break includes."""

import gin
from promot_t5x import gin_utils


def test_a_runs_folder_in_the_working_directory_does_not_break_gin_includes(tmp_path, monkeypatch):
  # The miniature writes its results to ./runs/; gin would look `runs/_base.gin` up as a
  # file of a (namespace) package `runs` and crash before reaching the project's gin dir.
  (tmp_path / 'runs' / 'miniature').mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  gin_utils.parse(['miniature/model.gin', 'runs/finetune.gin'],
                  ["MIXTURE_OR_TASK_NAME = 'mini_rte'", 'TRAIN_STEPS = 1', "MODEL_DIR = '/tmp/x'"],
                  finalize=False)
  assert gin.query_parameter('%LEARNING_RATE') == 0.001
  gin.clear_config()
