"""partitioning.make_mesh / device_grid: topology-aware layouts, CPU devices in their order."""

import dataclasses

import jax
import numpy as np
import pytest

from promot_t5x import partitioning


def test_cpu_devices_keep_their_order_on_every_mesh_shape():
  devices = jax.devices()
  assert len(devices) == 8 and devices[0].platform == 'cpu'  # conftest's fake devices
  for data, model in ((8, 1), (4, 2), (2, 4), (1, 8)):
    mesh = partitioning.make_mesh(data, model)
    assert mesh.axis_names == ('data', 'model') and mesh.devices.shape == (data, model)
    assert [d.id for d in mesh.devices.flat] == [d.id for d in devices]


@dataclasses.dataclass(frozen=True)
class _FakeGpu:
  """What mesh_utils reads of a device: platform, kind, global id, process."""

  id: int
  process_index: int
  platform: str = 'gpu'
  device_kind: str = 'fake-gpu'


def test_gpus_go_through_mesh_utils_in_their_global_order():
  # Devices listed by process (as jax.devices() may), ids interleaved across processes.
  devices = [_FakeGpu(i, i % 2) for i in (0, 2, 4, 6, 1, 3, 5, 7)]
  grid = partitioning.device_grid(4, 2, devices)
  assert grid.shape == (4, 2)
  assert [d.id for d in grid.flat] == list(range(8))  # mesh_utils' layout, not the listed order


def test_a_wrong_device_count_names_the_fix():
  with pytest.raises(ValueError, match='MESH_DATA/MESH_MODEL'):
    partitioning.make_mesh(3, 2)
  with pytest.raises(ValueError, match='cannot be split'):
    partitioning.make_mesh(-1, 3)


def test_the_mesh_shards_a_batch_over_data():
  mesh = partitioning.make_mesh(4, 2)
  x = jax.device_put(np.arange(16.0).reshape(8, 2),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  assert {s.data.shape for s in x.addressable_shards} == {(2, 2)}
