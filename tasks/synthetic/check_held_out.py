r"""Checks that the scored items were never drawn by the base model's pretraining.

  python -m promot_t5x_tasks.synthetic.check_held_out             # check, write a report
  python -m promot_t5x_tasks.synthetic.check_held_out --write     # and update the exclusions

Pretraining episodes draw fresh items, skipping the world's held-out keys
(every validation and test item). The fine-tuning families' test splits were
later enlarged from 128 to `WorldConfig.finetune_test_size` (256) items; the
extra items were not held out while the committed base model pretrained, so
its pretraining stream may have drawn some of them (as a demonstration or a
query: for `enfr` through the Frenka-to-English episodes, for `rte` through
three-way inference items with the same text).

The stream is a pure function of the example index
(`World.pretraining_example`), so this regenerates, in the world as it was
pretrained (`finetune_test_size = eval_size`), the keys of every item the
first N examples of each component draw, N well above what the base model's
pretraining read (its steps x batch x the component's rate, twice over), and
intersects them with the scored items. With `--write`, colliding extra items
go to `data/pretraining_drawn.json`, which the world skips when it draws the
extra items (their replacements are checked again, until none collides).
The report (docs/miniature/held_out_check.json) records the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from promot_t5x_tasks.synthetic import world as world_lib

# The committed base model's pretraining (docs/miniature/pretrain/config.gin):
# at most 9,000 steps of 32 examples.
PRETRAIN_EXAMPLES = 9000 * 32
# How far past its expected read each component's stream is checked (seqio
# shuffles within a 1,000-example buffer; a restart reads from the start again).
MARGIN = 2.0


def examples_to_check(world: world_lib.World, total: int = PRETRAIN_EXAMPLES,
                      margin: float = MARGIN) -> dict[str, int]:
  """Per pretraining component: how many of its first examples to regenerate."""
  return {c: int(margin * rate * total) + 2000 for c, rate in world.pretrain_rates.items()}


def drawn_keys(world: world_lib.World, counts: dict[str, int]) -> set[str]:
  """Keys of every task item the first `counts[c]` examples of each component draw."""
  drawn: set[str] = set()
  for component, n in counts.items():
    for index in range(n):
      world.pretraining_example(component, index, 'train', drawn=drawn)
  return drawn


def scored_overlap(world: world_lib.World, drawn: set[str]) -> dict[str, list[str]]:
  """Per family: the keys of its scored items (`eval` split) that are in `drawn`."""
  return {f: sorted(i.key for i in world.items(f, world_lib.EVAL_SPLIT) if i.key in drawn)
          for f in world_lib.ALL_FAMILIES}


def run(write: bool = False, report_path: str | None = None,
        counts: dict[str, int] | None = None, max_rounds: int = 5) -> dict:
  config = world_lib.WorldConfig()
  start = time.time()
  counts = counts or examples_to_check(world_lib.World(config).as_pretrained())
  drawn = drawn_keys(world_lib.World(config).as_pretrained(), counts)
  excluded: dict[str, list[str]] = {}
  if os.path.exists(world_lib.PRETRAINING_DRAWN_FILE):
    with open(world_lib.PRETRAINING_DRAWN_FILE) as f:
      excluded = {k: list(v) for k, v in json.load(f).get('drawn', {}).items()}
  for _ in range(max_rounds):
    overlap = scored_overlap(world_lib.World(config), drawn)
    if not write or not any(overlap.values()):
      break
    for family, keys in overlap.items():
      if keys:
        excluded[family] = sorted(set(excluded.get(family, ())) | set(keys))
    with open(world_lib.PRETRAINING_DRAWN_FILE, 'w') as f:
      json.dump({'about': 'Extra test items of the fine-tuning families that the committed '
                          "base model's pretraining stream drew (written by python -m "
                          'promot_t5x_tasks.synthetic.check_held_out --write); the world skips '
                          'them.', 'drawn': excluded}, f, indent=1, sort_keys=True)
      f.write('\n')
    world_lib.pretraining_drawn.cache_clear()
  world = world_lib.World(config)
  report = {
      'examples_checked': counts,
      'items_drawn': len(drawn),
      'scored_items': {f: len(world.items(f, world_lib.EVAL_SPLIT)) for f in world_lib.ALL_FAMILIES},
      'excluded_extra_items': {f: len(v) for f, v in excluded.items()},
      'overlap': {f: len(v) for f, v in overlap.items()},
      'passed': not any(overlap.values()),
      'seconds': round(time.time() - start, 1),
  }
  if report_path:
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    with open(report_path, 'w') as f:
      json.dump(report, f, indent=1)
      f.write('\n')
  return report


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--write', action='store_true',
                      help='add colliding extra test items to data/pretraining_drawn.json')
  parser.add_argument('--report', default='docs/miniature/held_out_check.json',
                      help='where the report goes')
  args = parser.parse_args(argv)
  report = run(write=args.write, report_path=args.report)
  print(json.dumps(report, indent=1))
  if not report['passed']:
    print('Scored items were drawn by pretraining; run with --write to exclude the extra ones '
          '(items of the original 128 cannot collide: they were held out).', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
