"""Conjugate prompting's synthetic experiment: references in closed form, and a tiny run.

Ridge regression and the discrete posterior are checked on inputs small
enough to solve by hand; the statistics on hand-made numbers; the whole
command (pretraining, fine-tuning, evaluation, report) at the `tiny` size.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import conjugate_synthetic as cs


def test_ridge_by_hand():
  # d = 1, lambda = sigma^2 = 1: w_k = sum(x y) / (sum(x^2) + 1), predicted at x_k.
  xs = np.array([[[1.0], [2.0], [3.0]]])  # [batch 1, K 3, d 1]
  ys = np.array([[1.0, 2.0, 100.0]])  # y_3 is never seen by a prediction
  np.testing.assert_allclose(cs.ridge_predictions(xs, ys), [[0.0, 2 * 0.5, 3 * 5 / 6]])


def test_ridge_is_the_gaussian_posterior_mean():
  rng = np.random.default_rng(0)
  xs, ys = rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6))
  out = cs.ridge_predictions(xs, ys)
  for b in range(2):
    for k in range(6):
      x, y = xs[b, :k], ys[b, :k]
      w = np.linalg.inv(x.T @ x + np.eye(3)) @ x.T @ y
      assert out[b, k] == pytest.approx(xs[b, k] @ w)


def test_discrete_posterior_by_hand():
  weights = np.array([[0.0], [1.0]])  # two tasks, d = 1
  xs = np.array([[[1.0], [2.0], [1.0]]])
  ys = np.array([[1.0, 2.0, 0.0]])
  # k = 0: uniform prior, 0.5 * 0 + 0.5 * x. k = 1: likelihoods exp(-1/2) (w = 0), 1 (w = 1).
  # k = 2: exp(-(1 + 4) / 2) against 1.
  p1 = 1 / (1 + math.exp(-0.5))
  p2 = 1 / (1 + math.exp(-2.5))
  np.testing.assert_allclose(cs.discrete_posterior_predictions(xs, ys, weights),
                             [[0.5, 2 * p1, p2]])


def test_discrete_posterior_picks_out_a_noiseless_task():
  weights = cs.discrete_tasks(jax.random.PRNGKey(0), 4)
  xs = jax.random.normal(jax.random.PRNGKey(1), (1, 30, 4))
  ys = jnp.einsum('bkd,d->bk', xs, weights[7])
  pred = cs.discrete_posterior_predictions(xs, ys, weights)
  np.testing.assert_allclose(pred[0, 20:], ys[0, 20:], atol=1e-3)


def test_prompt_tokens_and_sampling():
  xs = jnp.arange(6.0).reshape(1, 3, 2)
  ys = jnp.array([[10.0, 20.0, 30.0]])
  tokens = cs.interleave(xs, ys)
  assert tokens.shape == (1, 6, 3)
  np.testing.assert_array_equal(tokens[0, :2], [[0, 1, 0], [0, 0, 10]])
  weights = cs.discrete_tasks(jax.random.PRNGKey(0), 3)
  xs, ys = cs.sample_regression(jax.random.PRNGKey(1), 4000, 5, 3, weights, p_discrete=0.0)
  assert xs.shape == (4000, 5, 3) and ys.shape == (4000, 5)
  # Var(y) = E|w|^2 + sigma^2 = d + 1 under the Gaussian prior.
  assert float(jnp.var(ys)) == pytest.approx(4.0, rel=0.1)


def test_intervals_and_paired_findings():
  mean, half = cs.mean_interval(np.array([[1.0], [2.0], [3.0]]))
  assert mean[0] == 2.0 and half[0] == pytest.approx(4.303 / math.sqrt(3))
  # Three seeds; fine-tuned is worse on continuous at k = 0 only, by 1 +- a little.
  def seed(shift):
    return {'discrete': {'pretrained': [1.0, 1.0], 'finetuned': [0.5 + shift, 0.9 + shift],
                         'finetuned_gamma2': [1.0, 1.0]},
            'continuous': {'pretrained': [2.0, 1.0], 'finetuned': [3.0 + shift, 1.0 - shift],
                           'finetuned_gamma2': [2.5 + shift, 1.0]}}
  summary = cs.summarize([seed(0.0), seed(0.01), seed(-0.01)], gammas=(2.0,))
  f = summary['findings']
  assert f['finetuning_raises_continuous_loss_at_k'] == [0]
  assert f['finetuning_lowers_discrete_loss_at_k'] == [0, 1]
  assert f['gamma2_lowers_finetuned_continuous_loss_at_k'] == [0]
  assert f['share_of_continuous_increase_recovered']['gamma2'][0] == pytest.approx(0.5)
  assert f['share_of_continuous_increase_recovered']['gamma2'][1] is None
  assert cs.ranges([0, 1, 2, 5, 7, 8]) == '0-2, 5, 7-8'


def test_tiny_run_end_to_end(tmp_path):
  assert cs.main(['--size', 'tiny', '--output_dir', str(tmp_path)]) == 0
  result = json.loads((tmp_path / 'results.json').read_text())
  k = cs.SIZES['tiny'].max_examples + 1
  curves = result['curves']['continuous']
  for name in ('ridge', 'discrete_posterior', 'pretrained', 'finetuned', 'finetuned_gamma1.5',
               'finetuned_gamma2', 'pretrained_gamma2'):
    assert len(curves[name]['mean']) == len(curves[name]['ci95']) == k
  assert len(result['per_seed']) == 3
  # Each distribution's own Bayes predictor beats the other's, on average over k.
  cont, disc = result['curves']['continuous'], result['curves']['discrete']
  assert np.mean(cont['ridge']['mean']) < np.mean(cont['discrete_posterior']['mean'])
  assert np.mean(disc['discrete_posterior']['mean']) < np.mean(disc['ridge']['mean'])
  page = (tmp_path / 'results.md').read_text()
  assert '## Findings' in page and '| k | ridge |' in page
  for png in ('curves.png', 'conjugate.png', 'pretrained_scaled.png', 'differences.png'):
    assert (tmp_path / png).read_bytes()[:4] == b'\x89PNG'
  assert str(tmp_path) not in page
  # The report re-renders from results.json alone, to the same page.
  (tmp_path / 'results.md').unlink()
  assert cs.main(['--report_only', '--output_dir', str(tmp_path)]) == 0
  assert (tmp_path / 'results.md').read_text() == page


def test_bad_input_is_named(capsys):
  assert cs.main(['--size', 'tiny', '--seeds', '0', '--output_dir', '/tmp/unused']) == 2
  assert 'at least 2 seeds' in capsys.readouterr().err
  assert cs.main(['--report_only', '--output_dir', '/tmp/no_such_run_dir']) == 2
  assert 'run the experiment first' in capsys.readouterr().err
  with pytest.raises(ValueError, match='tau'):
    cs.ExperimentConfig(**{**cs.SIZES['tiny'].__dict__, 'tau': 1.0})
