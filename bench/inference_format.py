"""Does a miniature-sized T5 learn the second world's yes/no inference from scratch? By hypothesis form and schedule.

bench/membership_plateau.py found that a miniature-sized T5 learns a content
match when the query is written in tokens of its own (`--task=marked`) but not
when it must be found by its place (`--task=search`). This carries that to the
second world's real items: the yes/no inference question
(`world.YES_NO_INFERENCE`, items from `World._inference_item('rte')` of
`WORLD_V2`, tokenized with the miniature's SentencePiece vocabulary), its
hypothesis written

  english: as in the second world ("... Does it say that Lizo plays chess? A:");
  lumic:   wholly in Lumic (`World.to_lumic`: names and cities kept);
  twin:    English with the value word as a token of its own, one per value
           (`<extra_id_20>` ...; Lumic's value words take 1-4 pieces of this
           vocabulary, 2.3 on average, these take one; cities kept).

It trains the miniature's model (3 + 3 layers, 128 wide, 4 heads, the
miniature's vocabulary; `--layers`, `--heads`; bench/membership_plateau.py's
model and step)
from scratch with Adam (`--optimizer`; a constant rate, or
`--schedule=warmup_cosine`) on 0-shot (or `--shots=1`) questions, prints loss
and answer accuracy every 100 steps (yes against no on the first decoder step,
overall and per kind of item: `entailed`, the hypothesis's value in the
premise, "yes"; `contradicted`, its relation in the premise with another
value, and `unmentioned`, its relation not in the premise, both "no") and
appends each line to bench/results/inference_format.jsonl (rows written before
the kinds were recorded give the accuracy on hypotheses about a city instead).

  python bench/inference_format.py --hypothesis=english
  python bench/inference_format.py --hypothesis=english --schedule=warmup_cosine
"""

from __future__ import annotations

import argparse
import os
import re
import time

import membership_plateau  # bench/, beside this file: the same model and training step
import numpy as np

HYPOTHESES = ('english', 'lumic', 'twin')
KINDS = ('entailed', 'contradicted', 'unmentioned')
BATCH = 64


def renderer(hypothesis: str, shots: int):
  """(inputs text, target 'yes'|'no', the query's kind (an index into KINDS)) for a fresh item."""
  from promot_t5x_tasks import templates
  from promot_t5x_tasks.synthetic import world as world_lib

  world = world_lib.get_world(world_lib.WORLD_V2)
  values = {v.lower() for r in world.relations for v in r.values}
  relation_of = {v.lower(): r.name for r in world.relations for v in r.values}
  cities = {c.lower() for c in world.cities}  # Lumic keeps them; so does `twin`
  twins = {v: f'<extra_id_{20 + k}>' for k, v in enumerate(sorted(values - cities))}

  def question(item):
    premise, hyp, label = item.fields
    if hypothesis == 'lumic':
      hyp = world.to_lumic(hyp)
    elif hypothesis == 'twin':
      hyp = re.sub(r'[A-Za-z]+', lambda m: twins.get(m.group(0), m.group(0)), hyp)
    text = world_lib.YES_NO_INFERENCE.format(premise=premise,
                                             hypothesis=world_lib._lower_article(hyp.rstrip('.')))  # pylint: disable=protected-access
    return text, world_lib.YES_NO_LABELS[label], kind(item)

  def kind(item):
    premise, hyp, _ = item.fields
    value = next(w for w in world_lib.words_of(hyp.lower()) if w in values)
    mentioned = [w for w in world_lib.words_of(premise.lower()) if w in values]
    if value in mentioned:
      return 0
    return 1 if relation_of[value] in {relation_of[w] for w in mentioned} else 2

  def draw(rng):
    rendered = [question(world._inference_item('rte', rng)) for _ in range(shots + 1)]  # pylint: disable=protected-access
    (text, answer, k), demos = rendered[-1], [(t, a) for t, a, _ in rendered[:-1]]
    return templates.with_demonstrations(text, demos), answer, k

  return draw


def batches(seed: int, hypothesis: str, shots: int, length: int):
  """(inputs [B, length], targets [B, 2], labels [B] (1 = yes), kinds [B])."""
  from promot_t5x_tasks.synthetic import vocabulary

  vocab = vocabulary.get_vocabulary()
  yes, no = (vocab.encode(w) for w in ('yes', 'no'))
  if len(yes) != 1 or len(no) != 1:
    raise AssertionError(f"'yes' and 'no' must be one piece each, got {yes} and {no}.")
  draw, rng = renderer(hypothesis, shots), np.random.default_rng(seed)
  while True:
    x = np.zeros((BATCH, length), np.int32)
    t = np.zeros((BATCH, 2), np.int32)
    y, kinds = np.zeros(BATCH, bool), np.zeros(BATCH, np.int32)
    for i in range(BATCH):
      text, answer, kinds[i] = draw(rng)
      ids = vocab.encode(text)[-(length - 1):] + [1]  # EOS; long 1-shot inputs lose their start
      x[i, :len(ids)] = ids
      y[i] = answer == 'yes'
      t[i] = (yes if y[i] else no)[0], 1
    yield x, t, y, kinds, (yes[0], no[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--hypothesis', choices=HYPOTHESES, default='english')
  parser.add_argument('--shots', type=int, choices=(0, 1), default=0)
  membership_plateau.add_training_arguments(parser)
  parser.add_argument('--output', default=os.path.join(os.path.dirname(__file__), 'results',
                                                       'inference_format.jsonl'))
  args = parser.parse_args()
  length = 64 if args.shots == 0 else 128
  from promot_t5x_tasks.synthetic import vocabulary

  run = membership_plateau.ours(args, vocab_size=vocabulary.get_vocabulary().vocab_size)
  data, start, hits, kind_of = batches(args.seed, args.hypothesis, args.shots, length), time.time(), [], []
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  for s in range(1, args.steps + 1):
    x, t, y, kinds, (yes, no) = next(data)
    loss, first = run(x, t)
    right = (first[:, yes] > first[:, no]) == y
    hits.append(right)
    kind_of.append(kinds)
    if s % 100 == 0:
      last, last_kinds = np.concatenate(hits[-100:]), np.concatenate(kind_of[-100:])
      row = {'hypothesis': args.hypothesis, 'shots': args.shots, 'optimizer': args.optimizer,
             'learning_rate': args.learning_rate, 'schedule': args.schedule, 'seed': args.seed,
             'layers': args.layers, 'width': 32 * args.heads, 'step': s, 'loss': round(loss, 4),
             'accuracy_last_100_steps': round(float(last.mean()), 4),
             'accuracy_by_kind': {k: round(float(last[last_kinds == n].mean()), 4)
                                  for n, k in enumerate(KINDS)},
             'seconds': round(time.time() - start, 1)}
      membership_plateau.record(row, args.output)


if __name__ == '__main__':
  main()
