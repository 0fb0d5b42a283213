"""Greedy and beam search over a cached autoregressive decoder.

The search functions know nothing about the model. They drive a *step
function*

  step_fn(tokens [N] int32, cache) -> (logits [N, vocab] float32, new_cache)

that consumes the previous token of each row and returns the next-token logits,
updating its key/value cache. `EncoderDecoderModel.predict_batch` builds one
from the T5 decoder's `decode_mode='step'`; tests build toy ones from tables.
Both searches run as a single `jax.lax.while_loop` (jit-friendly, static
shapes) that stops early once every row has produced EOS.

Conventions (T5's):
  * decoding starts from `bos_id` = 0 (T5's start token is the pad id);
  * outputs are `[batch, max_decode_length]` token ids; EOS, when produced, is
    kept and every position after it is 0. seqio's `Vocabulary.decode` cuts at
    the first EOS and drops pad/EOS pieces, so the ids can be passed to it
    as they are;
  * a hypothesis' length counts its EOS; one that reaches `max_decode_length`
    without EOS is returned truncated, with length `max_decode_length`;
  * token 0 is not forbidden (as in T5X): a model may emit it like any other
    token, though trained T5 models practically never do.

Beam search scores a hypothesis as T5X's `beam_search` does,
`log p(y) / brevity_penalty(len(y))` with
`brevity_penalty(n) = ((5 + n) / 6) ** alpha` (alpha 0.6 by default; 0 means
plain log-likelihood). The search keeps `k` slots. Each step, a live slot
offers its `vocab` one-token extensions (an extension ending in EOS is
finished) and a finished slot offers only itself, unchanged: finished
hypotheses are never extended. The `k` candidates with the best penalized
score fill the slots. A finished hypothesis pushed out of the slots goes to a
pool of the `k` best finished ones (it is dropped only once `k` better ones
exist); the result is the best `k` of slots and pool. The loop ends when no slot is live
or at `max_decode_length` (live slots are then returned truncated).
Consequences, all tested:
  * width 1 is exactly greedy search (one slot, candidates of equal length);
  * with enough slots for every candidate of every step the search is
    exhaustive, so it returns the exact optimum of the penalized score;
  * EOS ends a hypothesis for good; everything after it is 0.
T5X's search differs: it always extends `k` live beams (EOS extensions go
straight to the finished pool) and stops when no live beam can still beat the
worst finished one, so its width 1 is not greedy. Beams in the outputs are
sorted best first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
StepFn = Callable[[Array, PyTree], tuple[Array, PyTree]]

NEG_INF = -jnp.inf


class GreedyResult(NamedTuple):
  """Output of `greedy_search`.

  tokens:    [batch, max_decode_length] int32; EOS kept, 0 after it.
  log_probs: [batch] float32, sum of log p(token) over the returned tokens
             (EOS included).
  lengths:   [batch] int32, number of returned tokens (EOS included).
  """

  tokens: Array
  log_probs: Array
  lengths: Array


class BeamSearchResult(NamedTuple):
  """Output of `beam_search`, beams sorted best first.

  tokens:    [batch, num_beams, max_decode_length] int32; EOS kept, 0 after it.
  scores:    [batch, num_beams] float32, `log_probs / brevity_penalty(lengths)`;
             -inf for slots that never held a hypothesis (tiny vocabularies).
  log_probs: [batch, num_beams] float32, summed token log-probabilities.
  lengths:   [batch, num_beams] int32, tokens in each hypothesis (EOS included).
  finished:  [batch, num_beams] bool, whether the hypothesis ended with EOS.
  """

  tokens: Array
  scores: Array
  log_probs: Array
  lengths: Array
  finished: Array


def brevity_penalty(length: Array | int, alpha: float | Array) -> Array:
  """T5X's length penalty `((5 + length) / 6) ** alpha` (1 when alpha is 0)."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def length_penalized_score(log_probs: Array, lengths: Array, alpha: float | Array) -> Array:
  """Beam-search score of hypotheses: `log_probs / brevity_penalty(lengths)`."""
  return log_probs / brevity_penalty(lengths, alpha)


# -----------------------------------------------------------------------------
# Beam bookkeeping: rows are laid out example-major, `row = example * k + beam`.
# -----------------------------------------------------------------------------
def expand_beams(tree: PyTree, num_beams: int) -> PyTree:
  """Repeats each row `num_beams` times: leaves `[batch, ...]` -> `[batch * k, ...]`.

  Scalar leaves (e.g. the cache's decoding index, shared by all rows) are left
  as they are.
  """
  def expand(x):
    x = jnp.asarray(x)
    return x if x.ndim == 0 else jnp.repeat(x, num_beams, axis=0)
  return jax.tree_util.tree_map(expand, tree)


def gather_beams(tree: PyTree, parents: Array) -> PyTree:
  """Reorders beams within each example.

  Args:
    tree: leaves `[batch * k, ...]` (scalars are left alone).
    parents: `[batch, k]` int, the old beam each new beam continues.

  Returns:
    The tree with row `b * k + j` taken from row `b * k + parents[b, j]`.
  """
  batch, k = parents.shape

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape(batch, k, *x.shape[1:])
    # vmap over the example axis: a gather with a batch dimension, which the
    # SPMD partitioner keeps local when the batch is sharded.
    x = jax.vmap(lambda rows, idx: jnp.take(rows, idx, axis=0))(x, parents)
    return x.reshape(batch * k, *x.shape[2:])
  return jax.tree_util.tree_map(gather, tree)


def _check_args(batch_size: int, max_decode_length: int, num_beams: int = 1) -> None:
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if max_decode_length <= 0:
    raise ValueError(f'max_decode_length must be positive, got {max_decode_length}.')
  if num_beams <= 0:
    raise ValueError(f'num_beams must be positive, got {num_beams}.')


# -----------------------------------------------------------------------------
# Greedy search.
# -----------------------------------------------------------------------------
def greedy_search(step_fn: StepFn, cache: PyTree, batch_size: int,
                  max_decode_length: int, eos_id: int = 1, bos_id: int = 0
                  ) -> GreedyResult:
  """Arg-max decoding of `batch_size` rows until EOS or `max_decode_length`.

  Args:
    step_fn: `(tokens [batch], cache) -> (logits [batch, vocab], cache)`.
    cache: the step function's initial state (its rows are the batch).
    batch_size: rows decoded together.
    max_decode_length: most tokens produced per row (EOS included).
    eos_id: end-of-sequence id (1 in T5 vocabularies); a negative id never
      matches, which forces full-length decoding (benchmarks).
    bos_id: the first decoder input (0 in T5).

  Returns:
    `GreedyResult` (tokens `[batch, max_decode_length]`, log-probs, lengths).
  """
  _check_args(batch_size, max_decode_length)

  def cond(state):
    i, _, _, done, _, _, _ = state
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, tokens, last, done, log_probs, lengths, cache = state
    logits, cache = step_fn(last, cache)
    step_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # Arg-max of the log-probabilities (not the logits) so that ties break
    # exactly as in width-1 beam search.
    next_token = jnp.argmax(step_log_probs, axis=-1).astype(jnp.int32)
    token_lp = jnp.take_along_axis(step_log_probs, next_token[:, None], axis=-1)[:, 0]
    next_token = jnp.where(done, 0, next_token)
    log_probs = log_probs + jnp.where(done, 0.0, token_lp)
    lengths = lengths + (~done).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice(tokens, next_token[:, None], (0, i))
    done = done | (next_token == eos_id)
    return i + 1, tokens, next_token, done, log_probs, lengths, cache

  state = (jnp.array(0, jnp.int32),
           jnp.zeros((batch_size, max_decode_length), jnp.int32),
           jnp.full((batch_size,), bos_id, jnp.int32),
           jnp.zeros((batch_size,), bool),
           jnp.zeros((batch_size,), jnp.float32),
           jnp.zeros((batch_size,), jnp.int32),
           cache)
  _, tokens, _, _, log_probs, lengths, _ = jax.lax.while_loop(cond, body, state)
  return GreedyResult(tokens, log_probs, lengths)


# -----------------------------------------------------------------------------
# Beam search.
# -----------------------------------------------------------------------------
def beam_search(step_fn: StepFn, cache: PyTree, batch_size: int,
                max_decode_length: int, num_beams: int = 4, alpha: float | Array = 0.6,
                eos_id: int = 1, bos_id: int = 0) -> BeamSearchResult:
  """Beam search with T5X's brevity penalty; see the module docstring.

  Args:
    step_fn: `(tokens [batch * k], cache) -> (logits [batch * k, vocab], cache)`.
      Rows are example-major (`example * k + beam`).
    cache: the step function's state for `batch_size` rows. Leaves with a
      leading batch axis are expanded to `batch * k` rows here and reordered
      whenever beams are; scalar leaves are shared. State that is the same for
      every beam of an example (e.g. cross-attention keys/values) is better
      kept out of `cache` (close over it, expanded with `expand_beams`): then
      it is neither carried through the loop nor gathered.
    batch_size: examples decoded together.
    max_decode_length: most tokens per hypothesis (EOS included).
    num_beams: beam width k.
    alpha: brevity-penalty exponent (T5X's default 0.6; 0 ranks by plain
      log-likelihood); may be a traced scalar.
    eos_id: end-of-sequence id (1 in T5 vocabularies).
    bos_id: the first decoder input (0 in T5).

  Returns:
    `BeamSearchResult` with `[batch, k, ...]` arrays, best beam first.
  """
  _check_args(batch_size, max_decode_length, num_beams)
  k = num_beams
  take = jax.vmap(lambda x, idx: jnp.take(x, idx, axis=0))   # per-example gather

  def score(log_probs, lengths):
    return length_penalized_score(log_probs, jnp.maximum(lengths, 1), alpha)

  def best_k(hypotheses, scores):
    """Top k (best first) of `[batch, n, ...]` hypotheses by `[batch, n]` scores.

    Entries chosen with score -inf come back empty (log-prob -inf, unfinished).
    """
    top_scores, index = jax.lax.top_k(scores, k)
    best = jax.tree_util.tree_map(lambda x: take(x, index), hypotheses)
    valid = top_scores > NEG_INF
    best['log_probs'] = jnp.where(valid, best['log_probs'], NEG_INF)
    best['finished'] = valid & best['finished']
    return best

  def cond(state):
    i, slots, _, _, _ = state
    # Empty slots (-inf, tiny vocabularies) cannot become anything.
    live = ~slots['finished'] & (slots['log_probs'] > NEG_INF)
    return (i < max_decode_length) & jnp.any(live)

  def body(state):
    i, slots, pool, last, cache = state
    logits, cache = step_fn(last, cache)
    step_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab = step_log_probs.shape[-1]
    step_log_probs = step_log_probs.reshape(batch_size, k, vocab)
    finished, log_probs, lengths = slots['finished'], slots['log_probs'], slots['lengths']

    # Candidates [batch, k * vocab]: a live slot extends by any token; a
    # finished slot has one candidate, itself (token 0 appended).
    extended = (log_probs[..., None] + step_log_probs).reshape(batch_size, k * vocab)
    extended_score = (extended.reshape(batch_size, k, vocab)
                      / brevity_penalty(lengths + 1, alpha)[..., None])
    stay_score = jnp.where(jnp.arange(vocab) == 0, score(log_probs, lengths)[..., None],
                           NEG_INF)
    candidate_score = jnp.where(finished[..., None], stay_score, extended_score)
    chosen_score, flat_index = jax.lax.top_k(
        candidate_score.reshape(batch_size, k * vocab), k)
    parents = flat_index // vocab                                   # [batch, k]
    tokens = (flat_index % vocab).astype(jnp.int32)                 # [batch, k]
    # With fewer real candidates than slots top_k also returns -inf ones:
    # they leave the slot empty.
    valid = chosen_score > NEG_INF
    parent_finished = take(finished, parents)
    tokens = jnp.where(parent_finished, 0, tokens)
    new_log_probs = jnp.where(parent_finished, take(log_probs, parents),
                              jnp.take_along_axis(extended, flat_index, axis=1))
    new_slots = {
        'tokens': jax.lax.dynamic_update_slice(take(slots['tokens'], parents),
                                               tokens[..., None], (0, 0, i)),
        'log_probs': jnp.where(valid, new_log_probs, NEG_INF),
        'lengths': take(lengths, parents) + (~parent_finished).astype(jnp.int32),
        'finished': valid & (parent_finished | (tokens == eos_id)),
    }
    # Finished slots whose "stay" candidate lost its place move to the pool.
    stay_index = jnp.arange(k) * vocab                              # [k]
    kept = jnp.any(flat_index[:, None, :] == stay_index[None, :, None], axis=-1)
    displaced = finished & ~kept
    pool = best_k(
        jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), pool, slots),
        jnp.concatenate([score(pool['log_probs'], pool['lengths']),
                         jnp.where(displaced, score(log_probs, lengths), NEG_INF)], axis=1))
    return i + 1, new_slots, pool, tokens.reshape(-1), gather_beams(cache, parents)

  def empty(first_log_prob):
    # Only slot 0 starts alive, so the first step does not fill the slots
    # with k copies of the same token.
    log_probs = jnp.full((batch_size, k), NEG_INF, jnp.float32)
    return {'tokens': jnp.zeros((batch_size, k, max_decode_length), jnp.int32),
            'log_probs': log_probs.at[:, 0].set(first_log_prob),
            'lengths': jnp.zeros((batch_size, k), jnp.int32),
            'finished': jnp.zeros((batch_size, k), bool)}

  state = (jnp.array(0, jnp.int32), empty(0.0), empty(NEG_INF),
           jnp.full((batch_size * k,), bos_id, jnp.int32), expand_beams(cache, k))
  _, slots, pool, _, _ = jax.lax.while_loop(cond, body, state)

  both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), slots, pool)
  both_scores = score(both['log_probs'], both['lengths'])
  best = best_k({**both, 'scores': both_scores}, both_scores)
  return BeamSearchResult(tokens=best['tokens'], scores=best['scores'],
                          log_probs=best['log_probs'], lengths=best['lengths'],
                          finished=best['finished'])
