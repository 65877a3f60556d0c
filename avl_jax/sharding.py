"""Device mesh and shardings from the config.

`config.mesh` is a tuple of (axis_name, size) pairs, e.g. (('data', -1),); one size may be -1 (all remaining
devices). The batch is split over the 'data' axis; parameters are replicated (AVGN-sized models fit on every
device). Hosts feed their local shard and `host_to_global` assembles global arrays.
"""
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(mesh_axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a Mesh from (name, size) pairs; a single -1 size takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(name for name, _ in mesh_axes)
  if DATA_AXIS not in names:
    raise ValueError(f"config.mesh must contain a {DATA_AXIS!r} axis, got {tuple(mesh_axes)}.")
  sizes = [int(size) for _, size in mesh_axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may have size -1, got {tuple(mesh_axes)}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh {tuple(mesh_axes)}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"Mesh {tuple(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are available.")
  device_array = mesh_utils.create_device_mesh(sizes, devices=devices)
  return Mesh(device_array, names)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS]


def per_host_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Checks that the global batch splits evenly over devices and hosts; returns this host's share."""
  devices = data_parallel_size(mesh)
  if global_batch % devices:
    raise ValueError(f"config.batch_size={global_batch} is not divisible by the {devices} devices of the "
                     f"'data' mesh axis.")
  if global_batch % jax.process_count():
    raise ValueError(f"config.batch_size={global_batch} is not divisible by {jax.process_count()} processes.")
  return global_batch // jax.process_count()


def host_to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's numpy batch -> global jax.Arrays sharded over 'data'."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def gather_rows(x: np.ndarray) -> np.ndarray:
  """Concatenates per-host arrays [n_p, ...] over processes in process order (identity on one host).

  Hosts may hold different numbers of rows (the last shard is shorter, examples have different numbers of
  sources): rows are padded to the longest host, gathered, and the padding is dropped. Values travel as raw
  bytes, so float64 and int64 survive JAX's default 32-bit mode exactly.
  """
  if jax.process_count() == 1:
    return x
  x = np.ascontiguousarray(x)
  row_shape = x.shape[1:]
  as_bytes = x.reshape(len(x), int(np.prod(row_shape, dtype=np.int64))).view(np.uint8)
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(x)], np.int32), tiled=True)).reshape(-1)
  padded = np.zeros((int(counts.max()), as_bytes.shape[1]), np.uint8)
  padded[:len(x)] = as_bytes
  stacked = np.asarray(multihost_utils.process_allgather(padded, tiled=False))  # [P, max n, bytes]
  rows = np.concatenate([stacked[p, :c] for p, c in enumerate(counts)])
  return np.ascontiguousarray(rows).view(x.dtype).reshape(len(rows), *row_shape)
