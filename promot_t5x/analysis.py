"""The paper's gradient analysis, as an evaluator the trainer calls every EVAL_PERIOD.

Format specialization shows in the gradients: early in fine-tuning, the
gradient on the real task and the gradient on the same inputs with shuffled
labels point the same way (both mostly teach the output format), so their
cosine is near 1; once the format is learned, the real-label gradient carries
the task's content and the cosine falls (the paper: ~1 at step 0, ~0.2 by
step 400 on RTE). `GradientAlignment` measures that cosine on the parameters
of the last decoder layer, pooled and per module as the paper reports it
(`MODULES`: the MLP, and the self-attention's query, key and value), each
averaged over the first `num_batches` batches of the task.

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
# The modules of the last decoder layer the paper reports separately: name -> parameter
# path pattern within the layer.
MODULES = {
    'mlp': r'mlp/.*',
    'query': r'self_attention/query/.*',
    'key': r'self_attention/key/.*',
    'value': r'self_attention/value/.*',
}
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


def module_cosines(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array], layer_prefix: str
                   ) -> dict[str, float]:
  """Cosine of two last-layer gradients per module of `MODULES` (and 'all', pooled).

  Args:
    a, b: flat {parameter path: gradient} over the same parameters.
    layer_prefix: the layer's path, e.g. 'decoder/layers_23/'.
  """
  out = {'all': cosine(a, b)}
  for name, pattern in MODULES.items():
    keys = [k for k in a if re.fullmatch(layer_prefix + pattern, k)]
    if not keys:
      raise ValueError(f'No parameter of {layer_prefix} matches module {name!r} ({pattern}).')
    out[name] = cosine({k: a[k] for k in keys}, {k: b[k] for k in keys})
  return out


@dataclasses.dataclass
class GradientAlignment:
  """Cosine between real-label and shuffled-label gradients on the last decoder layer.

  task: the fine-tuning task; its first `num_batches` batches of `batch_size`
  examples of `split` (fixed, so every step sees the same batches). The
  prompt is attached when the model has one (as in ProMoT stage 2's
  training). Reports `{name}/cosine` (the whole layer) and
  `{name}/{module}/cosine` for each of `MODULES`, each the mean over the batches.
  """

  task: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int = 32
  num_batches: int = 4
  split: str = 'validation'
  seed: int = 0
  module: str | None = None
  name: str = 'grad_alignment'
  sentinel_format: bool = False

  def __post_init__(self):
    if self.num_batches <= 0:
      raise ValueError(f'GradientAlignment.num_batches must be positive, got {self.num_batches}.')
    self._batches: list[Batch] | None = None
    self._grad_fn = None

  def batches(self) -> list[Batch]:
    if self._batches is None:
      cfg = data.DatasetConfig(self.task, self.task_feature_lengths, split=self.split,
                               batch_size=self.batch_size, shuffle=False, seed=self.seed,
                               module=self.module, sentinel_format=self.sentinel_format)
      stream = data.numpy_batches(data.get_dataset(cfg, num_epochs=1))
      self._batches = [b for _, b in zip(range(self.num_batches), stream)]
      if not self._batches:
        raise ValueError(f'{self.task!r} has no full batch of {self.batch_size} on split '
                         f'{self.split!r} for the gradient alignment.')
    return self._batches

  def __call__(self, model: encoder_decoder.EncoderDecoderModel, params: Any, step: int
               ) -> dict[str, float]:
    params = jax.device_get(params)
    if model.config.scan_layers:  # "the last decoder layer" by its unrolled (checkpoint) name
      params = t5.unscan_params(params, model.config)
      model = dataclasses.replace(model, module=model.module.clone(
          config=model.config.replace(scan_layers=False)))
    pattern = last_decoder_layer_pattern(params)
    if self._grad_fn is None:
      self._grad_fn = jax.jit(lambda p, b: gradient(model, p, b, pattern))
    per_batch = []
    for i, batch in enumerate(self.batches()):
      real = dict(batch)
      if model.config.prompt is not None:
        real['prompt_index'] = np.zeros((len(real['encoder_input_tokens']),), np.int32)
      shuffled = shuffle_labels(real, self.seed + i)
      per_batch.append(module_cosines(self._grad_fn(params, real), self._grad_fn(params, shuffled),
                                      pattern[:-len('.*')]))
    mean = {k: float(np.mean([c[k] for c in per_batch])) for k in per_batch[0]}
    out = {f'{self.name}/cosine': mean.pop('all')}
    out.update({f'{self.name}/{k}/cosine': v for k, v in mean.items()})
    return out


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
