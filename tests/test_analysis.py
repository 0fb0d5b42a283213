"""The gradient-alignment probe and the combined evaluator."""

import jax
import numpy as np
import pytest

from promot_t5x import analysis
from promot_t5x.models import encoder_decoder, t5


def _model():
  cfg = t5.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    num_encoder_layers=1, num_decoder_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg))


def _batch():
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 32, (6, 8)).astype(np.int32)
  tgt = np.stack([[3 + i % 2, 1] for i in range(6)]).astype(np.int32)  # "labels" 3/4, then EOS
  dec = np.concatenate([np.zeros((6, 1), np.int32), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec, 'decoder_target_tokens': tgt,
          'decoder_loss_weights': np.ones_like(tgt, np.float32)}


def test_shuffle_labels_moves_every_target_and_keeps_the_inputs():
  batch = _batch()
  batch['decoder_target_tokens'] = np.arange(12, dtype=np.int32).reshape(6, 2)
  out = analysis.shuffle_labels(batch, seed=3)
  np.testing.assert_array_equal(out['encoder_input_tokens'], batch['encoder_input_tokens'])
  assert sorted(map(tuple, out['decoder_target_tokens'])) == sorted(
      map(tuple, batch['decoder_target_tokens']))
  assert all(not np.array_equal(a, b) for a, b in
             zip(out['decoder_target_tokens'], batch['decoder_target_tokens']))


def test_gradient_is_taken_on_the_last_decoder_layer_only():
  model = _model()
  params = model.init_params(jax.random.PRNGKey(0))
  pattern = analysis.last_decoder_layer_pattern(params)
  assert pattern == r'decoder/layers_1/.*'
  grads = analysis.gradient(model, params, _batch(), pattern)
  assert grads and all(k.startswith('decoder/layers_1/') for k in grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())


def test_cosine_of_a_gradient_with_itself_is_one_and_with_its_negation_minus_one():
  model = _model()
  params = model.init_params(jax.random.PRNGKey(0))
  g = analysis.gradient(model, params, _batch(), analysis.last_decoder_layer_pattern(params))
  assert analysis.cosine(g, g) == pytest.approx(1.0, abs=1e-5)
  assert analysis.cosine(g, {k: -v for k, v in g.items()}) == pytest.approx(-1.0, abs=1e-5)


def test_real_and_shuffled_gradients_differ_on_a_batch_with_two_labels():
  model = _model()
  params = model.init_params(jax.random.PRNGKey(1))
  probe = analysis.GradientAlignment(task='unused', task_feature_lengths={'inputs': 8, 'targets': 2})
  probe._batches = [_batch()]  # the batch a task would provide
  cos = probe(model, params, step=0)['grad_alignment/cosine']
  assert -1.0 <= cos < 0.999


def test_alignment_is_reported_per_module_and_averaged_over_batches():
  model = _model()
  params = model.init_params(jax.random.PRNGKey(1))
  g = analysis.gradient(model, params, _batch(), analysis.last_decoder_layer_pattern(params))
  same = analysis.module_cosines(g, g, 'decoder/layers_1/')
  assert set(same) == {'all', 'mlp', 'query', 'key', 'value'}
  assert all(v == pytest.approx(1.0, abs=1e-5) for v in same.values())

  second = _batch()
  second['encoder_input_tokens'] = second['encoder_input_tokens'][::-1].copy()
  probes = []
  for batches in ([_batch()], [second], [_batch(), second]):
    probe = analysis.GradientAlignment(task='unused', task_feature_lengths={'inputs': 8, 'targets': 2})
    probe._batches = batches
    probes.append(probe(model, params, step=0))
  one, two, both = probes
  assert set(both) == {'grad_alignment/cosine', 'grad_alignment/mlp/cosine',
                       'grad_alignment/query/cosine', 'grad_alignment/key/cosine',
                       'grad_alignment/value/cosine'}
  # The second batch of a two-batch probe is shuffled with seed + 1: rerun it that way.
  probe = analysis.GradientAlignment(task='unused', task_feature_lengths={'inputs': 8, 'targets': 2},
                                     seed=1)
  probe._batches = [second]
  two = probe(model, params, step=0)
  for key in both:
    assert both[key] == pytest.approx((one[key] + two[key]) / 2, abs=1e-5)
  assert len({round(both[f'grad_alignment/{m}/cosine'], 4) for m in analysis.MODULES}) > 1


def test_combined_evaluator_merges_and_rejects_clashing_names():
  a = lambda m, p, s: {'x': 1.0}
  b = lambda m, p, s: {'y': 2.0}
  assert analysis.CombinedEvaluator([a, b])(None, None, 0) == {'x': 1.0, 'y': 2.0}
  with pytest.raises(ValueError, match="report 'x'"):
    analysis.CombinedEvaluator([a, a])(None, None, 0)
