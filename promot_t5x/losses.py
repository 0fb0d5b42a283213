"""Cross-entropy with label smoothing and z-loss, as T5X computes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_with_logits(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                              label_smoothing: float = 0.0, z_loss: float = 0.0
                              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Token-level loss summed over the batch.

  Args:
    logits: [batch, length, vocab] float32.
    targets: [batch, length] int token ids.
    weights: [batch, length] 0/1 loss weights (0 on padding).
    label_smoothing: mass spread uniformly over the other vocab entries.
    z_loss: coefficient of log(Z)^2, which keeps the softmax normalizer near 1.

  Returns:
    (total_loss, total_z_loss, total_weight), each a float32 scalar summed over
    tokens. Label smoothing subtracts the entropy of the smoothed target
    distribution, so a perfect model scores 0 as in T5X.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}: it is the '
                     'probability mass moved off the target token')
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizing = -(confidence * jnp.log(confidence)
                  + (vocab - 1) * low * jnp.log(low + 1e-20)) if label_smoothing else 0.0
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    mean_lp = jnp.mean(log_probs, axis=-1)
    # Smoothed targets: `confidence` on the target, `low` on every other id.
    loss = -(confidence - low) * target_lp - low * vocab * mean_lp - normalizing
  else:
    loss = -target_lp
  zl = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  return (jnp.sum((loss + zl) * weights), jnp.sum(zl * weights), jnp.sum(weights))


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array, weights: jax.Array
                            ) -> jax.Array:
  """[batch] sum of log p(target token) over weighted positions (no smoothing)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(target_lp * weights.astype(jnp.float32), axis=-1)


def weighted_argmax_hits(logits: jax.Array, targets: jax.Array, weights: jax.Array
                         ) -> jax.Array:
  """Sum of `weights` where `argmax(logits, -1) == targets` (first index wins ties).

  Same value as `jnp.sum((jnp.argmax(logits, -1) == targets) * weights)` for
  finite logits, without the arg-max: XLA:CPU lowers an arg-max to a
  (value, index) reduction that costs 23-37 ms of op time per step on the
  bench's [16, 32, 32128] logits (`bench/profile_step.py`), while plain max
  reductions are cheap and the overall maximum is the one `logsumexp` already
  computes. The target
  is the arg-max iff its logit is the maximum and every earlier id's logit is
  strictly smaller. (With NaN logits the arg-max convention differs; the
  trainer stops on a NaN loss first.)
  """
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  before_max = jnp.max(jnp.where(ids < targets[..., None], logits, -jnp.inf), axis=-1)
  hit = (target_logit >= jnp.max(logits, axis=-1)) & (before_max < target_logit)
  return jnp.sum(jnp.where(hit, weights.astype(jnp.float32), 0.0))
