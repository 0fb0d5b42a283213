"""Train state and the jitted, sharded train and eval steps.

The stage (`param_sets.Stage`) splits the parameters into a trainable and a
frozen tree. The train step differentiates the loss with respect to the
trainable tree only, and the optimizer's state exists only for it: stage 1
(prompt tuning) on mT5 XXL computes no weight gradients for the 13B frozen
parameters and keeps no Adafactor state for them. Frozen parameters pass
through the step untouched.

Everything is placed by the partitioner's logical-axis rules: parameters
and optimizer state by their logical axes, batches over `data`. The same
step runs on one CPU, 8 fake CPU devices, or a pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from promot_t5x import optimizers, param_sets, partitioning
from promot_t5x.models import encoder_decoder

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; trainable/frozen: disjoint nested param trees."""

  step: jax.Array
  trainable: PyTree
  frozen: PyTree
  opt_state: PyTree

  @property
  def params(self) -> PyTree:
    return param_sets.merge(self.trainable, self.frozen)


def _tree_map_boxes(fn, tree):
  return jax.tree_util.tree_map(fn, tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


class Trainer:
  """The two-stage trainer: one stage, one optimizer, one partitioner.

  model: EncoderDecoderModel; stage: which parameter sets train;
  optimizer: an optax-style transformation applied to the trainable tree
  (`optimizers.adafactor(...)` or `optimizers.multi_set_optimizer(...)`);
  num_microbatches: gradient accumulation (the batch is split into this many
  equal parts whose summed gradients equal the full batch's).
  """

  def __init__(self, model: encoder_decoder.EncoderDecoderModel, stage: param_sets.Stage,
               optimizer: Any, partitioner: partitioning.Partitioner,
               num_microbatches: int | None = None, dropout_seed: int = 0,
               max_grad_norm: float | None = None):
    self.model = model
    self.stage = stage
    self.optimizer = optimizer
    self.partitioner = partitioner
    self.num_microbatches = num_microbatches or 1
    if self.num_microbatches <= 0:
      raise ValueError(f'num_microbatches must be positive, got {num_microbatches}.')
    self.dropout_seed = dropout_seed
    self.max_grad_norm = max_grad_norm
    self.use_dropout = model.config.dropout_rate > 0

    boxed = model.abstract_params()
    self.param_axes = partitioning.logical_axes(boxed)
    self.abstract_params = nn.unbox(boxed)
    self.trainable_mask = param_sets.trainable_paths(self.abstract_params, stage)
    self.param_specs = partitioner.param_specs(boxed)
    abstract_trainable, abstract_frozen = param_sets.split(self.abstract_params, stage)
    specs_trainable, specs_frozen = param_sets.split(self.param_specs, stage)
    self._abstract_trainable = abstract_trainable
    self._specs = TrainState(
        step=partitioning.PartitionSpec(),
        trainable=specs_trainable,
        frozen=specs_frozen,
        opt_state=optimizers.state_partition_specs(optimizer, specs_trainable,
                                                   abstract_trainable))
    self.state_shardings = jax.tree_util.tree_map(
        partitioner.sharding, self._specs,
        is_leaf=lambda x: isinstance(x, partitioning.PartitionSpec))
    self._train_step = None
    self._eval_step = None

  # -- state -----------------------------------------------------------------------
  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with shardings: the target of a checkpoint restore."""
    shapes = jax.eval_shape(self._make_state, self.abstract_params)
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes, self.state_shardings)

  def _make_state(self, params: PyTree) -> TrainState:
    trainable, frozen = param_sets.split(params, self.stage)
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                      opt_state=self.optimizer.init(trainable))

  def create_state(self, params: PyTree) -> TrainState:
    """A fresh state from full parameters, placed on the mesh.

    Leaves may be host arrays (numpy) or jax.Arrays; jax.Arrays already laid
    out with the state's shardings (what `train` restores) stay where they are,
    so a multi-process run never gathers a parameter onto one host.
    """
    def float32(x):
      if isinstance(x, jax.Array):
        return x if x.dtype == jnp.float32 else x.astype(jnp.float32)
      return np.asarray(x, np.float32)

    params = jax.tree_util.tree_map(float32, params)
    self.check_params(params)
    param_shardings = param_sets.merge(self.state_shardings.trainable,
                                       self.state_shardings.frozen)
    placed = jax.device_put(params, param_shardings)
    make = jax.jit(self._make_state, out_shardings=self.state_shardings)
    with self.partitioner.activate():
      return make(placed)

  def state_from_parts(self, params: PyTree, opt_state: PyTree, step: int) -> TrainState:
    trainable, frozen = param_sets.split(params, self.stage)
    return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32),
                                          self.state_shardings.step),
                      trainable=trainable, frozen=frozen, opt_state=opt_state)

  def check_params(self, params: PyTree) -> None:
    want = param_sets.flatten(self.abstract_params)
    got = param_sets.flatten(params)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = [f'{p}: given {tuple(got[p].shape)} vs model {tuple(want[p].shape)}'
             for p in sorted(set(want) & set(got)) if tuple(got[p].shape) != tuple(want[p].shape)]
    if missing or extra or wrong:
      raise ValueError(f'Parameters do not fit the model: missing {missing}, extra {extra}, '
                       f'wrong shape {wrong}.')

  # -- steps ------------------------------------------------------------------------
  def dropout_key(self) -> jax.Array:
    """Dropout's base key: the compiled step's third argument (not a constant in it), so
    runs that differ only in their seed share one program (and the compilation cache).
    A step compiled from `lower_train_step` is called as `(state, batch, dropout_key())`."""
    return jax.device_put(jax.random.PRNGKey(self.dropout_seed), self.partitioner.replicated())

  def _dropout_rng(self, key: jax.Array | None, step: jax.Array,
                   micro: int | jax.Array = 0) -> jax.Array | None:
    if not self.use_dropout or key is None:
      return None
    return jax.random.fold_in(jax.random.fold_in(key, step), micro)

  def _grads(self, trainable: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array],
             step: jax.Array, dropout_key: jax.Array | None = None
             ) -> tuple[PyTree, dict[str, jax.Array]]:
    """Summed-loss gradients w.r.t. the trainable tree, accumulated over microbatches."""

    def summed_loss(train, micro_batch, rng):
      params = param_sets.merge(train, frozen)
      _, metrics = self.model.loss_fn(params, micro_batch, rng)
      return metrics['loss_sum'], metrics

    grad_fn = jax.grad(summed_loss, has_aux=True)
    n = self.num_microbatches
    if n == 1:
      return grad_fn(trainable, batch, self._dropout_rng(dropout_key, step))

    def split(x):
      if x.shape[0] % n:
        raise ValueError(f'Batch of {x.shape[0]} is not divisible into {n} microbatches.')
      return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    micro = jax.tree_util.tree_map(split, dict(batch))

    def body(carry, xs):
      grads_acc, metrics_acc = carry
      i, mb = xs
      g, m = grad_fn(trainable, mb, self._dropout_rng(dropout_key, step, i))
      return (jax.tree_util.tree_map(jnp.add, grads_acc, g),
              jax.tree_util.tree_map(jnp.add, metrics_acc, m)), None

    zeros_g = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    zeros_m = {k: jnp.zeros((), jnp.float32)
               for k in ('loss_sum', 'z_loss_sum', 'weight_sum', 'correct')}
    (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (jnp.arange(n), micro))
    return grads, metrics

  def _normalizer(self, weight_sum: jax.Array) -> jax.Array:
    factor = self.model.loss_normalizing_factor
    if factor in ('NUM_REAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE'):
      return jnp.maximum(weight_sum, 1.0)
    if factor == 'NONE':
      return jnp.ones_like(weight_sum)
    return jnp.asarray(float(factor), jnp.float32)

  def _train_step_impl(self, state: TrainState, batch: Mapping[str, jax.Array],
                       dropout_key: jax.Array | None = None
                       ) -> tuple[TrainState, dict[str, jax.Array]]:
    grads, metrics = self._grads(state.trainable, state.frozen, batch, state.step, dropout_key)
    norm = self._normalizer(metrics['weight_sum'])
    grads = jax.tree_util.tree_map(lambda g: g / norm, grads)
    grad_norm = optimizers.global_norm(grads)
    if self.max_grad_norm:
      grads = optimizers.clip_by_global_norm(grads, self.max_grad_norm)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.trainable)
    trainable = jax.tree_util.tree_map(lambda p, u: (p + u).astype(p.dtype),
                                       state.trainable, updates)
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    metrics = dict(metrics)
    metrics['loss'] = metrics['loss_sum'] / norm
    metrics['grad_norm'] = grad_norm
    # A non-finite update would poison the parameters even while the loss of
    # this step is still finite; the host checks both before any save.
    metrics['update_norm'] = optimizers.global_norm(updates)
    return new_state, metrics

  def _batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: self.partitioner.data_sharding(np.ndim(v)) for k, v in batch.items()}

  def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch (already placed by `shard_batch`)."""
    if self._train_step is None:
      self._train_step = jax.jit(
          self._train_step_impl,
          in_shardings=(self.state_shardings, self._batch_shardings(batch),
                        self.partitioner.replicated()),
          out_shardings=(self.state_shardings, self.partitioner.replicated()),
          donate_argnums=(0,))
      self._key = self.dropout_key()
    with self.partitioner.activate():
      return self._train_step(state, batch, self._key)

  def lower_train_step(self, state: TrainState, batch: Mapping[str, Any]):
    """The lowered (not compiled) train step for abstract inputs: memory planning."""
    step = jax.jit(self._train_step_impl,
                   in_shardings=(self.state_shardings, self._batch_shardings(batch),
                                 self.partitioner.replicated()),
                   out_shardings=(self.state_shardings, self.partitioner.replicated()),
                   donate_argnums=(0,))
    with self.partitioner.activate():
      return step.lower(state, batch, jax.ShapeDtypeStruct((2,), jnp.uint32))

  def _eval_step_impl(self, params: PyTree, batch: Mapping[str, jax.Array]
                      ) -> dict[str, jax.Array]:
    _, metrics = self.model.loss_fn(params, batch, None)
    return metrics

  def eval_step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Summed loss metrics of a batch (no dropout, no update)."""
    if self._eval_step is None:
      param_shardings = param_sets.merge(self.state_shardings.trainable,
                                         self.state_shardings.frozen)
      self._eval_step = jax.jit(
          self._eval_step_impl,
          in_shardings=(param_shardings, self._batch_shardings(batch)),
          out_shardings=self.partitioner.replicated())
    with self.partitioner.activate():
      return self._eval_step(state.params, batch)


def describe_params(trainer: Trainer) -> str:
  """model-info.txt: every parameter's shape, logical axes, mesh axes, set, role."""
  sets = param_sets.set_of_each_param(trainer.abstract_params, trainer.stage)
  flat_abs = param_sets.flatten(trainer.abstract_params)
  flat_axes = param_sets.flatten(trainer.param_axes)
  flat_specs = param_sets.flatten(trainer.param_specs)
  rows = []
  total = trainable = 0
  for path in sorted(flat_abs, key=partitioning.natural_key):
    shape = tuple(flat_abs[path].shape)
    count = int(np.prod(shape))
    total += count
    is_trainable = trainer.trainable_mask[path]
    trainable += count if is_trainable else 0
    spec = flat_specs[path]
    mesh_axes = tuple(spec) + (None,) * (len(shape) - len(spec))
    rows.append(f'{path:<60} {str(shape):<16} {count:>13,}  {str(flat_axes[path]):<28} '
                f'{str(mesh_axes):<20} {sets[path]:<14} '
                f'{"trainable" if is_trainable else "frozen"}')
  mesh = trainer.partitioner.mesh_shape
  header = [f'stage: {trainer.stage.name} (trains {list(trainer.stage.trainable)}, frozen '
            f'{list(trainer.stage.frozen)}, prompt in training: {trainer.stage.use_prompt})',
            f'mesh: {mesh}',
            f'parameters: {total:,} total, {trainable:,} trainable, {total - trainable:,} frozen',
            '',
            f'{"parameter":<60} {"shape":<16} {"count":>13}  {"logical axes":<28} '
            f'{"mesh axes":<20} {"set":<14} role']
  return '\n'.join(header + rows) + '\n'
