"""Device mesh, data sharding and parameter partition rules from the config.

Mesh axes (`config.mesh`, (axis_name, size) pairs; one size may be -1 = all remaining devices):
  data  batch split over it; parameters replicated along it (plain data parallelism).
  fsdp  batch split over it as well (the global batch is split over data x fsdp devices), and parameters plus
        their optimizer state are sharded along it (ZeRO-3 / FSDP): XLA's SPMD partitioner all-gathers each
        parameter for the compute that uses it and reduce-scatters its gradient.
  other names (e.g. 'model') are used only by explicit `config.sharding_rules`; the batch is replicated over them.

Parameter rules (`config.sharding_rules`, docs/sharding.md): (regex, spec) pairs, first full match wins, as
big_vision's `sharding_rules` / MaxText's logical rules. The regex is matched (`re.fullmatch`) against the
parameter path of avl_jax/param_rules.py ('imgnet/layer4_0/conv2/kernel', no 'params/' prefix: the same paths
as `config.optimizer.frozen`). The spec is a PartitionSpec as a tuple, one entry per leading dimension (None,
an axis name, or a tuple of axis names), e.g. (None, None, None, 'fsdp'); () replicates; or the string 'fsdp'
for the automatic FSDP spec whatever the parameter's size. A parameter that no rule matches gets the automatic
spec when the mesh has an `fsdp` axis of size > 1: its largest dimension divisible by the fsdp size is sharded
if it holds at least FSDP_MIN_SIZE values (big_vision's `fsdp` strategy); otherwise, and without an fsdp
axis, it is replicated. Adam's mu/nu follow their parameter; step, counts, rng and batch_stats are replicated.

Hosts feed their local shard and `host_to_global` assembles global arrays.
"""

from collections.abc import Mapping, Sequence
import re
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avl_jax import param_rules

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over these (those the mesh has, in this order)
# Automatic FSDP shards a parameter only from this many values on (256 KiB in float32): smaller ones cost an
# all-gather each for little memory. Paper-scale AVGN: the 3x3 convs of ResNet-18 from layer2 on and every
# transformer kernel are sharded; layer1, 1x1 downsamples before layer4, norms, biases and tokens are replicated. A rule with spec 'fsdp' ignores the minimum.
FSDP_MIN_SIZE = 2**16
AUTO = "fsdp"  # a rule's spec: the automatic FSDP spec, whatever the parameter's size


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


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: 'data' and, if the mesh has it, 'fsdp'."""
  return tuple(name for name in BATCH_AXES if name in mesh.axis_names)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data' x 'fsdp' (the devices of both axes hold different examples)."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the 'data' and 'fsdp' axis sizes."""
  return int(np.prod([mesh.shape[name] for name in batch_axes(mesh)]))


def per_host_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Checks that the global batch splits evenly over devices and hosts; returns this host's share."""
  devices = data_parallel_size(mesh)
  if global_batch % devices:
    axes = " x ".join(repr(name) for name in batch_axes(mesh))
    raise ValueError(f"config.batch_size={global_batch} is not divisible by the {devices} devices of the "
                     f"{axes} mesh axes.")
  if global_batch % jax.process_count():
    raise ValueError(f"config.batch_size={global_batch} is not divisible by {jax.process_count()} processes.")
  return global_batch // jax.process_count()


def host_to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's numpy batch -> global jax.Arrays sharded over 'data' x 'fsdp'."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


# ------------------------------------------------------------------------------------------- parameter rules

def parse_rules(rules: Sequence[Any], field: str = "config.sharding_rules") -> list[tuple[re.Pattern, Any, Any]]:
  """Checks `rules` ((regex, spec) pairs); returns [(compiled regex, spec, the rule as given)].

  A spec is 'fsdp' (automatic) or a tuple with one entry per leading dimension: None, an axis name, or a
  tuple of axis names (that dimension is split over their product).
  """
  parsed = []
  for rule in rules or ():
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"{field}: each rule is a (regex, spec) pair, e.g. ('imgnet/.*/kernel', (None, None, None, "
                       f"'fsdp')); got {rule!r}.")
    pattern, spec = rule
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{field}: {pattern!r} is not a regular expression: {e}.") from e
    if spec != AUTO:
      if not isinstance(spec, (tuple, list)) or not all(
          entry is None or isinstance(entry, str)
          or (isinstance(entry, (tuple, list)) and all(isinstance(a, str) for a in entry)) for entry in spec):
        raise ValueError(f"{field}: rule {tuple(rule)!r}: the spec must be {AUTO!r} or a tuple of None, axis names "
                         "or tuples of axis names (a PartitionSpec), e.g. (None, 'fsdp').")
      spec = tuple(tuple(entry) if isinstance(entry, list) else entry for entry in spec)
    parsed.append((regex, spec, tuple(rule)))
  return parsed


def auto_fsdp_spec(shape: Sequence[int], fsdp_size: int) -> P:
  """Shards the largest dimension divisible by `fsdp_size` over 'fsdp' (the last such one on ties); else P()."""
  if fsdp_size <= 1:
    return P()
  for dim in np.argsort(shape, kind="stable")[::-1]:
    if shape[dim] % fsdp_size == 0:
      return P(*([None] * int(dim) + [FSDP_AXIS]))
  return P()


def _spec_axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _checked_spec(name: str, shape: tuple[int, ...], spec: tuple, rule: tuple, mesh: Mesh) -> P:
  where = f"config.sharding_rules rule {rule!r} on parameter {name} of shape {shape}"
  if len(spec) > len(shape):
    raise ValueError(f"{where}: the spec has {len(spec)} entries, the parameter {len(shape)} dimensions.")
  for dim, entry in enumerate(spec):
    axes = _spec_axes(entry)
    for axis in axes:
      if axis not in mesh.axis_names:
        raise ValueError(f"{where}: mesh axis {axis!r} is not in the mesh {dict(mesh.shape)}.")
    size = int(np.prod([mesh.shape[axis] for axis in axes]))
    if shape[dim] % size:
      raise ValueError(f"{where}: dimension {dim} (size {shape[dim]}) is not divisible by mesh axis "
                       f"{' x '.join(axes)} of size {size} (mesh {dict(mesh.shape)}).")
  return P(*spec)


def param_partition_specs(params: Mapping[str, Any], rules: Sequence[Any], mesh: Mesh, *,
                          min_size: int = FSDP_MIN_SIZE) -> Any:
  """PartitionSpec of every parameter (arrays or ShapeDtypeStructs): first matching rule, else automatic.

  Raises:
    ValueError: a malformed rule, an axis the mesh lacks, or a rule that does not divide a dimension (the
      message names the parameter, its shape, the rule and the mesh axis size).
  """
  parsed = parse_rules(rules)
  fsdp_size = mesh.shape.get(FSDP_AXIS, 1)
  flat = {}
  for path, name in param_rules.path_names(params).items():
    shape = tuple(_leaf_at(params, path).shape)
    rule = next(((spec, given) for regex, spec, given in parsed if regex.fullmatch(name)), None)
    if rule is not None and rule[0] != AUTO:
      flat[path] = _checked_spec(name, shape, rule[0], rule[1], mesh)
    elif rule is not None or int(np.prod(shape, dtype=np.int64)) >= min_size:
      flat[path] = auto_fsdp_spec(shape, fsdp_size)
    else:
      flat[path] = P()
  return traverse_util.unflatten_dict(flat)


def _leaf_at(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _dict_keys(path) -> tuple[str, ...]:
  return tuple(str(key.key) for key in path if isinstance(key, jax.tree_util.DictKey))


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[Any] = (), *,
                    min_size: int = FSDP_MIN_SIZE) -> Any:
  """NamedShardings for a train state with `.params` and `.opt_state` (e.g. train.TrainState).

  Parameters follow `param_partition_specs`; an optimizer-state leaf whose trailing dict keys are a parameter's
  path and whose shape is that parameter's (Adam's mu and nu, also inside optax.multi_transform) follows that
  parameter; everything else (step, optimizer counts, rng, batch_stats) is replicated.
  """
  specs = param_partition_specs(abstract_state.params, rules, mesh, min_size=min_size)
  flat_specs = traverse_util.flatten_dict(dict(specs)) if specs else {}
  shapes = {path: tuple(_leaf_at(abstract_state.params, path).shape) for path in flat_specs}

  def leaf_sharding(path, leaf):
    top = path[0].name if isinstance(path[0], jax.tree_util.GetAttrKey) else None
    keys = _dict_keys(path)
    if top == "params":
      return NamedSharding(mesh, flat_specs[keys])
    if top == "opt_state":
      for start in range(len(keys)):
        suffix = keys[start:]
        if suffix in flat_specs and shapes[suffix] == tuple(leaf.shape):
          return NamedSharding(mesh, flat_specs[suffix])
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


def per_device_bytes(tree: Any, shardings: Any | None = None) -> int:
  """Bytes one device holds of `tree` (arrays, or ShapeDtypeStructs with `shardings`): its largest shards."""
  def nbytes(leaf, sharding):
    sharding = sharding if sharding is not None else leaf.sharding
    return int(np.prod(sharding.shard_shape(leaf.shape), dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  if shardings is None:
    return sum(nbytes(leaf, None) for leaf in jax.tree.leaves(tree))
  return sum(jax.tree.leaves(jax.tree.map(nbytes, tree, shardings)))


def log_state_sharding(abstract_state: Any, shardings: Any, mesh: Mesh, rules: Sequence[Any] = ()) -> None:
  """Logs how many parameters are sharded and one device's share of the state (a guard rail at start-up)."""
  param_leaves = jax.tree.leaves(shardings.params)
  sharded = sum(1 for s in param_leaves if not s.is_fully_replicated)
  total = sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
              for x in jax.tree.leaves(abstract_state))
  logging.info("State sharding on mesh %s: %d of %d parameters sharded (rules %r, automatic FSDP from %d values); "
               "%.1f MiB of the state's %.1f MiB on each device.", dict(mesh.shape), sharded, len(param_leaves),
               tuple(rules or ()), FSDP_MIN_SIZE, per_device_bytes(abstract_state, shardings) / 2**20,
               total / 2**20)
  unused = [name for name, size in mesh.shape.items() if size > 1 and name not in BATCH_AXES
            and not any(s.spec and any(name in _spec_axes(e) for e in s.spec) for s in jax.tree.leaves(shardings))]
  if unused:
    logging.warning("Mesh axes %s shard neither the batch nor any parameter: their devices repeat the same work.",
                    unused)


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
