"""The paper's gradient analysis, as an evaluator the trainer calls every EVAL_PERIOD.

Format specialization shows in the gradients: early in fine-tuning, the
gradient on the real task and the gradient on the same inputs with shuffled
labels point the same way (both mostly teach the output format), so their
cosine is near 1; once the format is learned, the real-label gradient carries
the task's content and the cosine falls (the paper: ~1 at step 0, ~0.2 by
step 400 on RTE). `GradientAlignment` measures that cosine on the parameters
of the last decoder layer.

`CombinedEvaluator` runs several evaluators (e.g. this one and the few-shot
`evaluation.TrainingEvaluator`) at the same steps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from promot_t5x import data, param_sets
from promot_t5x.models import encoder_decoder, t5

Batch = dict[str, np.ndarray]
_TARGET_KEYS = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')


def shuffle_labels(batch: Mapping[str, np.ndarray], seed: int = 0) -> Batch:
  """The same inputs with the targets permuted across examples (a derangement)."""
  n = len(batch['encoder_input_tokens'])
  if n < 2:
    raise ValueError('Shuffling labels needs a batch of at least 2 examples.')
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n)
  while np.any(perm == np.arange(n)):  # every example gets another example's target
    perm = rng.permutation(n)
  out = {k: np.asarray(v) for k, v in batch.items()}
  for key in _TARGET_KEYS:
    if key in out:
      out[key] = out[key][perm]
  return out


def last_decoder_layer_pattern(params: Mapping[str, Any]) -> str:
  layers = [int(m.group(1)) for p in param_sets.flatten(params)
            if (m := re.match(r'decoder/layers_(\d+)/', p))]
  if not layers:
    raise ValueError('The parameters have no decoder layers.')
  return rf'decoder/layers_{max(layers)}/.*'


def gradient(model: encoder_decoder.EncoderDecoderModel, params: Any, batch: Mapping[str, Any],
             pattern: str) -> dict[str, jax.Array]:
  """d(loss)/d(params matching `pattern`) on `batch` (no dropout), as a flat dict."""
  flat = param_sets.flatten(params)
  chosen = {p: v for p, v in flat.items() if re.fullmatch(pattern, p)}
  if not chosen:
    raise ValueError(f'No parameter matches {pattern!r}.')
  rest = {p: v for p, v in flat.items() if p not in chosen}

  def loss(sub):
    full = param_sets.unflatten({**rest, **sub})
    return model.loss_fn(full, batch, None)[0]

  return jax.grad(loss)(chosen)


def cosine(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> float:
  dot = sum(jnp.vdot(a[k], b[k]) for k in a)
  na = jnp.sqrt(sum(jnp.vdot(a[k], a[k]) for k in a))
  nb = jnp.sqrt(sum(jnp.vdot(b[k], b[k]) for k in b))
  return float(dot / jnp.maximum(na * nb, 1e-30))


@dataclasses.dataclass
class GradientAlignment:
  """Cosine between real-label and shuffled-label gradients on the last decoder layer.

  task: the fine-tuning task; its first `batch_size` examples of `split`
  (fixed, so every step sees the same batch). The prompt is attached when the
  model has one (as in ProMoT stage 2's training).
  """

  task: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int = 32
  split: str = 'validation'
  seed: int = 0
  module: str | None = None
  name: str = 'grad_alignment'

  def __post_init__(self):
    self._batch: Batch | None = None
    self._grad_fn = None

  def batch(self) -> Batch:
    if self._batch is None:
      cfg = data.DatasetConfig(self.task, self.task_feature_lengths, split=self.split,
                               batch_size=self.batch_size, shuffle=False, seed=self.seed,
                               module=self.module)
      self._batch = next(data.numpy_batches(data.get_dataset(cfg, num_epochs=1)))
    return self._batch

  def __call__(self, model: encoder_decoder.EncoderDecoderModel, params: Any, step: int
               ) -> dict[str, float]:
    real = dict(self.batch())
    if model.config.prompt is not None:
      real['prompt_index'] = np.zeros((len(real['encoder_input_tokens']),), np.int32)
    shuffled = shuffle_labels(real, self.seed)
    params = jax.device_get(params)
    if model.config.scan_layers:  # "the last decoder layer" by its unrolled (checkpoint) name
      params = t5.unscan_params(params, model.config)
      model = dataclasses.replace(model, module=model.module.clone(
          config=model.config.replace(scan_layers=False)))
    pattern = last_decoder_layer_pattern(params)
    if self._grad_fn is None:
      self._grad_fn = jax.jit(lambda p, b: gradient(model, p, b, pattern))
    g_real = self._grad_fn(params, real)
    g_shuffled = self._grad_fn(params, shuffled)
    return {f'{self.name}/cosine': cosine(g_real, g_shuffled)}


@dataclasses.dataclass
class CombinedEvaluator:
  """Runs each evaluator at the same step and merges their metrics."""

  evaluators: Sequence[Any]

  def __call__(self, model: encoder_decoder.EncoderDecoderModel, params: Any, step: int
               ) -> dict[str, float]:
    out: dict[str, float] = {}
    for evaluator in self.evaluators:
      for k, v in evaluator(model, params, step).items():
        if k in out:
          raise ValueError(f'Two evaluators report {k!r}; give them different names.')
        out[k] = float(v)
    return out
