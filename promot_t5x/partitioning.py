"""Device mesh, logical-axis rules, and shardings of parameters and batches.

The model names every parameter dimension with a logical axis (`vocab`,
`embed`, `mlp`, `heads`, `kv`, `joined_kv`, `relpos_buckets`, `prompt`,
`prompt_embed`, and `layers` for scanned stacks) and every activation with
`batch`, `length`, ... . The rules below map logical names to the axes of a
`('data', 'model')` mesh, as T5X's `standard_logical_axis_rules` do: the batch
is split over `data`; the vocabulary, MLP and attention heads over `model`; the
rest is replicated, or, with `parameter_partitioning_dims=2`, parameters'
`embed` dimension over `data` too.

The same code runs on 1 CPU, 8 fake CPU devices
(`--xla_force_host_platform_device_count=8`), a GPU host or a TPU pod. A
dimension that the mesh axis does not divide is replicated instead (and
reported as such), so a model with 6 heads still runs on `model=4`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = tuple[tuple[str, str | None], ...]

def standard_logical_axis_rules(parameter_partitioning_dims: int = 1) -> LogicalRules:
  """T5X's standard logical-axis rules.

  Args:
    parameter_partitioning_dims: 1 shards parameters over `model` only
      (vocab, mlp, heads, joined_kv), replicating them over `data`; 2 also
      shards their `embed` dimension over `data`, as T5X's
      `parameter_partitioning_dims=2` does: every 2-D kernel is split over the
      whole mesh, and so are its gradients and optimizer state (factored
      Adafactor rows and columns keep their dimension's axis). Activations are
      unchanged: their `batch` takes `data` first (rules apply in order and
      a mesh axis is used once per array), so their `embed` stays whole.

  Returns:
    (logical name, mesh axis or None) pairs, in order of precedence.
  """
  if parameter_partitioning_dims not in (1, 2):
    raise ValueError(f'parameter_partitioning_dims must be 1 or 2 (T5X\'s values), got '
                     f'{parameter_partitioning_dims}.')
  return (
      ('batch', 'data'),
      ('vocab', 'model'),
      ('mlp', 'model'),
      ('heads', 'model'),
      ('joined_kv', 'model'),
      ('kv', None),
      ('embed', 'data' if parameter_partitioning_dims == 2 else None),
      ('relpos_buckets', None),
      ('length', None),
      ('layers', None),  # the stacked axis of scanned layers
      ('prompt', None),
      ('prompt_embed', None),
  )


# T5X's standard rules with 1-D parameter and activation partitioning.
STANDARD_LOGICAL_AXIS_RULES: LogicalRules = standard_logical_axis_rules(1)

MESH_AXES = ('data', 'model')


def make_mesh(data: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `('data', 'model')` mesh; `data=-1` takes every device not used by `model`.

  Built with `Mesh` directly so that both axes are of the Auto kind (jit
  propagates shardings), unlike `jax.make_mesh`'s explicit default. The devices
  are laid out by `device_grid` (the interconnect's topology on TPU and GPU).

  Args:
    data: the `data` axis size, or -1 for every device `model` leaves.
    model: the `model` axis size.
    devices: the devices to use (default: all of them).

  Returns:
    The mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model <= 0:
    raise ValueError(f'mesh model dimension must be positive, got {model}.')
  if data == -1:
    if len(devices) % model:
      raise ValueError(f'{len(devices)} devices cannot be split into model={model} groups.')
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(f'Mesh data={data} x model={model} needs {data * model} devices; '
                     f'{len(devices)} are available. Set MESH_DATA/MESH_MODEL (or '
                     'partitioning.make_mesh.data/model) to match.')
  return Mesh(device_grid(data, model, devices), MESH_AXES)


def device_grid(data: int, model: int, devices: Sequence[jax.Device]) -> np.ndarray:
  """The `[data, model]` array of devices for a mesh, laid out along the interconnect.

  TPU and GPU devices go through `jax.experimental.mesh_utils`: the `model` axis
  (the most communication) on neighbouring chips of the TPU torus, GPUs in their
  global order; devices of several TPU slices form a hybrid mesh with the slices
  along `data` (DCN carries only the data-parallel gradient reduction). CPU devices,
  fake ones included (--xla_force_host_platform_device_count), have no topology:
  their order is kept. If the topology cannot be mapped to the requested shape
  (an odd shape on a TPU torus), the devices' order is kept and a warning logged.

  Args:
    data: rows (the `data` axis).
    model: columns (the `model` axis).
    devices: exactly data * model devices.

  Returns:
    An object array of devices, shape [data, model].
  """
  devices = list(devices)
  if devices[0].platform == 'cpu':
    return np.asarray(devices, dtype=object).reshape(data, model)
  slices = sorted({getattr(d, 'slice_index', 0) or 0 for d in devices})
  try:
    if len(slices) > 1 and data % len(slices) == 0:
      return mesh_utils.create_hybrid_device_mesh((data // len(slices), model), (len(slices), 1), devices)
    try:
      return mesh_utils.create_device_mesh((data, model), devices)
    except (ValueError, NotImplementedError, AssertionError):
      return mesh_utils.create_device_mesh((data, model), devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError) as e:
    logging.warning('No topology-aware layout for mesh data=%d x model=%d on %s (%s); using the '
                    'devices in their listed order.', data, model, devices[0].device_kind, e)
    return np.asarray(devices, dtype=object).reshape(data, model)


def abstract_mesh(data: int, model: int) -> jax.sharding.AbstractMesh:
  """A mesh of the given shape with no devices behind it, for planning."""
  return jax.sharding.AbstractMesh((data, model), MESH_AXES,
                                   axis_types=(jax.sharding.AxisType.Auto,) * 2)


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: LogicalRules,
                         mesh_shape: dict[str, int] | None = None,
                         shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec of mesh axes.

  A mesh axis is used at most once per array (the first dimension that asks
  for it wins). When `shape` and `mesh_shape` are given, a dimension that the
  mesh axis does not divide is replicated.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    axis = table.get(name) if name is not None else None
    if axis is not None and axis in used:
      axis = None
    if (axis is not None and shape is not None and mesh_shape is not None
        and shape[i] % mesh_shape[axis]):
      axis = None
    if axis is not None:
      used.add(axis)
    spec.append(axis)
  return PartitionSpec(*spec)


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def logical_axes(boxed_params: Any) -> Any:
  """Tree of logical-axis tuples, one per parameter (from the boxed init)."""
  return jax.tree_util.tree_map(lambda b: tuple(b.names), boxed_params, is_leaf=_is_box)


@dataclasses.dataclass
class Partitioner:
  """Places parameters, optimizer state and batches on a mesh by logical rules."""

  mesh: Mesh | jax.sharding.AbstractMesh
  rules: LogicalRules = STANDARD_LOGICAL_AXIS_RULES

  def __post_init__(self):
    self.rules = tuple((str(k), None if v is None else str(v)) for k, v in self.rules)
    for name, axis in self.rules:
      if axis is not None and axis not in self.mesh.axis_names:
        raise ValueError(f'Logical rule ({name!r}, {axis!r}) names a mesh axis the mesh '
                         f'lacks; mesh axes are {self.mesh.axis_names}.')

  @property
  def mesh_shape(self) -> dict[str, int]:
    return dict(self.mesh.shape)

  def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None
           ) -> PartitionSpec:
    return logical_to_mesh_spec(logical, self.rules, self.mesh_shape, shape)

  def sharding(self, spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def param_specs(self, boxed_params: Any) -> Any:
    """PartitionSpec per parameter, from the boxes' logical names and shapes."""
    return jax.tree_util.tree_map(
        lambda b: self.spec(b.names, b.value.shape), boxed_params, is_leaf=_is_box)

  def param_shardings(self, boxed_params: Any) -> Any:
    return jax.tree_util.tree_map(self.sharding, self.param_specs(boxed_params),
                                  is_leaf=lambda x: isinstance(x, PartitionSpec))

  def data_spec(self, ndim: int = 2) -> PartitionSpec:
    """Batches: the leading (batch) dimension over `data`, the rest replicated."""
    return PartitionSpec(dict(self.rules).get('batch'), *([None] * (ndim - 1)))

  def data_sharding(self, ndim: int = 2) -> NamedSharding:
    return self.sharding(self.data_spec(ndim))

  def replicated(self) -> NamedSharding:
    return self.sharding(PartitionSpec())

  @contextlib.contextmanager
  def activate(self) -> Iterator[None]:
    """Context in which the model's logical activation constraints take effect."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def data_layout(self) -> DataLayout:
    """Which shard of the training data this process loads (see `data_layout`)."""
    batch_axis = dict(self.rules).get('batch')
    grid = np.vectorize(lambda d: d.process_index, otypes=[int])(self.mesh.devices)
    if batch_axis is None:  # the batch is replicated: one shard for all
      rows = grid.reshape(1, -1)
    else:
      rows = np.moveaxis(grid, self.mesh.axis_names.index(batch_axis), 0)
      rows = rows.reshape(rows.shape[0], -1)
    return data_layout(rows, jax.process_index())

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays split over `data`.

    On one process the local batch is the global batch; on several, each
    process passes the shard `data_layout()` names (`seqio.ShardInfo`), and
    processes holding the same rows of the batch pass the same shard.
    """
    shards = self.data_layout().num_shards
    out = {}
    for k, v in batch.items():
      v = np.asarray(v)
      out[k] = jax.make_array_from_process_local_data(
          self.data_sharding(v.ndim), v, (v.shape[0] * shards, *v.shape[1:]))
    return out

  def describe(self, boxed_params: Any) -> list[tuple[str, tuple[int, ...], tuple, PartitionSpec]]:
    """[(path, shape, logical axes, mesh spec)] for every parameter."""
    from promot_t5x import param_sets  # local import: avoid a cycle at import time
    flat = param_sets.flatten(jax.tree_util.tree_map(lambda b: b, boxed_params, is_leaf=_is_box))
    rows = []
    for path, box in sorted(flat.items(), key=lambda kv: natural_key(kv[0])):
      shape = tuple(box.value.shape)
      rows.append((path, shape, tuple(box.names), self.spec(box.names, shape)))
    return rows


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """This process's part of every global batch: shard `shard_index` of `num_shards`."""

  shard_index: int
  num_shards: int


def data_layout(rows: np.ndarray, process_index: int) -> DataLayout:
  """The data shard of `process_index`, given the process of each device by batch row.

  rows: `[batch-axis size, other devices]` process indices of the mesh's
  devices, the batch axis first. The global batch is split over the batch
  axis; processes whose devices sit on the same positions of it (a model axis
  spanning hosts, e.g. MESH_MODEL=8 over TPU hosts of 4 chips) feed the same
  rows and so load the same shard. Shards are numbered by their first row.
  Raises ValueError where processes share some batch positions but not all
  (the mesh's device order splits a process across rows unevenly).
  """
  positions: dict[int, set[int]] = {}
  for row, procs in enumerate(np.asarray(rows)):
    for p in procs:
      positions.setdefault(int(p), set()).add(row)
  groups = sorted({frozenset(v) for v in positions.values()}, key=min)
  for i, a in enumerate(groups):
    for b in groups[i + 1:]:
      if a & b:
        raise ValueError(
            f'Processes {sorted(p for p, v in positions.items() if v == a)} and '
            f'{sorted(p for p, v in positions.items() if v == b)} share the batch positions '
            f'{sorted(a & b)} of the mesh but not all of theirs ({sorted(a)} vs {sorted(b)}): '
            'each process must hold whole rows of the data axis, or exactly the rows of the '
            'processes it shares them with. Choose MESH_DATA/MESH_MODEL so that a host\'s '
            'devices fill whole rows (MESH_MODEL a multiple or divisor of the devices per host).')
  if len({len(g) for g in groups}) > 1:
    raise ValueError(f'Processes hold different numbers of batch rows {sorted(map(sorted, groups))}; '
                     'every process must feed the same share of the batch.')
  if process_index not in positions:
    raise ValueError(f'Process {process_index} has no device in the mesh.')
  return DataLayout(groups.index(frozenset(positions[process_index])), len(groups))


def natural_key(path: str) -> list:
  """Sort key that puts layers_2 before layers_10."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path)]


def shard_shape(shape: Sequence[int], spec: PartitionSpec, mesh_shape: dict[str, int]
                ) -> tuple[int, ...]:
  """Per-device shape of an array of `shape` placed by `spec`."""
  out = []
  for i, d in enumerate(shape):
    axis = spec[i] if i < len(spec) else None
    out.append(d // mesh_shape[axis] if axis else d)
  return tuple(out)
