"""Does a miniature-sized T5 learn a bare content match? Ours against Hugging Face's.

The second synthetic world's inference skill ("does the hypothesis's value word
occur in the premise?") is a content match inside the encoder, and the base
model never picked it up in pretraining (docs/results.md, "The second world and
its gate"). This runs bare forms of that match (`--task`, default `search`: is
the last of 24 random tokens, vocabulary 64, among the 22 before the
separator?) and controls that take one part of it away: `aligned` (a match at a
fixed place), `control` (no match, only the query's place), `fixed` (no place,
only content), `half` and `marked` (the search in half the vocabulary, with the
query plain or written as its twin). Balanced labels, one answer token plus
EOS, the miniature's model size by default (3 + 3 layers, 128 wide, 4 heads of
32, gated GELU, untied logits; `--layers`, `--heads`, `--length`; a constant
rate unless `--schedule=warmup_cosine`). It trains our
`t5.Transformer` (JAX) or `transformers.T5ForConditionalGeneration` (torch, the
reference) from scratch and prints loss and answer accuracy every 100 steps;
each line also goes to bench/results/membership_plateau.jsonl.

  python bench/membership_plateau.py --impl=ours --optimizer=adam --learning_rate=1e-3
  python bench/membership_plateau.py --impl=hf --optimizer=adam --learning_rate=1e-3
  python bench/membership_plateau.py --task=marked
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

VOCAB, BATCH = 64, 64
TASKS = ('search', 'aligned', 'control', 'fixed', 'half', 'marked')  # defined in batches()
YES, NO, EOS, SEPARATOR, FIRST = 3, 4, 1, 5, 10
MID = (FIRST + VOCAB) // 2
HEAD_DIM = 32  # the width is heads x HEAD_DIM; the MLP is 4 x the width


def batches(seed: int, length: int, task: str = 'search'):
  """(inputs [B, L], targets [B, 2], labels [B]) with the query token last.

  'search': is the query among the length - 2 tokens before the separator?
  'aligned': is the query equal to the first token (a match at a fixed place)?
  'control': is the query in the lower half of the vocabulary (no match at all)?
  'fixed': is one fixed token (FIRST) among the others (a match by content, not by place)?
  'half': 'search' with every token from the lower half of the vocabulary;
  'marked': 'half' with the query written as its twin in the upper half (MID + i - FIRST
  for token i), so that the query is found by its content, not by its place.
  """
  rng = np.random.default_rng(seed)
  top = MID if task in ('half', 'marked') else VOCAB
  while True:
    x = rng.integers(FIRST, top, size=(BATCH, length))
    y = rng.integers(2, size=BATCH)
    for i in range(BATCH):
      q, body = x[i, -1], x[i, :-2]
      if task == 'control':
        q = x[i, -1] = rng.integers(FIRST, MID) if y[i] else rng.integers(MID, VOCAB)
      elif task == 'aligned':
        if y[i]:
          body[0] = q
        while not y[i] and body[0] == q:
          body[0] = rng.integers(FIRST, VOCAB)
      else:  # search, fixed, half, marked
        if task == 'fixed':
          q = FIRST
          while x[i, -1] == FIRST:
            x[i, -1] = rng.integers(FIRST + 1, VOCAB)
        if y[i] and q not in body:
          body[rng.integers(len(body))] = q
        while not y[i] and q in body:
          body[body == q] = rng.integers(FIRST, top, size=int((body == q).sum()))
        if task == 'marked':
          x[i, -1] = MID + q - FIRST
      x[i, -2] = SEPARATOR
    yield x, np.stack([np.where(y == 1, YES, NO), np.full(BATCH, EOS)], 1), y


def ours(args, vocab_size: int = VOCAB):
  """Our T5 from scratch: a `run(inputs, targets) -> (loss, first-step logits)` that trains one step.

  `args` gives `heads`, `layers`, `seed`, `optimizer`, `learning_rate`, `schedule`
  and `steps`; bench/inference_format.py trains the same model on the second
  world's questions (`vocab_size`: the miniature's vocabulary).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from promot_t5x import losses
  from promot_t5x.models import t5

  model = t5.Transformer(t5.T5Config(
      vocab_size=vocab_size, emb_dim=args.heads * HEAD_DIM, num_heads=args.heads, head_dim=HEAD_DIM,
      mlp_dim=4 * args.heads * HEAD_DIM, num_encoder_layers=args.layers,
      num_decoder_layers=args.layers, mlp_activations=('gelu', 'linear'),
      logits_via_embedding=False, relative_attention_num_buckets=32,
      relative_attention_max_distance=128))
  params = nn.unbox(t5.init_params(model, jax.random.PRNGKey(args.seed)))
  rate = args.learning_rate if args.schedule == 'constant' else optax.warmup_cosine_decay_schedule(
      0.0, args.learning_rate, warmup_steps=args.steps // 10, decay_steps=args.steps)
  opt = (optax.adam if args.optimizer == 'adam' else optax.adafactor)(rate)
  state = opt.init(params)

  @jax.jit
  def step(params, state, x, t):
    dec_in = jnp.concatenate([jnp.zeros_like(t[:, :1]), t[:, :1]], 1)

    def loss_fn(p):
      logits = model.apply({'params': p}, x, dec_in, t)
      total, _, count = losses.cross_entropy_with_logits(logits, t, (t > 0).astype(jnp.float32), 0.0, 0.0)
      return total / count, logits[:, 0]

    (loss, first), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, first

  def run(x, t):
    nonlocal params, state
    params, state, loss, first = step(params, state, jnp.asarray(x, jnp.int32), jnp.asarray(t, jnp.int32))
    return float(loss), np.asarray(first)

  return run


def hf(args):
  import torch
  from transformers import T5Config, T5ForConditionalGeneration

  torch.manual_seed(args.seed)
  torch.set_num_threads(1)
  model = T5ForConditionalGeneration(T5Config(
      vocab_size=VOCAB, d_model=args.heads * HEAD_DIM, d_kv=HEAD_DIM,
      d_ff=4 * args.heads * HEAD_DIM, num_layers=args.layers,
      num_decoder_layers=args.layers, num_heads=args.heads, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS))
  if args.optimizer != 'adam' or args.schedule != 'constant':
    raise SystemExit('--impl=hf runs with --optimizer=adam and a constant rate only.')
  opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)

  def run(x, t):
    out = model(input_ids=torch.tensor(x), labels=torch.tensor(t))  # mean over the 2 tokens
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    return out.loss.item(), out.logits[:, 0].detach().numpy()

  return run


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
  """The model's size and its training (`ours` reads them), shared with bench/inference_format.py."""
  parser.add_argument('--optimizer', choices=('adam', 'adafactor'), default='adam')
  parser.add_argument('--learning_rate', type=float, default=1e-3)
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--schedule', choices=('constant', 'warmup_cosine'), default='constant',
                      help='warmup_cosine: linear warmup over a tenth of the steps, cosine decay to 0 (ours only)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--layers', type=int, default=3, help='encoder and decoder layers each')
  parser.add_argument('--heads', type=int, default=4, help='heads of 32; the width is 32 x heads')


def record(row: dict, path: str) -> None:
  """Prints a progress row and appends it to the results file (JSON lines)."""
  print(json.dumps(row), flush=True)
  with open(path, 'a') as f:
    f.write(json.dumps(row) + '\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--impl', choices=('ours', 'hf'), default='ours')
  add_training_arguments(parser)
  parser.add_argument('--length', type=int, default=24,
                      help='tokens per input: the query last, a separator, length - 2 others')
  parser.add_argument('--task', choices=TASKS, default='search',
                      help='what the answer needs (see batches())')
  parser.add_argument('--output', default=os.path.join(os.path.dirname(__file__), 'results',
                                                       'membership_plateau.jsonl'))
  args = parser.parse_args()
  run = (ours if args.impl == 'ours' else hf)(args)
  data, start, hits = batches(args.seed, args.length, args.task), time.time(), []
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  for s in range(1, args.steps + 1):
    x, t, y = next(data)
    loss, first = run(x, t)
    hits.append(float(np.mean((first[:, YES] > first[:, NO]) == (y == 1))))
    if s % 100 == 0:
      row = {'impl': args.impl, 'optimizer': args.optimizer, 'learning_rate': args.learning_rate,
             'schedule': args.schedule,
             'seed': args.seed, 'task': args.task, 'length': args.length, 'layers': args.layers,
             'width': 32 * args.heads, 'step': s, 'loss': round(loss, 4),
             'accuracy_last_100_steps': round(float(np.mean(hits[-100:])), 4),
             'seconds': round(time.time() - start, 1)}
      record(row, args.output)


if __name__ == '__main__':
  main()
