"""Conjugate prompting's synthetic experiment: in-context linear regression.

Kotha, Springer and Raghunathan ("Understanding Catastrophic Forgetting in
Language Models via Implicit Inference", Section 3) as an end-to-end run:

1. Tasks. A prompt is x_1, y_1, ..., x_K, y_K with x_i ~ N(0, I_d) and
   y_i = w.x_i + eps, eps ~ N(0, sigma^2), sigma = 1. The discrete task
   distribution draws w uniformly from a fixed set of 64 vectors (themselves
   drawn once from N(0, I_d)); the continuous one draws w ~ N(0, I_d).
2. Model. A small decoder-only transformer over real-valued tokens (linear
   read-in of [x, 0] and [0, y] tokens, learned positions, pre-LayerNorm
   causal blocks, linear read-out). The prediction for y_i is read at x_i's
   token, so one forward pass gives the loss with k = i - 1 in-context
   examples for every k = 0 .. K - 1.
3. Training. Pretraining on the mixture (discrete with probability `tau`,
   continuous otherwise), then fine-tuning on the discrete distribution only
   (400 steps). Adam from optax, the project's learning-rate schedules.
4. Evaluation. Squared error of the query prediction per k on fresh prompts
   of each distribution, for the pretrained and the fine-tuned model, beside
   ridge regression (lambda = sigma^2: the posterior mean under the Gaussian
   prior, Bayes-optimal for the continuous distribution) and the discrete
   posterior mean (Bayes-optimal for the discrete distribution). Conjugate
   prompts scale every in-context label by gamma (1.5, 2) and divide the
   prediction by gamma: the scaled prompt no longer looks like the 64 fixed
   tasks, which is the point.
5. Report. Per seed, the curves; across seeds, means with 95 % t-intervals;
   paired intervals of the differences that the conclusions are read from
   (does fine-tuning raise the continuous loss, does scaling recover it, at
   which k). JSON, a markdown table and PNG plots.

Command: `promot-conjugate-synthetic --output_dir docs/conjugate_synthetic`
(`--size paper` for the paper's 12 layers x 8 heads x 256 wide model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from promot_t5x import optimizers

NOISE_STD = 1.0
NUM_DISCRETE_TASKS = 64
GAMMAS = (1.5, 2.0)
TABLE_KS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40)


# ----------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Transformer size: `num_layers` blocks of `num_heads` heads, `width` wide, MLP `mlp_ratio` x."""

  num_layers: int
  num_heads: int
  width: int
  mlp_ratio: int = 4


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a run depends on; written into the JSON.

  Attributes:
    dim: d, the input dimension.
    max_examples: the largest in-context example count evaluated (K - 1).
    tau: probability of the discrete distribution in the pretraining mixture.
    model: the transformer's size.
    pretrain_steps, pretrain_lr, warmup_steps: pretraining (Adam, linear
      warmup then cosine decay to 0 at the last step).
    finetune_steps, finetune_lr: fine-tuning on the discrete distribution
      (Adam, constant rate, fresh optimizer state).
    batch_size: prompts per step.
    eval_prompts: prompts per distribution and seed in the evaluation.
    seeds: one pretraining + fine-tuning run per seed (model init, data,
      the 64 discrete tasks and the evaluation prompts all follow it).
    gammas: label scales of the conjugate prompts.
  """

  dim: int
  max_examples: int
  tau: float
  model: ModelConfig
  pretrain_steps: int
  pretrain_lr: float
  warmup_steps: int
  finetune_steps: int
  finetune_lr: float
  batch_size: int
  eval_prompts: int
  seeds: tuple[int, ...]
  gammas: tuple[float, ...] = GAMMAS

  def __post_init__(self):
    if self.dim < 1 or self.max_examples < 1:
      raise ValueError(f'dim and max_examples must be >= 1, got {self.dim}, {self.max_examples}.')
    if not 0.0 < self.tau < 1.0:
      raise ValueError(f'tau (the discrete share of the pretraining mixture) must be in (0, 1), '
                       f'got {self.tau}: at 0 or 1 one of the two distributions is never seen.')
    if self.model.width % self.model.num_heads:
      raise ValueError(f'width {self.model.width} must be divisible by num_heads '
                       f'{self.model.num_heads}.')
    for field in ('pretrain_steps', 'finetune_steps', 'batch_size', 'eval_prompts'):
      if getattr(self, field) < 1:
        raise ValueError(f'{field} must be >= 1, got {getattr(self, field)}.')
    if not self.seeds:
      raise ValueError('Give at least one seed (three or more for intervals).')
    if any(g <= 0 for g in self.gammas):
      raise ValueError(f'Label scales gamma must be positive, got {self.gammas}.')


# The default fits the 2-core developer machine (see docs/conjugate_synthetic.md
# for the reasons behind each number); `paper` is the size Garg et al. and
# Kotha et al. trained, for an accelerator.
SIZES: dict[str, ExperimentConfig] = {
    'default': ExperimentConfig(
        dim=4, max_examples=40, tau=0.5, model=ModelConfig(num_layers=2, num_heads=2, width=32),
        pretrain_steps=3000, pretrain_lr=3e-3, warmup_steps=200, finetune_steps=400,
        finetune_lr=1e-3, batch_size=32, eval_prompts=1000, seeds=(0, 1, 2)),
    'paper': ExperimentConfig(
        dim=8, max_examples=40, tau=0.5, model=ModelConfig(num_layers=12, num_heads=8, width=256),
        pretrain_steps=50000, pretrain_lr=1e-4, warmup_steps=2000, finetune_steps=400,
        finetune_lr=1e-5, batch_size=64, eval_prompts=4000, seeds=(0, 1, 2, 3, 4)),
    'tiny': ExperimentConfig(
        dim=2, max_examples=6, tau=0.5, model=ModelConfig(num_layers=1, num_heads=2, width=16),
        pretrain_steps=50, pretrain_lr=1e-3, warmup_steps=5, finetune_steps=50,
        finetune_lr=1e-4, batch_size=16, eval_prompts=64, seeds=(0, 1, 2)),
}


# ----------------------------------------------------------------------------
# Tasks and prompts.
# ----------------------------------------------------------------------------


def discrete_tasks(key: jax.Array, dim: int, num_tasks: int = NUM_DISCRETE_TASKS) -> jax.Array:
  """The fixed weight vectors of the discrete distribution, [num_tasks, dim], from N(0, I)."""
  return jax.random.normal(key, (num_tasks, dim))


def sample_regression(key: jax.Array, batch: int, num_points: int, dim: int,
                      discrete_weights: jax.Array, p_discrete: float
                      ) -> tuple[jax.Array, jax.Array]:
  """Prompts of the mixture: each draws its w from the discrete set with probability p_discrete.

  Returns:
    xs [batch, num_points, dim], ys [batch, num_points]; y = w.x + N(0, NOISE_STD^2).
  """
  k_kind, k_index, k_cont, k_x, k_noise = jax.random.split(key, 5)
  is_discrete = jax.random.uniform(k_kind, (batch,)) < p_discrete
  index = jax.random.randint(k_index, (batch,), 0, discrete_weights.shape[0])
  w = jnp.where(is_discrete[:, None], discrete_weights[index],
                jax.random.normal(k_cont, (batch, dim)))  # [batch, dim]
  xs = jax.random.normal(k_x, (batch, num_points, dim))
  ys = jnp.einsum('bkd,bd->bk', xs, w) + NOISE_STD * jax.random.normal(k_noise, (batch, num_points))
  return xs, ys


def interleave(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """Tokens x_1, y_1, ..., x_K, y_K of width dim + 1: [x, 0] and [0, .., 0, y].

  Args:
    xs: [batch, K, dim]; ys: [batch, K].

  Returns:
    [batch, 2K, dim + 1].
  """
  batch, k, dim = xs.shape
  x_tokens = jnp.concatenate([xs, jnp.zeros((batch, k, 1), xs.dtype)], axis=-1)
  y_tokens = jnp.concatenate([jnp.zeros((batch, k, dim), xs.dtype), ys[..., None]], axis=-1)
  return jnp.stack([x_tokens, y_tokens], axis=2).reshape(batch, 2 * k, dim + 1)


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------


class Block(nn.Module):
  """Pre-LayerNorm causal self-attention and GELU MLP, both residual."""

  config: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    a = nn.LayerNorm()(h)
    h = h + nn.MultiHeadDotProductAttention(num_heads=c.num_heads, qkv_features=c.width)(
        a, a, mask=mask)
    m = nn.LayerNorm()(h)
    m = nn.Dense(c.mlp_ratio * c.width)(m)
    return h + nn.Dense(c.width)(nn.gelu(m))


class RegressionTransformer(nn.Module):
  """Decoder-only transformer reading real-valued tokens, predicting y at each x token."""

  config: ModelConfig
  max_len: int

  @nn.compact
  def __call__(self, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Predictions [batch, K]: entry i sees x_1, y_1, ..., x_i (i in-context examples before)."""
    tokens = interleave(xs, ys)  # [batch, 2K, dim + 1]
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f'Prompt of {length} tokens is longer than the model\'s {self.max_len}.')
    h = nn.Dense(self.config.width, name='read_in')(tokens)  # [batch, 2K, width]
    positions = self.param('positions', nn.initializers.normal(0.02),
                           (self.max_len, self.config.width))
    h = h + positions[:length]
    mask = nn.make_causal_mask(jnp.ones(tokens.shape[:2], jnp.int32))  # [batch, 1, 2K, 2K]
    for i in range(self.config.num_layers):
      h = Block(self.config, name=f'block_{i}')(h, mask)
    h = nn.LayerNorm()(h)
    return nn.Dense(1, name='read_out')(h[:, ::2])[..., 0]  # x tokens -> [batch, K]


def count_params(params: Any) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


class Trainer:
  """Adam on the mean squared error over all positions, compiled once per model and batch shape.

  Steps run `chunk` at a time inside one compiled `lax.scan`; prompts are
  drawn on the fly from the mixture. The discrete share and the learning
  rate of each step are arguments, so pretraining and fine-tuning of every
  seed share one compilation.
  """

  def __init__(self, model: RegressionTransformer, *, batch_size: int, num_points: int, dim: int,
               chunk: int = 50):
    self.chunk = chunk
    self.tx = optax.scale_by_adam()

    def loss_fn(p, xs, ys):
      return jnp.mean((model.apply({'params': p}, xs, ys) - ys) ** 2)

    def step(carry, inputs):
      p, s, weights, p_discrete = carry
      step_key, lr = inputs
      xs, ys = sample_regression(step_key, batch_size, num_points, dim, weights, p_discrete)
      loss, grads = jax.value_and_grad(loss_fn)(p, xs, ys)
      updates, s = self.tx.update(grads, s, p)
      p = jax.tree_util.tree_map(lambda w, u: w - lr * u, p, updates)
      return (p, s, weights, p_discrete), loss

    @jax.jit
    def run_chunk(p, s, weights, p_discrete, keys, lrs):
      (p, s, _, _), losses = jax.lax.scan(step, (p, s, weights, p_discrete), (keys, lrs))
      return p, s, jnp.mean(losses)

    self._run_chunk = run_chunk

  def train(self, params: Any, key: jax.Array, *, steps: int, schedule: optimizers.Schedule,
            discrete_weights: jax.Array, p_discrete: float) -> tuple[Any, list[float]]:
    """`steps` steps from `params` with a fresh optimizer state; returns (params, loss per chunk).

    Args:
      params: the starting parameters.
      key: draws the prompts.
      steps: number of updates.
      schedule: step -> learning rate (step 0 is this call's first).
      discrete_weights: [64, dim], the discrete tasks.
      p_discrete: probability that a prompt draws its w from the discrete set.
    """
    opt_state = self.tx.init(params)
    lrs = np.asarray(jax.vmap(schedule)(jnp.arange(steps)), np.float32)  # [steps]
    losses = []
    for start in range(0, steps, self.chunk):
      n = min(self.chunk, steps - start)
      key, sub = jax.random.split(key)
      params, opt_state, loss = self._run_chunk(params, opt_state, discrete_weights,
                                                jnp.float32(p_discrete), jax.random.split(sub, n),
                                                jnp.asarray(lrs[start:start + n]))
      losses.append(float(loss))
    return params, losses


# ----------------------------------------------------------------------------
# References: the Bayes-optimal predictors.
# ----------------------------------------------------------------------------


def ridge_predictions(xs: np.ndarray, ys: np.ndarray, ridge: float = NOISE_STD ** 2
                      ) -> np.ndarray:
  """Ridge prediction of y_i from the i examples before it, for every i.

  With w ~ N(0, I) and noise variance sigma^2, the posterior mean of w is
  (X^T X + sigma^2 I)^-1 X^T y: ridge with lambda = sigma^2, Bayes-optimal
  for squared error.

  Args:
    xs: [batch, K, dim]; ys: [batch, K].
    ridge: lambda.

  Returns:
    [batch, K]: entry i predicts y_i from (x_j, y_j), j < i (0 at i = 0).
  """
  xs = np.asarray(xs, np.float64)
  ys = np.asarray(ys, np.float64)
  batch, k, dim = xs.shape
  out = np.zeros((batch, k))
  gram = np.broadcast_to(ridge * np.eye(dim), (batch, dim, dim)).copy()  # X^T X + lambda I
  moment = np.zeros((batch, dim))  # X^T y
  for i in range(k):
    w = np.linalg.solve(gram, moment[..., None])[..., 0]  # [batch, dim]
    out[:, i] = np.einsum('bd,bd->b', xs[:, i], w)
    gram += np.einsum('bd,be->bde', xs[:, i], xs[:, i])
    moment += xs[:, i] * ys[:, i, None]
  return out


def discrete_posterior_predictions(xs: np.ndarray, ys: np.ndarray, weights: np.ndarray,
                                   noise_std: float = NOISE_STD) -> np.ndarray:
  """Posterior-mean prediction under the uniform prior over `weights`, for every i.

  p(w_j | examples) is proportional to exp(-sum_{l<i} (y_l - w_j.x_l)^2 / (2 sigma^2));
  the prediction is sum_j p_j w_j.x_i, Bayes-optimal for squared error.

  Args:
    xs: [batch, K, dim]; ys: [batch, K]; weights: [num_tasks, dim].

  Returns:
    [batch, K]: entry i predicts y_i from (x_j, y_j), j < i.
  """
  xs = np.asarray(xs, np.float64)
  ys = np.asarray(ys, np.float64)
  fits = np.einsum('bkd,td->bkt', xs, np.asarray(weights, np.float64))  # [batch, K, tasks]
  sq = (ys[..., None] - fits) ** 2 / (2 * noise_std ** 2)
  # Log-likelihood of the examples before i: exclusive cumulative sum over k.
  log_lik = -np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)[:, :-1]], axis=1)
  log_lik -= log_lik.max(axis=-1, keepdims=True)
  post = np.exp(log_lik)
  post /= post.sum(axis=-1, keepdims=True)
  return np.einsum('bkt,bkt->bk', post, fits)


# ----------------------------------------------------------------------------
# Evaluation and statistics.
# ----------------------------------------------------------------------------

DISTRIBUTIONS = ('discrete', 'continuous')


def curve(predictions: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Mean squared error per in-context example count k, [K]."""
  return np.mean((np.asarray(predictions, np.float64) - np.asarray(ys, np.float64)) ** 2, axis=0)


_APPLY_CACHE: dict[RegressionTransformer, Any] = {}


def _jitted_apply(model: RegressionTransformer):
  # Flax modules hash by their fields: one compilation per model shape.
  if model not in _APPLY_CACHE:
    _APPLY_CACHE[model] = jax.jit(model.apply)
  return _APPLY_CACHE[model]


def evaluate_seed(model: RegressionTransformer, params_by_model: Mapping[str, Any],
                  key: jax.Array, config: ExperimentConfig, discrete_weights: jax.Array
                  ) -> dict[str, dict[str, list[float]]]:
  """{distribution: {curve name: MSE per k}} for one seed.

  Curve names: `ridge`, `discrete_posterior`, `<model>` and
  `<model>_gamma<g>` (labels scaled by g in the prompt, prediction divided
  by g) for each model in `params_by_model`.
  """
  apply = _jitted_apply(model)
  out = {}
  for name, key_d, p_discrete in zip(DISTRIBUTIONS, jax.random.split(key), (1.0, 0.0)):
    xs, ys = sample_regression(key_d, config.eval_prompts, config.max_examples + 1, config.dim,
                               discrete_weights, p_discrete)
    curves = {'ridge': curve(ridge_predictions(xs, ys), ys),
              'discrete_posterior': curve(discrete_posterior_predictions(
                  xs, ys, discrete_weights), ys)}
    for model_name, params in params_by_model.items():
      curves[model_name] = curve(apply({'params': params}, xs, ys), ys)
      for gamma in config.gammas:
        scaled = apply({'params': params}, xs, gamma * ys) / gamma
        curves[f'{model_name}_gamma{gamma:g}'] = curve(scaled, ys)
    out[name] = {k: v.tolist() for k, v in curves.items()}
  return out


# Two-sided 97.5 % quantiles of Student's t, by degrees of freedom.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile_975(dof: int) -> float:
  """Student's t 0.975 quantile (exact for the tabulated dof, the next lower one otherwise)."""
  if dof < 1:
    raise ValueError(f'A t-interval needs at least 2 seeds (dof >= 1), got dof={dof}.')
  if dof > 30:
    return 1.96
  return _T975[max(d for d in _T975 if d <= dof)]


def mean_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and 95 % t-interval half-width over axis 0 (the seeds)."""
  values = np.asarray(values, np.float64)
  n = values.shape[0]
  half = t_quantile_975(n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n)
  return values.mean(axis=0), half


def summarize(per_seed: Sequence[Mapping[str, Mapping[str, Sequence[float]]]],
              gammas: Sequence[float]) -> dict[str, Any]:
  """Means, intervals and the paired comparisons the conclusions are read from.

  Args:
    per_seed: `evaluate_seed` outputs, one per seed.
    gammas: the conjugate label scales.

  Returns:
    {'curves': {dist: {name: {'mean', 'ci95'}}}, 'comparisons': {...},
     'findings': {...}}; comparisons are paired differences per k (mean,
    ci95) and the k where the interval excludes 0.
  """
  curves = {}
  for dist in DISTRIBUTIONS:
    curves[dist] = {}
    for name in per_seed[0][dist]:
      mean, half = mean_interval([s[dist][name] for s in per_seed])
      curves[dist][name] = {'mean': mean.tolist(), 'ci95': half.tolist()}

  def paired(dist, a, b):
    diff = np.array([np.array(s[dist][a]) - np.array(s[dist][b]) for s in per_seed])
    mean, half = mean_interval(diff)
    return {'mean': mean.tolist(), 'ci95': half.tolist(),
            'k_above_zero': [int(k) for k in np.nonzero(mean - half > 0)[0]],
            'k_below_zero': [int(k) for k in np.nonzero(mean + half < 0)[0]]}

  comparisons = {
      'finetuned_minus_pretrained': {d: paired(d, 'finetuned', 'pretrained')
                                     for d in DISTRIBUTIONS}}
  for gamma in gammas:
    g = f'gamma{gamma:g}'
    comparisons[f'finetuned_{g}_minus_finetuned'] = {
        d: paired(d, f'finetuned_{g}', 'finetuned') for d in DISTRIBUTIONS}
    comparisons[f'finetuned_{g}_minus_pretrained'] = {
        d: paired(d, f'finetuned_{g}', 'pretrained') for d in DISTRIBUTIONS}
  # Share of the fine-tuning loss increase on continuous tasks that scaling
  # wins back, from the seed means: (FT - FT_gamma) / (FT - PT), where FT > PT.
  cont = curves['continuous']
  recovered = {}
  for gamma in gammas:
    ft, pt = np.array(cont['finetuned']['mean']), np.array(cont['pretrained']['mean'])
    conj = np.array(cont[f'finetuned_gamma{gamma:g}']['mean'])
    with np.errstate(divide='ignore', invalid='ignore'):
      share = np.where(ft - pt > 0, (ft - conj) / (ft - pt), np.nan)
    recovered[f'gamma{gamma:g}'] = [None if np.isnan(v) else float(v) for v in share]
  ft_pt = comparisons['finetuned_minus_pretrained']
  findings = {
      'finetuning_raises_continuous_loss_at_k': ft_pt['continuous']['k_above_zero'],
      'finetuning_lowers_discrete_loss_at_k': ft_pt['discrete']['k_below_zero'],
      'finetuning_raises_discrete_loss_at_k': ft_pt['discrete']['k_above_zero'],
      'share_of_continuous_increase_recovered': recovered,
  }
  for gamma in gammas:
    g = f'gamma{gamma:g}'
    findings[f'{g}_lowers_finetuned_continuous_loss_at_k'] = (
        comparisons[f'finetuned_{g}_minus_finetuned']['continuous']['k_below_zero'])
    findings[f'{g}_raises_finetuned_continuous_loss_at_k'] = (
        comparisons[f'finetuned_{g}_minus_finetuned']['continuous']['k_above_zero'])
  return {'curves': curves, 'comparisons': comparisons, 'findings': findings}


# ----------------------------------------------------------------------------
# Report: markdown and plots.
# ----------------------------------------------------------------------------


def ranges(ks: Sequence[int]) -> str:
  """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'; '' for none."""
  ks = sorted(ks)
  parts, start = [], None
  for i, k in enumerate(ks):
    if start is None:
      start = k
    if i + 1 == len(ks) or ks[i + 1] != k + 1:
      parts.append(str(start) if start == k else f'{start}-{k}')
      start = None
  return ', '.join(parts) if parts else 'none'


def findings_text(summary: Mapping[str, Any], gammas: Sequence[float]) -> list[str]:
  """The conclusions as sentences, every number read from the paired intervals."""
  f = summary['findings']
  lines = [
      f'- Fine-tuning raises the continuous-task loss at k = '
      f'{ranges(f["finetuning_raises_continuous_loss_at_k"])} (paired 95 % interval of '
      'fine-tuned - pretrained above 0).',
      f'- Fine-tuning lowers the discrete-task loss at k = '
      f'{ranges(f["finetuning_lowers_discrete_loss_at_k"])}'
      + (f' and raises it at k = {ranges(f["finetuning_raises_discrete_loss_at_k"])}'
         if f['finetuning_raises_discrete_loss_at_k'] else '') + '.']
  for gamma in gammas:
    g = f'gamma{gamma:g}'
    share = [v for v in f['share_of_continuous_increase_recovered'][g] if v is not None]
    raised = f['finetuning_raises_continuous_loss_at_k']
    share_at = {k: f['share_of_continuous_increase_recovered'][g][k] for k in raised}
    shown = ', '.join(f'k={k}: {v:.2f}' for k, v in share_at.items() if v is not None)
    lines.append(
        f'- Labels scaled by {gamma:g}: the fine-tuned model\'s continuous-task loss is lower '
        f'than with plain prompts at k = {ranges(f[f"{g}_lowers_finetuned_continuous_loss_at_k"])}'
        f', higher at k = {ranges(f[f"{g}_raises_finetuned_continuous_loss_at_k"])}.'
        + (f' Share of the fine-tuning increase it recovers, (FT - FT_gamma) / (FT - PT) from '
           f'the seed means, at the k where that increase is significant: {shown}.'
           if shown and share else ''))
  return lines


def markdown_table(summary: Mapping[str, Any], config: ExperimentConfig, ks: Sequence[int],
                   seconds: float | None = None) -> str:
  """The report page: settings, findings, and MSE +- 95 % interval per k."""
  curves = summary['curves']
  names = ['ridge', 'discrete_posterior', 'pretrained', 'finetuned']
  names += [f'finetuned_gamma{g:g}' for g in config.gammas]
  names += [f'pretrained_gamma{g:g}' for g in config.gammas]
  ks = [k for k in ks if k <= config.max_examples]
  m = config.model
  lines = ['# Conjugate prompting, synthetic: in-context linear regression', '',
           f'd = {config.dim}, sigma = {NOISE_STD:g}, {NUM_DISCRETE_TASKS} discrete tasks, '
           f'tau (discrete share of pretraining) = {config.tau:g}; model {m.num_layers} layers x '
           f'{m.num_heads} heads x {m.width} wide; pretraining {config.pretrain_steps} steps '
           f'(Adam, peak lr {config.pretrain_lr:g}), fine-tuning {config.finetune_steps} steps on '
           f'the discrete tasks (lr {config.finetune_lr:g}); batch {config.batch_size}; '
           f'{len(config.seeds)} seeds, {config.eval_prompts} evaluation prompts per distribution '
           'and seed.' + (f' Wall time {seconds / 60:.1f} min.' if seconds else ''), '',
           'Squared error of the query prediction (noise variance 1 included), mean over seeds '
           '+- 95 % t-interval half-width. `_gammaG`: in-context labels multiplied by G, '
           'prediction divided by G.', '', '## Findings', '']
  lines += findings_text(summary, config.gammas)
  for dist in DISTRIBUTIONS:
    lines += ['', f'## {dist.capitalize()} tasks', '',
              '| k | ' + ' | '.join(names) + ' |', '|' + '---|' * (len(names) + 1)]
    for k in ks:
      cells = [f'{curves[dist][n]["mean"][k]:.3f} ± {curves[dist][n]["ci95"][k]:.3f}'
               for n in names]
      lines.append(f'| {k} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


_STYLES = {'ridge': ('black', '--'), 'discrete_posterior': ('gray', ':'),
           'pretrained': ('tab:blue', '-'), 'finetuned': ('tab:red', '-'),
           'finetuned_gamma1.5': ('tab:orange', '-'), 'finetuned_gamma2': ('tab:green', '-')}


def plot_differences(summary: Mapping[str, Any], gammas: Sequence[float],
                     path: pathlib.Path) -> None:
  """Paired differences per k with 95 % intervals: what the findings are read from."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  names = ['finetuned_minus_pretrained'] + [f'finetuned_gamma{g:g}_minus_finetuned'
                                            for g in gammas]
  fig = Figure(figsize=(10.4, 3.8))
  FigureCanvasAgg(fig)
  for i, dist in enumerate(DISTRIBUTIONS):
    ax = fig.add_subplot(1, len(DISTRIBUTIONS), i + 1)
    for name, color in zip(names, ('tab:red', 'tab:orange', 'tab:green')):
      c = summary['comparisons'][name][dist]
      mean, half = np.array(c['mean']), np.array(c['ci95'])
      ks = np.arange(len(mean))
      ax.plot(ks, mean, color=color, label=name.replace('_minus_', ' - '), lw=1.4)
      ax.fill_between(ks, mean - half, mean + half, color=color, alpha=0.2, lw=0)
    ax.axhline(0.0, color='black', lw=0.8)
    ax.set_xlabel('in-context examples k')
    ax.set_ylabel('difference in squared error')
    ax.set_title(f'{dist} tasks', fontsize=10)
    ax.legend(fontsize=7)
  fig.suptitle('Paired differences across seeds (95 % intervals)', x=0.02, ha='left', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot(summary: Mapping[str, Any], names: Sequence[str], path: pathlib.Path, title: str,
         distributions: Sequence[str] = DISTRIBUTIONS) -> None:
  """One panel per distribution: MSE per k with shaded 95 % intervals."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(5.2 * len(distributions), 3.8))
  FigureCanvasAgg(fig)
  for i, dist in enumerate(distributions):
    ax = fig.add_subplot(1, len(distributions), i + 1)
    for name in names:
      c = summary['curves'][dist][name]
      mean, half = np.array(c['mean']), np.array(c['ci95'])
      ks = np.arange(len(mean))
      color, style = _STYLES.get(name, (None, '-'))
      ax.plot(ks, mean, style, color=color, label=name, lw=1.4)
      ax.fill_between(ks, mean - half, mean + half, color=color, alpha=0.2, lw=0)
    ax.set_yscale('log')
    ax.set_xlabel('in-context examples k')
    ax.set_ylabel('squared error')
    ax.set_title(f'{dist} tasks', fontsize=10)
    ax.legend(fontsize=7)
  fig.suptitle(title, x=0.02, ha='left', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


def _log(line: str) -> None:
  print(line, flush=True)


def run_seed(config: ExperimentConfig, seed: int, model: RegressionTransformer,
             trainer: Trainer, log=None) -> dict[str, Any]:
  """Pretrains, fine-tunes and evaluates one seed; returns its curves and training losses."""
  log = log or _log
  key = jax.random.PRNGKey(seed)
  k_tasks, k_init, k_pre, k_ft, k_eval = jax.random.split(key, 5)
  weights = discrete_tasks(k_tasks, config.dim)
  num_points = config.max_examples + 1
  params = model.init(k_init, jnp.zeros((1, num_points, config.dim)),
                      jnp.zeros((1, num_points)))['params']
  start = time.time()
  pre_schedule = optimizers.learning_rate_schedule(
      'constant * linear_warmup * cosine_decay', config.pretrain_lr, config.warmup_steps,
      steps_per_cycle=max(1, config.pretrain_steps - config.warmup_steps) + 1)
  pretrained, pre_losses = trainer.train(params, k_pre, steps=config.pretrain_steps,
                                         schedule=pre_schedule, discrete_weights=weights,
                                         p_discrete=config.tau)
  log(f'seed {seed}: pretrained {config.pretrain_steps} steps in {time.time() - start:.0f} s, '
      f'last-chunk loss {pre_losses[-1]:.3f}')
  ft_schedule = optimizers.learning_rate_schedule('constant', config.finetune_lr)
  finetuned, ft_losses = trainer.train(pretrained, k_ft, steps=config.finetune_steps,
                                       schedule=ft_schedule, discrete_weights=weights,
                                       p_discrete=1.0)
  curves = evaluate_seed(model, {'pretrained': pretrained, 'finetuned': finetuned}, k_eval,
                         config, weights)
  log(f'seed {seed}: fine-tuned and evaluated, {time.time() - start:.0f} s in all')
  return {'seed': seed, 'curves': curves, 'pretrain_losses': pre_losses,
          'finetune_losses': ft_losses, 'num_params': count_params(params)}


def run(config: ExperimentConfig, output_dir: str | pathlib.Path, log=None) -> dict[str, Any]:
  """The whole experiment; writes results.json, results.md and four PNGs to output_dir.

  Args:
    config: sizes, steps and seeds.
    output_dir: created if needed; files are named, not dated, so a rerun
      replaces them.
    log: progress lines go here.

  Returns:
    The JSON object written (config, per-seed results, summary).
  """
  log = log or _log
  if len(config.seeds) < 2:
    raise ValueError('Intervals need at least 2 seeds (the experiment reports 3 or more).')
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  num_points = config.max_examples + 1
  model = RegressionTransformer(config.model, max_len=2 * num_points)
  trainer = Trainer(model, batch_size=config.batch_size, num_points=num_points, dim=config.dim)
  per_seed = [run_seed(config, seed, model, trainer, log) for seed in config.seeds]
  summary = summarize([s['curves'] for s in per_seed], config.gammas)
  seconds = time.time() - start
  result = {'config': dataclasses.asdict(config), 'noise_std': NOISE_STD,
            'num_discrete_tasks': NUM_DISCRETE_TASKS, 'num_params': per_seed[0]['num_params'],
            'seconds': seconds, 'per_seed': per_seed, **summary}
  (output_dir / 'results.json').write_text(json.dumps(result, indent=1))
  write_report(result, output_dir)
  log(f'wrote {output_dir}/results.json, results.md, curves.png, conjugate.png, '
      f'pretrained_scaled.png, differences.png ({seconds / 60:.1f} min)')
  return result


def config_from_json(data: Mapping[str, Any]) -> ExperimentConfig:
  """The `ExperimentConfig` written into results.json."""
  data = dict(data)
  return ExperimentConfig(**{**data, 'model': ModelConfig(**data['model']),
                             'seeds': tuple(data['seeds']), 'gammas': tuple(data['gammas'])})


def write_report(result: Mapping[str, Any], output_dir: str | pathlib.Path) -> None:
  """results.md and the four PNGs from a results.json object (a run's, or one read back).

  Findings and intervals are recomputed from the per-seed curves, so a
  report can be re-rendered without training again (`--report_only`).
  """
  output_dir = pathlib.Path(output_dir)
  config = config_from_json(result['config'])
  summary = summarize([s['curves'] for s in result['per_seed']], config.gammas)
  (output_dir / 'results.md').write_text(
      markdown_table(summary, config, TABLE_KS, result.get('seconds')))
  base = ['ridge', 'discrete_posterior', 'pretrained', 'finetuned']
  plot(summary, base, output_dir / 'curves.png', 'Pretrained and fine-tuned vs Bayes-optimal')
  conj = ['ridge', 'pretrained', 'finetuned'] + [f'finetuned_gamma{g:g}' for g in config.gammas]
  plot(summary, conj, output_dir / 'conjugate.png',
       'Conjugate prompts: labels scaled by gamma, prediction scaled back')
  plot(summary, [f'pretrained_gamma{g:g}' for g in config.gammas] + ['pretrained', 'ridge'],
       output_dir / 'pretrained_scaled.png', 'Label scaling on the pretrained model (control)')
  plot_differences(summary, config.gammas, output_dir / 'differences.png')


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='promot-conjugate-synthetic',
      description="Conjugate prompting's synthetic experiment (in-context linear regression).")
  parser.add_argument('--output_dir', default='conjugate_synthetic',
                      help='Where results.json, results.md and the PNGs go.')
  parser.add_argument('--size', default='default', choices=sorted(SIZES),
                      help='default: fits a 2-core CPU; paper: 12 layers x 8 heads x 256 wide '
                           '(an accelerator); tiny: for tests.')
  parser.add_argument('--seeds', type=int, nargs='+', default=None,
                      help='Override the seeds (at least 2; the experiment uses 3 or more).')
  parser.add_argument('--pretrain_steps', type=int, default=None, help='Override.')
  parser.add_argument('--tau', type=float, default=None, help='Override the discrete share.')
  parser.add_argument('--report_only', action='store_true',
                      help='Re-render results.md and the PNGs from output_dir/results.json '
                           'without training.')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.report_only:
    path = pathlib.Path(args.output_dir) / 'results.json'
    if not path.exists():
      print(f'promot-conjugate-synthetic: --report_only needs {path}; run the experiment first '
            'or point --output_dir at a finished run.', file=sys.stderr)
      return 2
    write_report(json.loads(path.read_text()), args.output_dir)
    return 0
  config = SIZES[args.size]
  overrides = {}
  if args.seeds is not None:
    overrides['seeds'] = tuple(args.seeds)
  if args.pretrain_steps is not None:
    overrides['pretrain_steps'] = args.pretrain_steps
  if args.tau is not None:
    overrides['tau'] = args.tau
  try:
    config = dataclasses.replace(config, **overrides)
    run(config, args.output_dir)
  except ValueError as e:
    print(f'promot-conjugate-synthetic: {e}', file=sys.stderr)
    return 2
  return 0


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()
