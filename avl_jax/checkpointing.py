"""Orbax checkpoints: train state and grain iterator saved together, restored onto the current mesh.

Layout: `{workdir}/checkpoints/{step}/{state,data_iter}`. The state is restored against an abstract target that
carries the *current* shardings, so a checkpoint written on 8 devices restores on 1 (and vice versa).
"""
import os
from typing import Any

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp


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


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete or abstract state."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any | None = None) -> Any:
  """Restores the state at `step` onto `abstract_state`'s shardings; restores `data_iter` in place if given."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  logging.info("Restored checkpoint for step %d from %s.", step, manager.directory)
  return restored["state"]
