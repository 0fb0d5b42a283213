"""Adafactor with T5X's semantics, learning-rate schedules, and one optimizer per parameter set.

Adafactor (Shazeer & Stern, 2018, arXiv:1804.04235) as T5X's
`t5x.adafactor.Adafactor` runs it, written as an optax-compatible
transformation (`init(params) -> state`, `update(grads, state, params) ->
(updates, state)`; apply with `optax.apply_updates`). For every leaf, with
step t = 0, 1, ... (the count before this update):

    beta2_t  = 1 - (t + 1) ** -decay_rate                  # 0 at t = 0
    g2       = g * g + epsilon1
    factored (both of the two largest axes >= min_dim_size_to_factor):
      v_row  = beta2_t * v_row + (1 - beta2_t) * mean(g2, over the column axis)  # [rows]
      v_col  = beta2_t * v_col + (1 - beta2_t) * mean(g2, over the row axis)     # [cols]
      y      = g / sqrt(v_row[:, None] * v_col[None, :] / mean(v_row))
    otherwise (vectors, scalars, small matrices):
      v      = beta2_t * v + (1 - beta2_t) * g2
      y      = g / sqrt(v)
    y       /= max(1, rms(y) / clipping_threshold)          # update clipping
    step     = lr(t) * max(rms(param), epsilon2) * y         # parameter scale (optional)
    m        = beta1 * m + (1 - beta1) * step; step = m      # momentum (optional)
    update   = -step - weight_decay_rate * param             # weight decay (optional)

The state is a plain pytree: `AdafactorState(count, param_states)`, where
`param_states` mirrors the parameter tree and holds, per leaf, a dict with
`v_row` and `v_col` (factored) or `v` (not factored), plus `m` only when
momentum is on. No placeholder arrays are stored for the unused slots (T5X
stores `(1,)` dummies). For a matrix `[rows, cols]`, `v_row` is `[rows]` and
`v_col` is `[cols]` whichever dimension is larger (T5X names them by size
instead; the estimate `v_row v_col^T / mean(v_row)` is the same either way).
Higher-rank leaves are factored over their two largest axes (later axes win
ties), the other axes kept as batch axes, as T5X's heuristic does. A scanned
layer stack (a leaf under a `layers` key, leading axis [num_layers]) is L
parameters: factoring, update clipping and the parameter scale apply per
layer, as T5X's Adafactor does with its `layers` factor rule.

Shardings of the state follow from the parameters' (`state_partition_specs`,
`state_shardings`): `v` and `m` take the parameter's spec, `v_row` the spec
without the column axis, `v_col` the spec without the row axis, the step
count is replicated. T5X replicates factored statistics; keeping them split
costs nothing and keeps per-device memory flat as the model grows.

`multi_set_optimizer` runs one optimizer per named parameter set
(`model`, `prompt`, `prompt/<name>`, see `param_sets`), so a joint run trains
the prompt at 0.2 and the model at 0.001. The trainer hands the optimizer only
the trainable leaves, and state is created only for the sets that have leaves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from promot_t5x import param_sets

PyTree = Any
Schedule = Callable[[jax.Array | int], jax.Array]
ScalarOrSchedule = float | Schedule


class GradientTransformationLike(Protocol):
  """Anything with optax's `init` / `update` pair (optax's own transformations included)."""

  def init(self, params: PyTree) -> PyTree:
    ...

  def update(self, updates: PyTree, state: PyTree, params: PyTree | None = None
             ) -> tuple[PyTree, PyTree]:
    ...


def _is_spec(x: Any) -> bool:
  return isinstance(x, PartitionSpec)


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def _padded(spec: PartitionSpec, ndim: int) -> list[Any]:
  """A PartitionSpec as a list with one entry per array dimension."""
  entries = list(spec)
  if len(entries) > ndim:
    raise ValueError(f'PartitionSpec {spec} has more entries than the array has '
                     f'dimensions ({ndim}).')
  return entries + [None] * (ndim - len(entries))


def _mean_over(x: jax.Array, axis: int) -> jax.Array:
  """jnp.mean(x, axis), with a matrix's leading axis reduced as a vector-matrix product.

  XLA:CPU reduces the leading axis of a wide matrix (the [512, 32128] logits
  kernel's second moments: 32128 sums of 512) about 3x slower than a
  `ones @ x` product of the same numbers (bench/README.md); full float32
  precision keeps the statistic exact on TPU too.
  """
  if x.ndim == 2 and axis == 0:
    ones = jnp.ones((x.shape[0],), x.dtype)
    return jnp.dot(ones, x, precision=jax.lax.Precision.HIGHEST) / x.shape[0]
  return jnp.mean(x, axis=axis)


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


# -----------------------------------------------------------------------------
# Gradient clipping.
# -----------------------------------------------------------------------------
def global_norm(tree: PyTree) -> jax.Array:
  """sqrt(sum of squares) over every leaf, in float32."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_by_global_norm(grads: PyTree, max_norm: float) -> PyTree:
  """Scales every gradient by min(1, max_norm / global_norm), as T5X's Adafactor does.

  A zero gradient stays zero (the scale is 1, not NaN).
  """
  scale = jnp.minimum(1.0, max_norm / global_norm(grads))
  return jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)


# -----------------------------------------------------------------------------
# Learning-rate schedules.
# -----------------------------------------------------------------------------
SCHEDULE_FACTORS = ('constant', 'linear_warmup', 'rsqrt_decay', 'rsqrt_normalized_decay',
                    'decay_every', 'cosine_decay')


def learning_rate_schedule(kind: str = 'constant', base: float = 1.0, warmup_steps: int = 0,
                           *, decay_factor: float = 0.5, steps_per_decay: int = 20000,
                           steps_per_cycle: int = 100000, step_offset: int = 0,
                           min_learning_rate: float = 1e-8) -> Schedule:
  """A step -> learning-rate function, T5X's `create_learning_rate_scheduler` factors.

  `kind` is a product of factors joined by '*', evaluated at
  s = max(0, step - step_offset):
    constant                 base
    linear_warmup            min(1, s / warmup_steps)   (1 when warmup_steps = 0)
    rsqrt_decay              1 / sqrt(max(s, warmup_steps))
    rsqrt_normalized_decay   sqrt(warmup_steps) / sqrt(max(s, warmup_steps))
    decay_every              decay_factor ** (s // steps_per_decay)
    cosine_decay             cyclic cosine of (s - warmup_steps) / steps_per_cycle
  and the result is floored at `min_learning_rate`, as in T5X (so a linear
  warmup starts at 1e-8, not 0).

  Examples: 'constant' (the paper: 0.001 fine-tuning, 0.2 prompt tuning);
  'constant * rsqrt_decay' with base 1.0, warmup 10000 (T5X pre-training:
  0.01 for 10k steps, then 1/sqrt(step)); 'constant * linear_warmup * rsqrt_decay'.

  Args:
    kind: factor names joined by '*'; must include 'constant' (else `base`
      would be silently ignored, as in T5X).
    base: the constant factor (learning rate units: Adafactor step scale).
    warmup_steps: steps of warmup for the warmup and decay factors.
    decay_factor, steps_per_decay: for 'decay_every'.
    steps_per_cycle: for 'cosine_decay'.
    step_offset: the schedule starts at this step (earlier steps see s = 0).
    min_learning_rate: floor of the returned value.

  Returns:
    A function of an int step (scalar, traced or not) -> float32 scalar.
  """
  factors = [f.strip() for f in kind.split('*')]
  unknown = [f for f in factors if f not in SCHEDULE_FACTORS]
  if unknown:
    raise ValueError(f'learning_rate_schedule kind={kind!r}: unknown factor(s) {unknown}; '
                     f'known factors: {SCHEDULE_FACTORS} (join them with "*").')
  if 'constant' not in factors:
    raise ValueError(f'learning_rate_schedule kind={kind!r} lacks the "constant" factor, so '
                     f'base={base} would be ignored; write "constant * {kind}".')
  if warmup_steps < 0:
    raise ValueError(f'learning_rate_schedule: warmup_steps must be >= 0, got {warmup_steps}.')
  if 'rsqrt_normalized_decay' in factors and warmup_steps <= 0:
    raise ValueError('learning_rate_schedule: rsqrt_normalized_decay needs warmup_steps > 0.')
  if 'decay_every' in factors and steps_per_decay <= 0:
    raise ValueError(f'learning_rate_schedule: steps_per_decay must be > 0, got '
                     f'{steps_per_decay}.')
  if 'cosine_decay' in factors and steps_per_cycle <= 0:
    raise ValueError(f'learning_rate_schedule: steps_per_cycle must be > 0, got '
                     f'{steps_per_cycle}.')

  def schedule(step: jax.Array | int) -> jax.Array:
    s = jnp.maximum(0, jnp.asarray(step) - step_offset).astype(jnp.float32)
    lr = jnp.ones((), jnp.float32)
    for name in factors:
      if name == 'constant':
        lr = lr * base
      elif name == 'linear_warmup':
        if warmup_steps > 0:
          lr = lr * jnp.minimum(1.0, s / warmup_steps)
      elif name == 'rsqrt_decay':
        # max(.., 1) only matters for warmup_steps = 0 at step 0 (T5X divides by 0).
        lr = lr / jnp.sqrt(jnp.maximum(s, max(warmup_steps, 1)))
      elif name == 'rsqrt_normalized_decay':
        lr = lr * math.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(s, warmup_steps))
      elif name == 'decay_every':
        lr = lr * decay_factor ** jnp.floor(s / steps_per_decay)
      elif name == 'cosine_decay':
        progress = jnp.maximum(0.0, (s - warmup_steps) / steps_per_cycle)
        lr = lr * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
    return jnp.maximum(lr, min_learning_rate).astype(jnp.float32)

  return schedule


def _learning_rate_at(learning_rate: ScalarOrSchedule, step: jax.Array) -> jax.Array:
  if callable(learning_rate):
    return jnp.asarray(learning_rate(step), jnp.float32)
  return jnp.asarray(learning_rate, jnp.float32)


# -----------------------------------------------------------------------------
# Adafactor.
# -----------------------------------------------------------------------------
class AdafactorState(NamedTuple):
  """Adafactor's state.

  count: int32 scalar, the number of updates applied so far.
  param_states: the parameter tree with each leaf replaced by a dict of
    float32 arrays: {'v_row', 'v_col'} or {'v'}, plus 'm' with momentum.
  """

  count: jax.Array
  param_states: PyTree


@dataclasses.dataclass(frozen=True)
class Adafactor:
  """Adafactor with T5X's defaults; build it with `adafactor(...)` (documented there)."""

  learning_rate: ScalarOrSchedule
  decay_rate: float = 0.8
  factored: bool = True
  min_dim_size_to_factor: int = 128
  multiply_by_parameter_scale: bool = True
  beta1: float | None = None
  clipping_threshold: float | None = 1.0
  weight_decay_rate: float | None = None
  epsilon1: float = 1e-30
  epsilon2: float = 1e-3
  step_offset: int = 0
  global_norm_clip: float | None = None

  def __post_init__(self):
    lr = self.learning_rate
    if not callable(lr) and not isinstance(lr, (int, float, np.floating, np.integer)):
      raise TypeError(f'Adafactor learning_rate must be a number or a schedule (step -> lr), '
                      f'got {type(lr).__name__}: {lr!r}.')
    if not callable(lr) and lr < 0:
      raise ValueError(f'Adafactor learning_rate must be >= 0, got {lr}.')
    if self.decay_rate <= 0:
      raise ValueError(f'Adafactor decay_rate must be > 0 (T5X: 0.8), got {self.decay_rate}.')
    if self.min_dim_size_to_factor < 1:
      raise ValueError('Adafactor min_dim_size_to_factor must be >= 1, got '
                       f'{self.min_dim_size_to_factor}.')
    if self.beta1 is not None and not 0.0 <= self.beta1 < 1.0:
      raise ValueError(f'Adafactor beta1 (momentum) must be in [0, 1) or None, got {self.beta1}.')
    if self.clipping_threshold is not None and self.clipping_threshold <= 0:
      raise ValueError('Adafactor clipping_threshold must be > 0 or None, got '
                       f'{self.clipping_threshold}.')
    if self.weight_decay_rate is not None and self.weight_decay_rate < 0:
      raise ValueError(f'Adafactor weight_decay_rate must be >= 0 or None, got '
                       f'{self.weight_decay_rate}.')
    if self.epsilon1 < 0 or self.epsilon2 < 0:
      raise ValueError(f'Adafactor epsilons must be >= 0, got epsilon1={self.epsilon1}, '
                       f'epsilon2={self.epsilon2}.')
    if self.global_norm_clip is not None and self.global_norm_clip <= 0:
      raise ValueError(f'Adafactor global_norm_clip must be > 0 or None, got '
                       f'{self.global_norm_clip}.')

  def factored_axes(self, shape: Sequence[int]) -> tuple[int, int] | None:
    """(row_axis, col_axis), row_axis < col_axis, or None for a full `v`.

    The two largest axes (later axes win ties, as T5X's argsort heuristic),
    factored only if the smaller of the two is >= min_dim_size_to_factor.
    """
    if not self.factored or len(shape) < 2:
      return None
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    row, col = sorted(order[-2:])
    if min(shape[row], shape[col]) < self.min_dim_size_to_factor:
      return None
    return row, col

  def _leaf_state_shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    shape = tuple(shape)
    axes = self.factored_axes(shape)
    if axes is None:
      out = {'v': shape}
    else:
      row, col = axes
      out = {'v_row': shape[:col] + shape[col + 1:], 'v_col': shape[:row] + shape[row + 1:]}
    if self.beta1 is not None:
      out['m'] = shape
    return out

  def _stacked_leaf_state_shapes(self, shape: Sequence[int], stacked: bool
                                 ) -> dict[str, tuple[int, ...]]:
    if not stacked:
      return self._leaf_state_shapes(shape)
    return {k: (shape[0], *s) for k, s in self._leaf_state_shapes(shape[1:]).items()}

  def init(self, params: PyTree) -> AdafactorState:
    """Zero statistics for every leaf of `params` (arrays or ShapeDtypeStructs)."""
    leaves, treedef = jax.tree.flatten(params)
    states = [{k: jnp.zeros(s, jnp.float32)
               for k, s in self._stacked_leaf_state_shapes(p.shape, stacked).items()}
              for p, stacked in zip(leaves, stacked_layer_leaves(params), strict=True)]
    return AdafactorState(count=jnp.zeros((), jnp.int32), param_states=treedef.unflatten(states))

  def update(self, updates: PyTree, state: AdafactorState, params: PyTree | None = None
             ) -> tuple[PyTree, AdafactorState]:
    """(gradients, state, params) -> (updates to add to params, new state)."""
    grads = updates
    needs_params = self.multiply_by_parameter_scale or self.weight_decay_rate is not None
    if params is None and needs_params:
      raise ValueError('Adafactor.update needs `params` when multiply_by_parameter_scale or '
                       'weight_decay_rate is on: call update(grads, state, params).')
    if self.global_norm_clip is not None:
      grads = clip_by_global_norm(grads, self.global_norm_clip)
    step = state.count
    t = jnp.maximum(step - self.step_offset, 0).astype(jnp.float32) + 1.0
    beta2 = 1.0 - t ** (-self.decay_rate)
    lr = _learning_rate_at(self.learning_rate, step)

    treedef = jax.tree.structure(grads)
    grad_leaves = treedef.flatten_up_to(grads)
    slot_leaves = treedef.flatten_up_to(state.param_states)
    param_leaves = (treedef.flatten_up_to(params) if params is not None
                    else [None] * len(grad_leaves))
    new_updates, new_slots = [], []
    for g, slots, p, stacked in zip(grad_leaves, slot_leaves, param_leaves,
                                    stacked_layer_leaves(grads), strict=True):
      if stacked:  # scanned layers: each layer's slice is its own leaf
        u, s = jax.vmap(lambda g, slots, p: self._update_leaf(g, slots, p, beta2, lr),
                        in_axes=(0, 0, None if p is None else 0))(g, slots, p)
      else:
        u, s = self._update_leaf(g, slots, p, beta2, lr)
      new_updates.append(u)
      new_slots.append(s)
    return (treedef.unflatten(new_updates),
            AdafactorState(count=step + 1, param_states=treedef.unflatten(new_slots)))

  def _update_leaf(self, grad, slots, param, beta2, lr):
    out_dtype = param.dtype if param is not None else grad.dtype
    g = grad.astype(jnp.float32)
    g2 = jnp.square(g) + self.epsilon1
    new = {}
    axes = self.factored_axes(g.shape)
    if axes is not None:
      row, col = axes
      new['v_row'] = beta2 * slots['v_row'] + (1.0 - beta2) * _mean_over(g2, col)
      new['v_col'] = beta2 * slots['v_col'] + (1.0 - beta2) * _mean_over(g2, row)
      # v_row keeps the row axis at position `row` (row < col); its mean over
      # that axis is the mean of the whole (batched) second-moment estimate.
      row_mean = jnp.mean(new['v_row'], axis=row, keepdims=True)
      row_factor = jax.lax.rsqrt(new['v_row'] / row_mean)
      col_factor = jax.lax.rsqrt(new['v_col'])
      y = g * jnp.expand_dims(row_factor, col) * jnp.expand_dims(col_factor, row)
    else:
      new['v'] = beta2 * slots['v'] + (1.0 - beta2) * g2
      y = g * jax.lax.rsqrt(new['v'])
    if self.clipping_threshold is not None:
      y = y / jnp.maximum(1.0, _rms(y) / self.clipping_threshold)
    scale = lr
    if self.multiply_by_parameter_scale:
      scale = scale * jnp.maximum(_rms(param.astype(jnp.float32)), self.epsilon2)
    step = scale * y
    if self.beta1 is not None:
      new['m'] = self.beta1 * slots['m'] + (1.0 - self.beta1) * step
      step = new['m']
    update = -step
    if self.weight_decay_rate is not None:
      update = update - self.weight_decay_rate * param.astype(jnp.float32)
    return update.astype(out_dtype), new

  def state_partition_specs(self, param_specs: PyTree, params_shapes: PyTree) -> AdafactorState:
    """PartitionSpecs of `init(params)`'s state, from the parameters' specs.

    Args:
      param_specs: the parameter tree with a PartitionSpec per leaf.
      params_shapes: the parameter tree with leaves that have `.shape`
        (arrays or ShapeDtypeStructs).

    Returns:
      An AdafactorState of PartitionSpecs: `v`/`m` as the parameter, `v_row`
      without the column axis's entry, `v_col` without the row axis's entry,
      `count` replicated.
    """
    treedef = jax.tree.structure(params_shapes)
    spec_leaves = treedef.flatten_up_to(param_specs)
    shape_leaves = treedef.flatten_up_to(params_shapes)
    out = []
    for spec, x, stacked in zip(spec_leaves, shape_leaves, stacked_layer_leaves(params_shapes),
                                strict=True):
      if not _is_spec(spec):
        raise TypeError(f'param_specs leaves must be PartitionSpecs, got {spec!r}.')
      shape = tuple(x.shape)
      entries = _padded(spec, len(shape))
      lead = []
      if stacked:  # the per-layer rule below, the [layers] axis kept in front
        lead, entries, shape = entries[:1], entries[1:], shape[1:]
      axes = self.factored_axes(shape)
      leaf = {}
      if axes is None:
        leaf['v'] = PartitionSpec(*lead, *entries)
      else:
        row, col = axes
        leaf['v_row'] = PartitionSpec(*lead, *(entries[:col] + entries[col + 1:]))
        leaf['v_col'] = PartitionSpec(*lead, *(entries[:row] + entries[row + 1:]))
      if self.beta1 is not None:
        leaf['m'] = PartitionSpec(*lead, *entries)
      out.append(leaf)
    return AdafactorState(count=PartitionSpec(), param_states=treedef.unflatten(out))


def stacked_layer_leaves(tree: PyTree) -> list[bool]:
  """Per leaf of `tree` (in `jax.tree.leaves` order): whether it is a scanned layer stack.

  Scanned layers (`T5Config.scan_layers`) keep all layers of a stack in one
  leaf under a `layers` key (`encoder/layers/mlp/wi_0/kernel` [L, embed, mlp]);
  Adafactor treats its leading axis as L separate parameters, so a scanned
  model takes exactly the steps of the unrolled one.
  """
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [any(getattr(k, 'key', None) == 'layers' for k in path) for path, _ in paths]


def adafactor(learning_rate: ScalarOrSchedule,
              decay_rate: float = 0.8,
              *,
              factored: bool = True,
              min_dim_size_to_factor: int = 128,
              multiply_by_parameter_scale: bool = True,
              beta1: float | None = None,
              clipping_threshold: float | None = 1.0,
              weight_decay_rate: float | None = None,
              epsilon1: float = 1e-30,
              epsilon2: float = 1e-3,
              step_offset: int = 0,
              global_norm_clip: float | None = None) -> Adafactor:
  """Adafactor with T5X's semantics and defaults (see the module docstring for the rule).

  Args:
    learning_rate: a float or a schedule `step -> lr` (`learning_rate_schedule`),
      evaluated at the count before the update (0 for the first update).
    decay_rate: exponent of the second-moment decay, beta2_t = 1 - (t+1)^-decay_rate.
    factored: factor the second moment of matrices into row and column statistics.
    min_dim_size_to_factor: factor only if both of the two largest dimensions
      have at least this size (T5X: 128; tiny models set it lower).
    multiply_by_parameter_scale: scale the step by max(rms(param), epsilon2),
      which makes the learning rate relative (T5X's default; prompt tuning
      turns it off).
    beta1: momentum coefficient, or None for no first moment (T5X's default).
    clipping_threshold: clip each leaf's normalized update to this RMS; None: no clipping.
    weight_decay_rate: decoupled decay, param <- (1 - rate) * param - step
      (not scaled by the learning rate, as in T5X); None: off.
    epsilon1: added to squared gradients.
    epsilon2: floor of the parameter scale.
    step_offset: the second-moment decay restarts at this step (T5X's
      option for fine-tuning from a pre-training run's optimizer state).
    global_norm_clip: clip the gradients of all leaves this optimizer sees by
      their global norm before the statistics are updated; None: off.

  Returns:
    An `Adafactor` with optax's `init`/`update` and `state_partition_specs`.
  """
  return Adafactor(learning_rate=learning_rate, decay_rate=decay_rate, factored=factored,
                   min_dim_size_to_factor=min_dim_size_to_factor,
                   multiply_by_parameter_scale=multiply_by_parameter_scale, beta1=beta1,
                   clipping_threshold=clipping_threshold,
                   weight_decay_rate=weight_decay_rate, epsilon1=epsilon1, epsilon2=epsilon2,
                   step_offset=step_offset, global_norm_clip=global_norm_clip)


# -----------------------------------------------------------------------------
# One optimizer per parameter set.
# -----------------------------------------------------------------------------
SetSpec = GradientTransformationLike | ScalarOrSchedule | Mapping[str, Any]


def _flat(tree: Any, what: str) -> dict[str, Any]:
  if not isinstance(tree, Mapping):
    raise TypeError(f'{what} must be a nested dict of parameters (path components as keys), '
                    f'got {type(tree).__name__}.')
  return param_sets.flatten(tree)


def _is_transformation(x: Any) -> bool:
  return hasattr(x, 'init') and hasattr(x, 'update')


@dataclasses.dataclass(frozen=True)
class MultiSetOptimizer:
  """One optimizer per named parameter set; build it with `multi_set_optimizer`.

  State: {set name: that set's optimizer state over the set's own leaves (a
  nested subtree of the parameters)}, only for sets with at least one leaf.
  """

  per_set: Mapping[str, GradientTransformationLike]
  labels: Mapping[str, str] | Callable[[Sequence[str]], Mapping[str, str]]
  global_norm_clip: float | None = None

  def __post_init__(self):
    if not self.per_set:
      raise ValueError('multi_set_optimizer needs at least one parameter set in per_set.')
    for name, tx in self.per_set.items():
      if not _is_transformation(tx):
        raise TypeError(f'per_set[{name!r}] must be an optimizer (init/update); got '
                        f'{type(tx).__name__}.')
    if self.global_norm_clip is not None and self.global_norm_clip <= 0:
      raise ValueError(f'global_norm_clip must be > 0 or None, got {self.global_norm_clip}.')

  def set_of_paths(self, paths: Sequence[str]) -> dict[str, str]:
    """{path: set name} for the given '/'-joined parameter paths; errors name unrouted ones."""
    table = self.labels(paths) if callable(self.labels) else self.labels
    missing = [p for p in paths if p not in table]
    if missing:
      raise ValueError(f'multi_set_optimizer: no parameter set for {missing[:5]}'
                       f'{" ..." if len(missing) > 5 else ""} (per_set has '
                       f'{sorted(self.per_set)}): add their set (e.g. "model") to per_set, '
                       'or label them.')
    unknown = sorted({table[p] for p in paths} - set(self.per_set))
    if unknown:
      raise ValueError(f'multi_set_optimizer: labels name set(s) {unknown} that per_set lacks; '
                       f'per_set has {sorted(self.per_set)}.')
    return {p: table[p] for p in paths}

  def _split(self, flat_trees: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per set (in per_set order, sets with leaves only): one nested subtree per input."""
    routing = self.set_of_paths(sorted(flat_trees[0]))
    out = {}
    for name in self.per_set:
      paths = [p for p in sorted(routing) if routing[p] == name]
      if paths:
        out[name] = [param_sets.unflatten({p: flat[p] for p in paths}) for flat in flat_trees]
    return out

  def init(self, params: PyTree) -> dict[str, Any]:
    parts = self._split([_flat(params, 'params')])
    return {name: self.per_set[name].init(sub) for name, (sub,) in parts.items()}

  def update(self, updates: PyTree, state: Mapping[str, Any], params: PyTree | None = None
             ) -> tuple[PyTree, dict[str, Any]]:
    grads = updates
    if self.global_norm_clip is not None:
      # Over every trainable leaf at once, before routing: one norm for the whole step.
      grads = clip_by_global_norm(grads, self.global_norm_clip)
    flat_grads = _flat(grads, 'grads')
    trees = [flat_grads]
    if params is not None:
      flat_params = _flat(params, 'params')
      if set(flat_params) != set(flat_grads):
        raise ValueError('multi_set_optimizer.update: params and grads have different leaves: '
                         f'{sorted(set(flat_params) ^ set(flat_grads))[:5]}.')
      trees.append(flat_params)
    parts = self._split(trees)
    if set(parts) != set(state):
      raise ValueError(f'multi_set_optimizer.update: the state holds sets {sorted(state)} but '
                       f'the gradients fall in {sorted(parts)}; re-run init for these params.')
    flat_updates, new_state = {}, {}
    for name, subs in parts.items():
      sub_grads = subs[0]
      sub_params = subs[1] if params is not None else None
      sub_updates, new_state[name] = self.per_set[name].update(sub_grads, state[name],
                                                               sub_params)
      flat_updates.update(param_sets.flatten(sub_updates))
    return param_sets.unflatten(flat_updates), new_state

  def state_partition_specs(self, param_specs: PyTree, params_shapes: PyTree
                            ) -> dict[str, Any]:
    """Per set, the inner optimizer's state specs over the set's leaves."""
    flat_specs = _flat(param_specs, 'param_specs')
    flat_shapes = _flat(params_shapes, 'params_shapes')
    parts = self._split([flat_shapes, {p: flat_specs[p] for p in flat_shapes}])
    return {name: state_partition_specs(self.per_set[name], specs, shapes)
            for name, (shapes, specs) in parts.items()}


def param_set_labels(set_names: Sequence[str],
                     extra_sets: Sequence[param_sets.ParamSet] = ()
                     ) -> Callable[[Sequence[str]], dict[str, str]]:
  """A labeller: paths -> {path: the most specific of `set_names` that matches it}.

  Names are `param_sets`' built-in sets (`model`, `prompt`, `prompt/<name>`)
  or the names of `extra_sets`; "most specific" is the longest name, as in
  `param_sets.set_of_each_param` (so 'prompt/rte' beats 'prompt').
  """
  extra = {s.name: s for s in extra_sets}

  def known(name: str) -> param_sets.ParamSet:
    if name in extra:
      return extra[name]
    if name == param_sets.MODEL_SET.name:
      return param_sets.MODEL_SET
    if name == param_sets.PROMPT_SET.name:
      return param_sets.PROMPT_SET
    if name.startswith(param_sets.PROMPT_ROOT + '/'):
      return param_sets.prompt_set(name.split('/', 1)[1])
    raise ValueError(f'Unknown parameter set {name!r}: use "model", "prompt", "prompt/<name>" '
                     f'or pass a ParamSet with that name in extra_sets (have {sorted(extra)}).')

  sets = {n: known(n) for n in set_names}

  def labeller(paths: Sequence[str]) -> dict[str, str]:
    out = {}
    for path in paths:
      names = [n for n, s in sets.items() if s.matches(path)]
      if names:
        out[path] = max(names, key=len)
    return out

  return labeller


def multi_set_optimizer(per_set: Mapping[str, SetSpec],
                        labels: Mapping[str, str] | PyTree | None = None,
                        *,
                        make_optimizer: Callable[..., GradientTransformationLike] = adafactor,
                        extra_sets: Sequence[param_sets.ParamSet] = (),
                        global_norm_clip: float | None = None) -> MultiSetOptimizer:
  """One optimizer per parameter set, e.g. prompt at 0.2 and model at 0.001 in a joint run.

  Args:
    per_set: {set name: optimizer}, where an optimizer is given as any of
      - an optax-style transformation (`adafactor(...)`, `optax.sgd(...)`);
      - a learning rate or schedule: `make_optimizer(learning_rate=value)`;
      - a dict of keyword arguments: `make_optimizer(**value)`, e.g.
        {'learning_rate': 0.2, 'multiply_by_parameter_scale': False}.
    labels: which set each parameter belongs to: a flat {'a/b/c': set name}
      dict, a nested tree of set names shaped like the parameters, or None to
      match the set names of `per_set` as `param_sets` sets by path (`model`,
      `prompt`, `prompt/<name>`, `extra_sets`), the most specific name winning.
    make_optimizer: builds an optimizer from a learning rate / kwargs.
    extra_sets: custom `ParamSet`s that per_set may name (with labels=None).
    global_norm_clip: clip all gradients together by their global norm
      before they are routed to the sets; None: off.

  Returns:
    A `MultiSetOptimizer` (optax-style `init`/`update`, `state_partition_specs`).
    Sets named in per_set whose parameters are not passed (e.g. `model` in a
    prompt-tuning run, where the trainer passes only trainable leaves) get no
    state at all.
  """
  built = {}
  for name, value in per_set.items():
    if _is_transformation(value):
      built[name] = value
    elif isinstance(value, Mapping):
      built[name] = make_optimizer(**value)
    elif callable(value) or isinstance(value, (int, float, np.floating, np.integer)):
      built[name] = make_optimizer(learning_rate=value)
    else:
      raise TypeError(f'per_set[{name!r}] must be an optimizer, a learning rate, a schedule or '
                      f'a dict of {getattr(make_optimizer, "__name__", "make_optimizer")} '
                      f'arguments; got {type(value).__name__}.')
  if labels is None:
    labeller = param_set_labels(list(built), extra_sets)
  elif isinstance(labels, Mapping):
    flat = param_sets.flatten(labels)
    bad = {p: v for p, v in flat.items() if not isinstance(v, str)}
    if bad:
      raise TypeError(f'labels must map parameter paths to set names (str); got {bad}.')
    labeller = flat
  else:
    raise TypeError(f'labels must be None, a {{path: set}} dict or a nested tree of set names; '
                    f'got {type(labels).__name__}.')
  return MultiSetOptimizer(per_set=built, labels=labeller, global_norm_clip=global_norm_clip)


# -----------------------------------------------------------------------------
# Shardings of the optimizer state.
# -----------------------------------------------------------------------------
def state_partition_specs(optimizer: GradientTransformationLike, param_specs: PyTree,
                          params_shapes: PyTree) -> PyTree:
  """PartitionSpecs for `optimizer.init(params)`, derived from the parameters' specs.

  Adafactor and MultiSetOptimizer derive theirs (factored statistics
  included). For any other optax transformation, every part of the state
  that mirrors the parameter tree (same structure and shapes: momentum,
  Adam's moments) takes the parameters' specs and every other leaf (counts)
  is replicated.

  Args:
    optimizer: the optimizer whose state is to be placed.
    param_specs: the parameter tree with a PartitionSpec per leaf.
    params_shapes: the parameter tree of arrays or ShapeDtypeStructs.

  Returns:
    A tree shaped like the optimizer's state, with PartitionSpec leaves.
  """
  params_shapes = nn.unbox(params_shapes)
  own = getattr(optimizer, 'state_partition_specs', None)
  if own is not None:
    return own(param_specs, params_shapes)
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_shapes)
  abstract_state = jax.eval_shape(optimizer.init, abstract_params)
  params_def = jax.tree.structure(abstract_params)
  shapes = [tuple(x.shape) for x in jax.tree.leaves(abstract_params)]

  def mirrors_params(node: Any) -> bool:
    leaves, node_def = jax.tree.flatten(node)
    return node_def == params_def and [tuple(getattr(x, 'shape', ())) for x in leaves] == shapes

  return jax.tree.map(lambda node: param_specs if mirrors_params(node) else PartitionSpec(),
                      abstract_state, is_leaf=mirrors_params)


def state_shardings(optimizer: GradientTransformationLike, abstract_params: PyTree,
                    partitioner: Any) -> PyTree:
  """NamedShardings of the optimizer state for boxed (logically named) parameters.

  Args:
    optimizer: the optimizer that will see exactly these parameters (pass the
      trainable subset: `param_sets.split(boxed_params, stage)[0]`).
    abstract_params: boxed parameters (`nn.LogicallyPartitioned` leaves), e.g.
      from `t5.abstract_params`; their logical names give the specs.
    partitioner: a `promot_t5x.partitioning.Partitioner`.

  Returns:
    A tree shaped like `optimizer.init(nn.unbox(abstract_params))` with a
    NamedSharding on `partitioner.mesh` per leaf.
  """
  leaves = jax.tree.leaves(abstract_params, is_leaf=_is_box)
  if leaves and not all(_is_box(x) for x in leaves):
    raise TypeError('state_shardings needs boxed parameters (nn.LogicallyPartitioned leaves, as '
                    't5.abstract_params returns) to know their logical axes; for unboxed ones '
                    'call state_partition_specs with explicit PartitionSpecs.')
  specs = state_partition_specs(optimizer, partitioner.param_specs(abstract_params),
                                nn.unbox(abstract_params))
  return jax.tree.map(partitioner.sharding, specs, is_leaf=_is_spec)

