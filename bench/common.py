"""What every benchmark shares: the T5 configuration, synthetic batches, FLOP counts.

Both sides (our JAX trainer and the Hugging Face + PEFT peer) build the same
architecture from `BenchConfig` and see the same token ids: full-length
rows (no padding), so every position is real work.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
from typing import Any

import numpy as np

STAGES = ('prompt_tuning', 'promot_stage2', 'finetune')
STAGE_LABELS = {'prompt_tuning': 'stage 1 (prompt tuning)',
                'promot_stage2': 'stage 2 (ProMoT)',
                'finetune': 'fine-tuning'}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """A T5.1.1-style model (gated GELU, untied logits) and the benchmark's shapes.

  Training: batch_size rows of input_length input and target_length target
  tokens; stages 1 and 2 prepend prompt_length soft-prompt positions.
  Decoding: decode_batch rows of input_length inputs, decode_length new tokens.
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  batch_size: int = 16
  input_length: int = 128
  target_length: int = 32
  prompt_length: int = 20
  decode_batch: int = 8
  decode_length: int = 32
  num_beams: int = 4
  train_steps: int = 8
  warmup_steps: int = 2
  decode_repeats: int = 3
  seed: int = 0

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> BenchConfig:
    return cls(**json.loads(text))

  def describe(self) -> str:
    return (f'T5.1.1-style, emb {self.emb_dim}, {self.num_heads} heads x {self.head_dim}, '
            f'gated-GELU MLP {self.mlp_dim}, {self.num_encoder_layers}+'
            f'{self.num_decoder_layers} layers, vocab {self.vocab_size}, untied logits; '
            f'train batch {self.batch_size} x (inputs {self.input_length}, targets '
            f'{self.target_length}), prompt {self.prompt_length}; decode batch '
            f'{self.decode_batch} x inputs {self.input_length}, {self.decode_length} new tokens')


def uses_prompt(stage: str) -> bool:
  return stage in ('prompt_tuning', 'promot_stage2')


def train_batch(cfg: BenchConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """A seqio-style batch (T5 conventions: 0 = pad/BOS, 1 = EOS), no padding."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, cfg.vocab_size, (cfg.batch_size, cfg.input_length), dtype=np.int32)
  tgt = rng.integers(2, cfg.vocab_size, (cfg.batch_size, cfg.target_length), dtype=np.int32)
  dec = np.concatenate([np.zeros((cfg.batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
          'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones_like(tgt, np.float32)}


def decode_inputs(cfg: BenchConfig, seed: int = 1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(2, cfg.vocab_size, (cfg.decode_batch, cfg.input_length), dtype=np.int32)


def train_tokens(cfg: BenchConfig) -> int:
  """Real tokens per training step: inputs + targets (the prompt is not data)."""
  return cfg.batch_size * (cfg.input_length + cfg.target_length)


def forward_flops(cfg: BenchConfig, with_prompt: bool) -> dict[str, float]:
  """Forward FLOPs of one batch (2 per multiply-add), split by kind.

  weights: matmuls with a parameter (projections, MLP, logits);
  attention: the score and context matmuls (activation x activation);
  dec0_*: the parts of decoder layer 0 that do not depend on the encoder (so
    not on a prompt): its self-attention block (weights, attention) and its
    cross-attention query projection.
  Elementwise work (norms, GELU, softmax, the loss) is not counted, as usual
  for MFU.
  """
  d, hd, ff, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  b, lt = cfg.batch_size, cfg.target_length
  le = cfg.input_length + (cfg.prompt_length if with_prompt else 0)
  enc_tok, dec_tok = b * le, b * lt
  mlp = 3 * d * ff  # wi_0, wi_1, wo

  def scores_and_context(q_len: int, k_len: int) -> int:
    return 2 * 2 * b * cfg.num_heads * q_len * k_len * cfg.head_dim

  enc_w = cfg.num_encoder_layers * 2 * enc_tok * (4 * d * hd + mlp)
  enc_a = cfg.num_encoder_layers * scores_and_context(le, le)
  # Decoder: self-attention (q,k,v,o) and cross q,o on decoder tokens, cross
  # k,v on the encoder output, the MLP; then the logits.
  dec_w = cfg.num_decoder_layers * (2 * dec_tok * (4 * d * hd + 2 * d * hd + mlp)
                                    + 2 * enc_tok * 2 * d * hd)
  dec_a = cfg.num_decoder_layers * (scores_and_context(lt, lt) + scores_and_context(lt, le))
  logits = 2 * dec_tok * d * v
  return {'weights': float(enc_w + dec_w + logits), 'attention': float(enc_a + dec_a),
          'dec0_self_weights': float(2 * dec_tok * 4 * d * hd),
          'dec0_self_attention': float(scores_and_context(lt, lt)),
          'dec0_cross_query': float(2 * dec_tok * d * hd),
          'dec0_cross_attention': float(scores_and_context(lt, le))}


def train_flops(cfg: BenchConfig, stage: str) -> float:
  """FLOPs one training step needs (model FLOPs, no rematerialization).

  Full training (stage 2, fine-tuning): 3x forward. The backward pass of a
  matmul y = x W is two matmuls of the same size: dx = dy W^T (to keep going
  down) and dW = x^T dy (the weight gradient); attention's score/context
  matmuls likewise give two each.

  Stage 1 (prompt tuning) needs the gradient only at the prompt, which sits
  under every layer: the backward pass still runs through the activations of
  everything that depends on the prompt (dx), but computes no weight gradient
  (dW): 2x forward for weight matmuls, 3x for attention matmuls (both
  operands are activations). What does not depend on the prompt needs no
  backward at all: decoder layer 0's self-attention block and its
  cross-attention query (1x), and of that layer's cross-attention matmuls
  only the key side (2.5x: dQ is not needed).
  """
  f = forward_flops(cfg, uses_prompt(stage))
  if stage != 'prompt_tuning':
    return 3 * (f['weights'] + f['attention'])
  return (2 * f['weights'] + 3 * f['attention'] - f['dec0_self_weights']
          - 2 * f['dec0_self_attention'] - f['dec0_cross_query']
          - 0.5 * f['dec0_cross_attention'])


def dense_gemms(cfg: BenchConfig, stage: str) -> list[dict[str, Any]]:
  """The weight matmuls of one training step, grouped by shape.

  Each entry: `m` rows (tokens), `k` in, `n` out features, `count` layers of
  that shape, and the `passes` the step runs for them: 'fwd' (y = x W),
  'dx' (dy W^T) and 'dw' (x^T dy), each 2*m*k*n FLOPs. What `train_flops`
  counts for the weights, matmul by matmul: stage 1 has no 'dw', and decoder
  layer 0's self-attention and cross-attention query, which do not depend on
  the prompt, no 'dx' either. Attention's activation x activation matmuls are
  not included.
  """
  d, hd, ff, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  enc = cfg.batch_size * (cfg.input_length + (cfg.prompt_length if uses_prompt(stage) else 0))
  dec = cfg.batch_size * cfg.target_length
  backward = ('fwd', 'dx') if stage == 'prompt_tuning' else ('fwd', 'dx', 'dw')
  le, ld = cfg.num_encoder_layers, cfg.num_decoder_layers
  # Stage 1: decoder layer 0's self q, k, v, o and cross q run forward only.
  fwd_only = 1 if stage == 'prompt_tuning' else 0
  layers = [  # (what, m, k, n, count, passes)
      ('encoder q, k, v', enc, d, hd, 3 * le, backward),
      ('encoder attention out', enc, hd, d, le, backward),
      ('encoder wi_0, wi_1', enc, d, ff, 2 * le, backward),
      ('encoder wo', enc, ff, d, le, backward),
      ('decoder cross-attention k, v', enc, d, hd, 2 * ld, backward),
      ('decoder self-attention q, k, v, cross-attention q', dec, d, hd,
       4 * (ld - fwd_only), backward),
      ('decoder self- and cross-attention out', dec, hd, d, 2 * ld - fwd_only, backward),
      ('decoder wi_0, wi_1', dec, d, ff, 2 * ld, backward),
      ('decoder wo', dec, ff, d, ld, backward),
      ('logits', dec, d, v, 1, backward),
      ('decoder layer 0 self-attention q, k, v, cross-attention q', dec, d, hd, 4 * fwd_only,
       ('fwd',)),
      ('decoder layer 0 self-attention out', dec, hd, d, fwd_only, ('fwd',)),
  ]
  return [dict(what=w, m=m, k=k, n=n, count=c, passes=p) for w, m, k, n, c, p in layers if c]


def timed_calls(fn, repeats: int, warmup: int = 0, usage: dict | None = None
                ) -> tuple[Any, float, list[float]]:
  """(last result, seconds of the first call, seconds of each of `repeats` timed calls).

  The first call (compilation, caches) is timed alone; `warmup` more calls run
  untimed before the timed ones. `fn` must return only once its work is done.
  `usage`, if given, receives the process's CPU seconds (user + system) and
  minor page faults per timed call (getrusage, all threads).
  """
  import resource
  import time

  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  for _ in range(warmup):
    out = fn()
  times = []
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  if usage is not None and repeats:
    usage['cpu_seconds_per_step'] = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / repeats
    usage['minor_faults_per_step'] = (r1.ru_minflt - r0.ru_minflt) / repeats
  return out, first, times


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity, e.g. under `taskset`)."""
  import os

  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def median(values: list[float]) -> float:
  """The middle value; the mean of the two middle ones for an even count."""
  import statistics

  return statistics.median(values)


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(result: dict[str, Any]) -> None:
  """Children print one JSON line (the last line of stdout) for run_all.py."""
  result = dict(result, peak_rss_bytes=peak_rss_bytes())
  sys.stdout.write(json.dumps(result) + '\n')
  sys.stdout.flush()
