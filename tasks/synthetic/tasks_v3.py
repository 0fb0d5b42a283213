"""The third synthetic world's tasks (prefix `mini3_`): the second world's design with rare facts and words.

Importing this module registers, for `world.WORLD_V3`, the same tasks and
mixtures as `tasks_v2.py` does for the second world (`mini3_rte`, `mini3_enfr`,
`mini3_{family}_{k}shot`, the latent-skill probes `mini3_rte_yn_{k}shot` and
`mini3_enfr_alt_{k}shot`, their mixture `mini3_probes_{k}shot`, the conjugate
transforms `toylang_v3` and `cipher_v3` and their suites).

The third world is drawn anew (other people, facts, lexicons and items) and
pretraining mentions a third of its people, and of its Deuna and Romali
words, rarely (`WorldConfig.rare_share`), so that the QA and En-De / En-Ro
analogues ask about things a base model knows only in part. `mini3_pretrain`
is this world's pretraining mixture at `world.PRETRAIN_RATES_V3` (the
world's `pretrain_rates`): the base model continues the second world's
(gin/miniature/pretrain_v3.gin).
"""

from __future__ import annotations

from promot_t5x_tasks.synthetic import tasks as tasks_lib
from promot_t5x_tasks.synthetic import tasks_v2
from promot_t5x_tasks.synthetic import transforms as transforms_lib
from promot_t5x_tasks.synthetic import world as world_lib

PREFIX = 'mini3_'
WORLD_CONFIG = world_lib.WORLD_V3
# This world's conjugate transforms: ('toylang_v3', 'cipher_v3').
TRANSFORM_SUFFIX = '_v3'
TRANSFORM_NAMES = transforms_lib.transform_names(TRANSFORM_SUFFIX)


def probe_name(form: str, num_shots: int) -> str:
  """`mini3_rte_yn_1shot`: a latent-skill probe at k shots."""
  return f'{PREFIX}{form}_{num_shots}shot'


def probes_mixture_name(num_shots: int = 1) -> str:
  """`mini3_probes_1shot`: the latent-skill probes at k shots."""
  return f'{PREFIX}probes_{num_shots}shot'


transforms_lib.register_transforms(world_lib.get_world(WORLD_CONFIG), suffix=TRANSFORM_SUFFIX)
tasks_lib.register_mini_tasks(WORLD_CONFIG, prefix=PREFIX, transforms=TRANSFORM_NAMES)
tasks_v2.register_probes(WORLD_CONFIG, prefix=PREFIX)
for _k in tasks_v2.PROBE_SHOTS:
  tasks_lib._replace_mixture(probes_mixture_name(_k), [(probe_name(f, _k), 1.0) for f in tasks_v2.PROBE_FORMS])  # pylint: disable=protected-access
