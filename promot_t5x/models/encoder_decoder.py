"""The encoder-decoder model as the trainer and evaluator see it (T5X's role).

`EncoderDecoderModel` ties the flax module to its vocabulary and its loss:
  loss_fn(params, batch, dropout_rng) -> (loss, metrics)   training
  score_batch(params, batch)          -> [batch] log-likelihoods (rank classification)
  predict_batch(params, batch, ...)   -> decoded token ids (greedy / beam, cached)
  rank_classify(params, batch, labels) -> [batch] index of the most likely label

Batches are seqio `EncDecFeatureConverter` outputs:
  encoder_input_tokens  [batch, input_length]
  decoder_input_tokens  [batch, target_length]
  decoder_target_tokens [batch, target_length]
  decoder_loss_weights  [batch, target_length]
plus, when the run goes through a soft prompt, `prompt_index` [batch] (which
of `PromptConfig.names` each example uses). Without `prompt_index` the plain
model runs: that is how a prompt is "removed".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from promot_t5x import decoding, losses
from promot_t5x.models import t5

Batch = Mapping[str, jax.Array]
LOSS_NORMALIZING_CHOICES = ('NUM_REAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE', 'NONE')
DECODERS = ('greedy', 'beam')


@dataclasses.dataclass
class EncoderDecoderModel:
  """A T5 `Transformer` plus vocabulary and loss settings."""

  module: t5.Transformer
  vocabulary: Any = None  # seqio.Vocabulary (input and output share it).
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  # 'NUM_REAL_TARGET_TOKENS' (mean over real tokens), 'AVERAGE_PER_SEQUENCE'
  # (each sequence's mean, then the mean over sequences: a one-token answer weighs
  # as much as a 30-token span-corruption target), 'NONE' (sum), or a constant
  # divisor (T5X's fine-tuning gins use 233472 = 2048 * 114).
  loss_normalizing_factor: float | str = 'NUM_REAL_TARGET_TOKENS'

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}.')
    if isinstance(self.loss_normalizing_factor, str):
      if self.loss_normalizing_factor not in LOSS_NORMALIZING_CHOICES:
        raise ValueError(f'loss_normalizing_factor={self.loss_normalizing_factor!r}; use a '
                         f'number or one of {LOSS_NORMALIZING_CHOICES}.')
    elif self.loss_normalizing_factor <= 0:
      raise ValueError('loss_normalizing_factor must be positive.')

  @property
  def config(self) -> t5.T5Config:
    return self.module.config

  # -- parameters ------------------------------------------------------------
  def abstract_params(self) -> Any:
    """Boxed `ShapeDtypeStruct` tree (logical axes attached); allocates nothing."""
    return t5.abstract_params(self.module)

  def init_params(self, rng: jax.Array) -> Any:
    """Unboxed float32 parameters."""
    return nn.unbox(t5.init_params(self.module, rng))

  # -- training ----------------------------------------------------------------
  def logits(self, params: Any, batch: Batch, dropout_rng: jax.Array | None = None
             ) -> jax.Array:
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'], enable_dropout=dropout_rng is not None,
        prompt_index=batch.get('prompt_index'), rngs=rngs)

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: jax.Array | None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and summed metrics (`loss_sum`, `z_loss_sum`, `weight_sum`, `correct`)."""
    logits = self.logits(params, batch, dropout_rng)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
    if self.loss_normalizing_factor == 'AVERAGE_PER_SEQUENCE':
      weights = per_sequence_weights(weights, batch.get('decoder_segment_ids'))
    total, total_z, total_weight = losses.cross_entropy_with_logits(
        logits, targets, weights, self.label_smoothing, self.z_loss)
    if self.loss_normalizing_factor in ('NUM_REAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE'):
      # (per sequence, the weights sum to 1 per sequence: the divisor counts sequences)
      loss = total / jnp.maximum(total_weight, 1.0)
    elif self.loss_normalizing_factor == 'NONE':
      loss = total
    else:
      loss = total / self.loss_normalizing_factor
    correct = losses.weighted_argmax_hits(logits, targets, weights)
    metrics = {'loss_sum': total, 'z_loss_sum': total_z, 'weight_sum': total_weight,
               'correct': correct}
    return loss, metrics

  # -- evaluation --------------------------------------------------------------
  def score_batch(self, params: Any, batch: Batch) -> jax.Array:
    """[batch] log p(targets | inputs), summed over target tokens."""
    logits = self.logits(params, batch)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
    return losses.sequence_log_likelihood(logits, targets, weights)

  # -- decoding ----------------------------------------------------------------
  def predict_batch(self, params: Any, batch: Batch, decoder: str = 'greedy',
                    num_beams: int = 4, max_decode_length: int | None = None,
                    eos_id: int = 1, alpha: float = 0.6) -> jax.Array:
    """Decoded token ids `[batch, max_decode_length]` (int32).

    Encodes `batch['encoder_input_tokens']` once (through the soft prompt when
    `batch['prompt_index']` is given) and decodes with the key/value cache:
    `decoder='greedy'` or `'beam'` (width `num_beams`, brevity penalty
    `alpha`; the best beam is returned). EOS is kept in the output and every
    position after it is 0, which `seqio.Vocabulary.decode` handles as is.
    `max_decode_length` defaults to the width of `batch['decoder_target_tokens']`.
    The decode function is compiled once per setting and input shape.
    """
    tokens, _ = self.predict_batch_with_scores(
        params, batch, decoder=decoder, num_beams=num_beams,
        max_decode_length=max_decode_length, eos_id=eos_id, alpha=alpha)
    return tokens

  def predict_batch_with_scores(self, params: Any, batch: Batch, decoder: str = 'greedy',
                                num_beams: int = 4, max_decode_length: int | None = None,
                                eos_id: int = 1, alpha: float = 0.6,
                                return_all_beams: bool = False
                                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`predict_batch` plus scores.

    Returns `(tokens, aux)`. tokens: `[batch, L]`, or `[batch, num_beams, L]`
    (best first) for beam search with `return_all_beams`. aux (same leading
    shape): `log_probs` (summed token log-probabilities, EOS included),
    `lengths` (tokens including EOS) and `scores` (beam search:
    `log_probs / ((5 + lengths) / 6) ** alpha`; greedy: `log_probs`).
    """
    if decoder not in DECODERS:
      raise ValueError(f'decoder={decoder!r}; choose one of {DECODERS}.')
    if 'encoder_input_tokens' not in batch:
      raise ValueError('predict_batch needs batch["encoder_input_tokens"] [batch, length].')
    if max_decode_length is None:
      if 'decoder_target_tokens' not in batch:
        raise ValueError('Pass max_decode_length, or a batch with decoder_target_tokens '
                         '(its width is the default decode length).')
      max_decode_length = batch['decoder_target_tokens'].shape[1]
    if decoder == 'greedy':
      num_beams, alpha, return_all_beams = 1, 0.0, False
    fn = _compiled_decoder(self.module, decoder, int(num_beams), int(max_decode_length),
                           int(eos_id))
    out = fn(params, jnp.asarray(batch['encoder_input_tokens']), batch.get('prompt_index'),
             jnp.asarray(alpha, jnp.float32))
    if decoder == 'beam' and not return_all_beams:
      out = {name: value[:, 0] for name, value in out.items()}
    tokens = out.pop('tokens')
    return tokens, out

  def rank_classify(self, params: Any, batch: Batch,
                    label_token_ids: Sequence[Sequence[int]], eos_id: int = 1,
                    length_normalize: bool = False, return_scores: bool = False
                    ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Index `[batch]` of the label whose token ids are most likely as the target.

    Each label is scored as `score_batch` scores a target: the sum of token
    log-probabilities of `label + [EOS]` (EOS appended unless the label ends
    with it), as in T5X's rank classification. With `length_normalize` the sum
    is divided by the number of target tokens. The inputs are encoded once for
    all labels. `return_scores=True` also returns the `[batch, num_labels]`
    scores. `label_token_ids` come from e.g.
    `prompts.label_token_ids(['True', 'False'], vocabulary)`.
    """
    targets = _label_targets(label_token_ids, eos_id)
    fn = _compiled_label_scorer(self.module, bool(length_normalize))
    scores = fn(params, jnp.asarray(batch['encoder_input_tokens']), batch.get('prompt_index'),
                jnp.asarray(targets))
    best = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return (best, scores) if return_scores else best


# -----------------------------------------------------------------------------
# Decoding helpers (compiled once per module and setting).
# -----------------------------------------------------------------------------
def per_sequence_weights(weights: jax.Array, segment_ids: jax.Array | None = None
                         ) -> jax.Array:
  """Token weights rescaled so that each target sequence's weights sum to 1.

  T5X's `AVERAGE_PER_SEQUENCE`: the summed loss becomes a sum of per-sequence
  means. With packing (`segment_ids`, [batch, length], 0 = padding), each packed
  segment counts as one sequence.
  """
  weights = weights.astype(jnp.float32)
  if segment_ids is None:
    per_row = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.maximum(per_row, 1e-9)
  same = segment_ids[..., :, None] == segment_ids[..., None, :]
  per_token = jnp.einsum('bij,bj->bi', same.astype(jnp.float32), weights)
  return jnp.where(weights > 0, weights / jnp.maximum(per_token, 1e-9), 0.0)


def _is_shared_across_beams(path: tuple[str, ...]) -> bool:
  # Cross-attention keys/values depend only on the encoder output, so all
  # beams of an example share them: they stay out of the beam-search state.
  return 'encoder_decoder_attention' in path


def _split_cache(cache: Any) -> tuple[dict, dict]:
  """Flax cache -> (flat per-beam part, flat shared part)."""
  flat = traverse_util.flatten_dict(cache)
  per_beam = {k: v for k, v in flat.items() if not _is_shared_across_beams(k)}
  shared = {k: v for k, v in flat.items() if _is_shared_across_beams(k)}
  return per_beam, shared


@functools.lru_cache(maxsize=64)
def _compiled_decoder(module: t5.Transformer, decoder: str, num_beams: int,
                      max_decode_length: int, eos_id: int):
  """jit(params, encoder_input_tokens [B, L], prompt_index [B] | None, alpha) -> dict.

  `alpha` is traced, so sweeping the brevity penalty does not recompile.
  Scanned layers (`scan_layers`) decode through the unrolled module, their
  parameters sliced per layer once per call (`t5.unscan_params`): the cache
  and beam search keep their [batch, ...] layout.
  """
  scanned_config = module.config if module.config.scan_layers else None
  if scanned_config is not None:
    module = t5.Transformer(scanned_config.replace(scan_layers=False))
  decode = functools.partial(module.apply, method=t5.Transformer.decode,
                             max_decode_length=max_decode_length)

  def run(params, encoder_input_tokens, prompt_index, alpha):
    if scanned_config is not None:
      params = t5.unscan_params(params, scanned_config)
    batch_size = encoder_input_tokens.shape[0]
    encoded = module.apply({'params': params}, encoder_input_tokens,
                           prompt_index=prompt_index, method=t5.Transformer.encode)
    # 'prefill' creates the cache and computes cross-attention K/V once per
    # example; its logits are a by-product.
    _, variables = decode(
        {'params': params}, encoded, encoder_input_tokens,
        jnp.zeros((batch_size, 1), jnp.int32), prompt_index=prompt_index,
        decode_mode='prefill', mutable=['cache'])
    per_beam, shared = _split_cache(variables['cache'])
    rows = num_beams if decoder == 'beam' else 1
    shared = decoding.expand_beams(shared, rows)
    tokens_in = decoding.expand_beams(encoder_input_tokens, rows)
    # Transposed once here, read every step (see `Transformer.decode`).
    kernel_t = (None if module.config.logits_via_embedding
                else params['decoder']['logits_dense']['kernel'].T)
    prompt_in = None if prompt_index is None else decoding.expand_beams(prompt_index, rows)

    def step_fn(last_tokens, cache):
      full = traverse_util.unflatten_dict({**cache, **shared})
      # In 'step' mode cross-attention reads its K/V from the cache; `encoded`
      # is only consulted for shapes when a cache is created.
      logits, new_vars = decode(
          {'params': params, 'cache': full}, encoded, tokens_in, last_tokens[:, None],
          prompt_index=prompt_in, decode_mode='step', mutable=['cache'],
          logits_kernel_t=kernel_t)
      return logits[:, 0, :], _split_cache(new_vars['cache'])[0]

    if decoder == 'greedy':
      result = decoding.greedy_search(step_fn, per_beam, batch_size, max_decode_length,
                                      eos_id=eos_id)
      return {'tokens': result.tokens, 'scores': result.log_probs,
              'log_probs': result.log_probs, 'lengths': result.lengths}
    result = decoding.beam_search(step_fn, per_beam, batch_size, max_decode_length,
                                  num_beams=num_beams, alpha=alpha, eos_id=eos_id)
    return {'tokens': result.tokens, 'scores': result.scores,
            'log_probs': result.log_probs, 'lengths': result.lengths}

  return jax.jit(run)


def _label_targets(label_token_ids: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
  """Labels -> `[num_labels, max_len]` int32 targets, EOS appended, 0-padded."""
  if not label_token_ids:
    raise ValueError('rank_classify needs at least one label (label_token_ids is empty).')
  rows = []
  for i, ids in enumerate(label_token_ids):
    ids = [int(t) for t in ids]
    if not ids or any(t <= 0 for t in ids):
      raise ValueError(f'Label {i} has token ids {ids}: each label needs >= 1 id and no '
                       'pad (0) or negative ids; encode label strings with the vocabulary.')
    if ids[-1] != eos_id:
      ids.append(eos_id)
    rows.append(ids)
  targets = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, ids in enumerate(rows):
    targets[i, :len(ids)] = ids
  return targets


@functools.lru_cache(maxsize=16)
def _compiled_label_scorer(module: t5.Transformer, length_normalize: bool):
  """jit(params, encoder_input_tokens [B, L], prompt_index, targets [C, T]) -> [B, C]."""

  def run(params, encoder_input_tokens, prompt_index, targets):
    batch_size, num_labels = encoder_input_tokens.shape[0], targets.shape[0]
    encoded = module.apply({'params': params}, encoder_input_tokens,
                           prompt_index=prompt_index, method=t5.Transformer.encode)
    # Row b * C + c pairs example b with label c; the encoder ran once per example.
    repeat = functools.partial(jnp.repeat, repeats=num_labels, axis=0)
    label_targets = jnp.tile(targets, (batch_size, 1))
    # seqio's autoregressive inputs: the targets shifted right, starting at 0.
    label_inputs = jnp.pad(label_targets[:, :-1], ((0, 0), (1, 0)))
    logits = module.apply(
        {'params': params}, repeat(encoded), repeat(encoder_input_tokens), label_inputs,
        label_targets, prompt_index=None if prompt_index is None else repeat(prompt_index),
        method=t5.Transformer.decode)
    weights = (label_targets > 0).astype(jnp.float32)
    scores = losses.sequence_log_likelihood(logits, label_targets, weights)
    if length_normalize:
      scores = scores / jnp.sum(weights, axis=-1)
    return scores.reshape(batch_size, num_labels)

  return jax.jit(run)
