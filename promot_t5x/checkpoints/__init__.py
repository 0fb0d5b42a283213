"""Checkpoints: the project's orbax format, legacy T5X import, Hugging Face import/export.

  params = import_t5x('.../checkpoint_1000000', model, allow_missing=('prompt/.*',))
  model, params = import_hf('path/to/hf_folder')
  export_hf(params, model.config, 'out/hf_folder')
  export_t5x(params, 'out/t5x_model', step=1000)   # -> out/t5x_model/checkpoint_1000/
  save_params('out/params', params); params = load_params(MODEL_DIR)

Every importer returns a nested dict of float32 numpy arrays with exactly the
model's parameter paths (T5X names) and checks every path and shape.
"""

from promot_t5x.checkpoints.hf import (
    export_hf,
    hf_config_from_t5,
    import_hf,
    read_hf_tensors,
    t5_config_from_hf,
)
from promot_t5x.checkpoints.matching import (
    PROMPT_PATTERN,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointReport,
    match_params,
)
from promot_t5x.checkpoints.orbax_io import (
    find_params_item,
    latest_step,
    load_params,
    save_params,
)
from promot_t5x.checkpoints.t5x_export import export_run_to_t5x, export_t5x
from promot_t5x.checkpoints.t5x_legacy import (
    import_t5x,
    read_t5x_legacy_params,
    read_t5x_optimizer_state,
    read_t5x_shapes,
    t5x_checkpoint_step,
    t5x_config_from_checkpoint,
)

__all__ = [
    'PROMPT_PATTERN',
    'CheckpointError',
    'CheckpointMismatchError',
    'CheckpointReport',
    'export_hf',
    'export_run_to_t5x',
    'export_t5x',
    'find_params_item',
    'hf_config_from_t5',
    'import_hf',
    'import_t5x',
    'latest_step',
    'load_params',
    'match_params',
    'read_hf_tensors',
    'read_t5x_legacy_params',
    'read_t5x_optimizer_state',
    'read_t5x_shapes',
    'save_params',
    't5_config_from_hf',
    't5x_checkpoint_step',
    't5x_config_from_checkpoint',
]
