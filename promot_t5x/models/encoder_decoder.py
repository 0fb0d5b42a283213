"""The encoder-decoder model as the trainer and evaluator see it (T5X's role).

`EncoderDecoderModel` ties the flax module to its vocabulary and its loss:
  loss_fn(params, batch, dropout_rng) -> (loss, metrics)   training
  score_batch(params, batch)          -> [batch] log-likelihoods (rank classification)
  predict_batch(params, batch, ...)   -> decoded token ids (greedy / beam, cached)

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
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from promot_t5x import losses
from promot_t5x.models import t5

Batch = Mapping[str, jax.Array]
LOSS_NORMALIZING_CHOICES = ('NUM_REAL_TARGET_TOKENS', 'NONE')


@dataclasses.dataclass
class EncoderDecoderModel:
  """A T5 `Transformer` plus vocabulary and loss settings."""

  module: t5.Transformer
  vocabulary: Any = None  # seqio.Vocabulary (input and output share it).
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  # 'NUM_REAL_TARGET_TOKENS' (mean over real tokens), 'NONE' (sum), or a
  # constant divisor (T5X's fine-tuning gins use 233472 = 2048 * 114).
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
    total, total_z, total_weight = losses.cross_entropy_with_logits(
        logits, targets, weights, self.label_smoothing, self.z_loss)
    if self.loss_normalizing_factor == 'NUM_REAL_TARGET_TOKENS':
      loss = total / jnp.maximum(total_weight, 1.0)
    elif self.loss_normalizing_factor == 'NONE':
      loss = total
    else:
      loss = total / self.loss_normalizing_factor
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
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
