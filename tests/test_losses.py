"""The loss (promot_t5x/losses.py) against its definition, and its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import losses


def _inputs(seed=0, batch=3, length=5, vocab=11):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 3
  targets = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
  weights = (rng.random((batch, length)) > 0.3).astype(np.float32)
  return logits, targets, weights


def _numpy_losses(logits, targets, weights, label_smoothing, z_loss):
  """The T5X definition, written out in float64 numpy."""
  vocab = logits.shape[-1]
  x = logits.astype(np.float64)
  log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
  log_probs = x - log_z[..., None]
  conf, low = 1 - label_smoothing, label_smoothing / (vocab - 1)
  soft = np.full(x.shape, low)
  np.put_along_axis(soft, targets[..., None], conf, axis=-1)
  entropy = -(conf * np.log(conf) + (vocab - 1) * low * np.log(low + 1e-20)) if label_smoothing else 0
  ce = -(soft * log_probs).sum(-1) - entropy
  zl = z_loss * log_z ** 2
  return ((ce + zl) * weights).sum(), (zl * weights).sum(), weights.sum()


@pytest.mark.parametrize('label_smoothing,z_loss', [(0.0, 0.0), (0.0, 1e-4), (0.1, 1e-2)])
def test_values_match_the_definition(label_smoothing, z_loss):
  logits, targets, weights = _inputs()
  got = losses.cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets),
                                         jnp.asarray(weights), label_smoothing, z_loss)
  want = _numpy_losses(logits, targets, weights, label_smoothing, z_loss)
  np.testing.assert_allclose([float(g) for g in got], want, rtol=1e-5)


def test_gradient_under_jit_and_grad():
  logits, targets, weights = (jnp.asarray(a) for a in _inputs(seed=2))
  f = lambda lg: losses.cross_entropy_with_logits(lg, targets, weights, 0.0, 1e-4)[0]
  g = jax.jit(jax.grad(f))(logits)
  # Finite difference on the target logit of a weighted token (gradient p - 1).
  b, t = map(int, np.argwhere(np.asarray(weights) == 1)[0])
  v = int(targets[b, t])
  eps = 1e-2
  fd = (f(logits.at[b, t, v].add(eps)) - f(logits.at[b, t, v].add(-eps))) / (2 * eps)
  assert float(g[b, t, v]) < -0.01
  np.testing.assert_allclose(g[b, t, v], fd, rtol=1e-2)


def test_bad_label_smoothing_is_named():
  logits, targets, weights = _inputs()
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.cross_entropy_with_logits(logits, targets, weights, label_smoothing=1.0)


def test_weighted_argmax_hits_is_numpy_argmax_accuracy_with_first_index_ties():
  logits, targets, weights = _inputs(seed=3, batch=4, length=6, vocab=9)
  # Make about half the targets the arg-max so both outcomes occur.
  rows = np.random.default_rng(4).random(targets.shape) < 0.5
  targets = np.where(rows, logits.argmax(-1), targets).astype(np.int32)
  expected = float(((logits.argmax(-1) == targets) * weights).sum())
  assert 0 < expected < weights.sum()
  got = float(jax.jit(losses.weighted_argmax_hits)(logits, targets, weights))
  assert got == expected
  # Ties: numpy's arg-max takes the first maximal id, and so must we.
  tied = np.zeros((1, 4, 5), np.float32)
  tied[0, 1, [2, 4]] = 1.0          # position 1: ids 2 and 4 share the max
  tie_targets = np.array([[0, 4, 3, 2]], np.int32)
  ones = np.ones((1, 4), np.float32)
  # position 0: all equal, target 0 wins; 1: 4 loses to 2; 2, 3: all zero, target != 0 loses.
  assert float(losses.weighted_argmax_hits(tied, tie_targets, ones)) == \
      float((tied.argmax(-1) == tie_targets).sum()) == 1.0


def test_average_per_sequence_weighs_every_sequence_the_same():
  """T5X's AVERAGE_PER_SEQUENCE: the loss is the mean over sequences of each one's token mean."""
  from promot_t5x.models import encoder_decoder

  logits, targets, weights = _inputs(seed=3, batch=4, length=6)
  weights[0, :] = 0
  weights[0, 0] = 1  # a one-token sequence next to longer ones
  w = encoder_decoder.per_sequence_weights(jnp.asarray(weights))
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)
  token_total, _, token_count = _numpy_losses(logits, targets, weights, 0.0, 0.0)
  rows = [_numpy_losses(logits[i:i + 1], targets[i:i + 1], weights[i:i + 1], 0.0, 0.0)
          for i in range(4)]
  want = np.mean([total / count for total, _, count in rows])
  total, _, count = losses.cross_entropy_with_logits(
      jnp.asarray(logits), jnp.asarray(targets), w, 0.0, 0.0)
  np.testing.assert_allclose(float(total / count), want, rtol=1e-5)
  assert abs(float(total / count) - token_total / token_count) > 1e-3  # not the token mean

  # Packed rows: each segment is one sequence.
  seg = np.array([[1, 1, 2, 2, 2, 0]] * 4, np.int32)
  wp = np.asarray(encoder_decoder.per_sequence_weights(jnp.ones((4, 6)) * (seg > 0), jnp.asarray(seg)))
  np.testing.assert_allclose(wp[0], [1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)


def test_unknown_loss_normalizing_factor_is_a_clear_error():
  from promot_t5x.models import encoder_decoder, t5

  with pytest.raises(ValueError, match='AVERAGE_PER_SEQUENCE'):
    encoder_decoder.EncoderDecoderModel(t5.Transformer(t5.T5Config(vocab_size=8)),
                                        loss_normalizing_factor='PER_SEQ')
