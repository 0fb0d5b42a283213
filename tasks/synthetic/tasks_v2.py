"""The second synthetic world's tasks (prefix `mini2_`): the fine-tuning skills latent in pretraining.

Importing this module registers, for `world.WORLD_V2`, the same set of tasks and
mixtures as `tasks.py` does for the first world (`mini2_rte`, `mini2_enfr`,
`mini2_{family}_{k}shot`, `mini2_pretrain`, ...), plus the latent-skill probes
the base model's gate reads:

| name | what |
|---|---|
| `mini2_rte_yn_{k}shot` | binary inference as a yes/no question (`world.YES_NO_INFERENCE`), k in 0, 1 |
| `mini2_enfr_alt_{k}shot` | English to Frenka in `world.ALT_TRANSLATION`'s wording, k in 0, 1 |
| `mini2_probes_{k}shot` | the two probes' mixture |
| `mini2_pretrain_phase2` | the second pretraining phase's mixture (a third yes/no inference episodes) |
| `mini2_pretrain_phase3` | the third phase's mixture (half short yes/no inference episodes) |
| `mini2_pretrain_phase4` | the fourth phase's mixture (three quarters short yes/no inference episodes) |

The probes render the fine-tuning tasks' own validation and test items (never
seen in pretraining) in the pretraining formats.

Conjugate transforms: this world's own Lumic and cipher (its pretraining reads
both), registered as `toylang_v2` and `cipher_v2` (`TRANSFORM_NAMES`), with the
suite under them: `mini2_{family}_{k}shot__{transform}` and
`mini2_eval_{k}shot__{transform}`.
"""

from __future__ import annotations

import dataclasses

import seqio
import tensorflow as tf
from promot_t5x_tasks import fewshot as fewshot_lib
from promot_t5x_tasks.synthetic import tasks as tasks_lib
from promot_t5x_tasks.synthetic import transforms as transforms_lib
from promot_t5x_tasks.synthetic import vocabulary as vocabulary_lib
from promot_t5x_tasks.synthetic import world as world_lib

from promot_t5x import metrics, postprocessing

PREFIX = 'mini2_'
WORLD_CONFIG = world_lib.WORLD_V2
PROBE_SHOTS = (0, 1)
# This world's conjugate transforms: ('toylang_v2', 'cipher_v2').
TRANSFORM_SUFFIX = '_v2'
TRANSFORM_NAMES = transforms_lib.transform_names(TRANSFORM_SUFFIX)
# Probe: its fine-tuning family, metric and postprocessor.
_PROBES = {
    'rte_yn': ('rte', metrics.accuracy, postprocessing.classification_postprocessor),
    'enfr_alt': ('enfr', metrics.bleu, postprocessing.text_postprocessor),
}
PROBE_FORMS = tuple(_PROBES)


def probe_name(form: str, num_shots: int) -> str:
  """`mini2_rte_yn_1shot`: a latent-skill probe at k shots."""
  return f'{PREFIX}{form}_{num_shots}shot'


def _probe_source(world: world_lib.World, form: str) -> seqio.FunctionDataSource:
  family = _PROBES[form][0]

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    examples = [world.render_skill(item, form) for item in world.items(family, split)]
    return tf.data.Dataset.from_tensor_slices({
        'inputs': tf.constant([e.inputs for e in examples], tf.string),
        'targets': tf.constant([e.targets for e in examples], tf.string)})

  sizes = {s: len(world.items(family, s)) for s in tasks_lib.SOURCE_SPLITS}
  return seqio.FunctionDataSource(dataset_fn, splits=tasks_lib.SOURCE_SPLITS,
                                  num_input_examples=sizes)


def register_probes(world_config: world_lib.WorldConfig = WORLD_CONFIG, prefix: str = PREFIX
                    ) -> list[str]:
  """Registers the latent-skill probes of `world_config` (replacing); returns their names."""
  world = world_lib.get_world(world_config)
  names = []
  for form, (_, metric, post) in _PROBES.items():
    for k in PROBE_SHOTS:
      name = f'{prefix}{form}_{k}shot'
      fewshot_lib.add_text_task(
          name, _probe_source(world, form), tasks_lib._identity_render,  # pylint: disable=protected-access
          vocabulary=vocabulary_lib.get_vocabulary(),
          fewshot=dataclasses.replace(tasks_lib.FEWSHOT, num_shots=k), metric_fns=[metric],
          postprocess_fn=lambda s, _p=post, **kw: _p(s, prefixes=('Q:', 'English:'), **kw),
          overwrite=True)
      names.append(name)
  return names


transforms_lib.register_transforms(world_lib.get_world(WORLD_CONFIG), suffix=TRANSFORM_SUFFIX)
tasks_lib.register_mini_tasks(WORLD_CONFIG, prefix=PREFIX, transforms=TRANSFORM_NAMES)
register_probes()


def probes_mixture_name(num_shots: int = 1) -> str:
  """`mini2_probes_1shot`: the latent-skill probes at k shots."""
  return f'{PREFIX}probes_{num_shots}shot'


for _k in PROBE_SHOTS:
  tasks_lib._replace_mixture(probes_mixture_name(_k), [(probe_name(f, _k), 1.0) for f in PROBE_FORMS])  # pylint: disable=protected-access


# The later pretraining phases' mixtures (`mini2_pretrain_phase{2,3,4}`, their rates
# `world.PRETRAIN_RATES_V2_PHASE{2,3,4}`, their gins gin/miniature/pretrain_v2_phase*.gin).
PHASE_MIXTURES = {f'{PREFIX}pretrain_phase2': world_lib.PRETRAIN_RATES_V2_PHASE2,
                  f'{PREFIX}pretrain_phase3': world_lib.PRETRAIN_RATES_V2_PHASE3,
                  f'{PREFIX}pretrain_phase4': world_lib.PRETRAIN_RATES_V2_PHASE4}
for _name, _rates in PHASE_MIXTURES.items():
  tasks_lib._replace_mixture(  # pylint: disable=protected-access
      _name, [(tasks_lib.pretrain_task_name(c, PREFIX), r) for c, r in _rates.items()])
