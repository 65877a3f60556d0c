"""Orbax checkpoints: train state and grain iterator saved together, restored onto the current mesh.

Layout: `{workdir}/checkpoints/{step}/{state,data_iter}`. The state is restored against an abstract target that
carries the *current* shardings, so a checkpoint written on 8 devices restores on 1 (and vice versa).
"""
import json
import os
from typing import Any

from absl import logging
from flax import traverse_util
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

VARIABLES_METADATA = "avl_jax_variables.json"


def create_manager(workdir: str, *, save_interval_steps: int = 1, max_to_keep: int | None = 3,
                   create: bool = True) -> ocp.CheckpointManager:
  """Manager over `{workdir}/checkpoints`, keeping the latest `max_to_keep`."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_interval_steps, max_to_keep=max_to_keep, create=create,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data_iter"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None, *,
         force: bool = False) -> bool:
  """Saves state (and the grain iterator, if given); returns whether a checkpoint was written."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
  if saved:
    logging.info("Saved checkpoint for step %d to %s.", step, manager.directory)
  return saved


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any | None = None) -> Any:
  """Restores the state at `step` onto `abstract_state`'s shardings; restores `data_iter` in place if given."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  logging.info("Restored checkpoint for step %d from %s.", step, manager.directory)
  return restored["state"]


# ----------------------------------------------------------------------------------- variables-only checkpoints

def save_variables(directory: str, variables: dict[str, Any], metadata: dict[str, Any]) -> None:
  """Writes model variables ({'params': ..., 'batch_stats': ...}) as an Orbax checkpoint plus a JSON record.

  Layout: `{directory}/variables/` (Orbax) and `{directory}/avl_jax_variables.json` (`metadata`: where the
  weights came from, the model they fit). Used by the converters; read back with `load_variables`.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, "variables")
  if os.path.exists(target):
    raise FileExistsError(f"{target} already exists; choose an empty --output directory.")
  variables = jax.tree.map(np.asarray, variables)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(target, variables)
  with open(os.path.join(directory, VARIABLES_METADATA), "w") as f:
    json.dump(metadata, f, indent=2, sort_keys=True)
  logging.info("Wrote %d arrays to %s.", len(jax.tree.leaves(variables)), target)


def load_variables(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a `save_variables` directory; returns (variables as numpy nested dicts, metadata)."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, VARIABLES_METADATA)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
        f"{directory} is not a converted-weights directory (no {VARIABLES_METADATA}); create one with "
        "`python -m avl_jax.convert`.")
  with open(meta_path) as f:
    metadata = json.load(f)
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(directory, "variables"))
  return jax.tree.map(np.asarray, variables), metadata


def merge_variables(target: dict[str, Any], source: dict[str, Any], *, origin: str) -> tuple[dict[str, Any], int]:
  """Replaces the leaves of `target` present in `source` (same path, same shape); returns (merged, count).

  `source` may cover a subtree only (e.g. ImageNet weights of the visual encoder); every leaf it has must
  exist in `target` with the same shape, otherwise a ValueError names the leaf and both shapes.
  """
  flat_target = {(collection,) + path: value for collection in target
                 for path, value in traverse_util.flatten_dict(dict(target[collection])).items()}
  flat_source = {(collection,) + path: value for collection in source
                 for path, value in traverse_util.flatten_dict(dict(source[collection])).items()}
  for path, value in flat_source.items():
    name = "/".join(path)
    if path not in flat_target:
      raise ValueError(f"{origin}: variable {name} {np.shape(value)} does not exist in the model.")
    if tuple(np.shape(value)) != tuple(flat_target[path].shape):
      raise ValueError(f"{origin}: variable {name} has shape {np.shape(value)}, the model expects "
                       f"{tuple(flat_target[path].shape)}.")
  merged = {}
  for path, value in flat_target.items():
    new = flat_source.get(path)
    merged[path] = value if new is None else np.asarray(new).astype(value.dtype)
  result = {}
  for collection in target:
    leaves = {path[1:]: v for path, v in merged.items() if path[0] == collection}
    result[collection] = traverse_util.unflatten_dict(leaves) if leaves else target[collection]
  return result, len(flat_source)
