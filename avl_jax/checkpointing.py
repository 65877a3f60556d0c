"""Orbax checkpoints: train state and grain iterator saved together, restored onto the current mesh.

Layout: `{workdir}/checkpoints/{step}/{state,data_iter}`. The state is restored against an abstract target that
carries the *current* shardings, so a checkpoint written on 8 devices restores on 1 (and vice versa), FSDP onto
data parallel and back (tests/sharding_test.py). The grain iterator is saved per process
(`data_iter/process_{i}-of-{n}.json`); a run with another process count continues the same global order from the
same global position when the iterators run without grain workers (`moved_iterator_state`).

Damage and mismatch are told apart before anything is restored: a checkpoint whose saved variables have other
shapes than the current model's (a workdir made by another config) raises `CheckpointMismatchError` naming the
variable and both shapes; one that cannot be read (truncated arrays, a missing or garbage item, an empty step
directory) raises `DamagedCheckpointError`, and `restore_latest` falls back to the newest step that restores,
moving each damaged step aside to `{workdir}/checkpoints_damaged/` (nothing is ever deleted).
"""
import json
import os
import shutil
import sys
from typing import Any

from absl import logging
from flax import traverse_util
from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

VARIABLES_METADATA = "avl_jax_variables.json"
DAMAGED_DIR = "checkpoints_damaged"  # beside `checkpoints/`: damaged steps moved aside by restore_latest


class DamagedCheckpointError(RuntimeError):
  """A checkpoint step that exists but cannot be restored (the message names the step and the cause)."""

  def __init__(self, step: int, directory: str, cause: Exception):
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    detail = detail.split(" See full TensorStore details")[0][:300]
    super().__init__(f"checkpoint step {step} in {directory} cannot be restored: {type(cause).__name__}: {detail}")
    self.step = step


class CheckpointMismatchError(ValueError):
  """The checkpoint holds other variables or shapes than the current config's model."""


ASYNC_MODES = ("auto", "on", "off")  # config.checkpoint_async


def use_async(mode: str) -> bool:
  """config.checkpoint_async: 'on', 'off', or 'auto' = on when the default backend is an accelerator."""
  if mode not in ASYNC_MODES:
    raise ValueError(f"config.checkpoint_async={mode!r}: expected one of {list(ASYNC_MODES)}.")
  return mode == "on" or (mode == "auto" and jax.default_backend() != "cpu")


def create_manager(workdir: str, *, save_interval_steps: int = 1, max_to_keep: int | None = 3,
                   create: bool = True, async_save: bool = False) -> ocp.CheckpointManager:
  """Manager over `{workdir}/checkpoints`, keeping the latest `max_to_keep`.

  async_save: write in a background thread (Orbax async checkpointing): the arrays are copied off the devices
  and the grain iterator state is serialised at the save call, so training goes on while the files are written;
  a step counts only once Orbax has committed it (a kill during the write leaves no half step behind).
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_interval_steps, max_to_keep=max_to_keep, create=create,
      enable_async_checkpointing=async_save)
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


def _path_name(path) -> str:
  """'params/encoder/kernel' from a jax key path (dict keys, attributes and indices alike)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def saved_shapes(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple[int, ...]] | None:
  """{variable path: shape} of the state saved at `step`, from its metadata; None if unreadable (damage)."""
  path = epath.Path(str(manager.directory)) / str(step) / "state"
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(path)
    tree = getattr(metadata, "tree", metadata)
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {_path_name(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, "shape")}
  except Exception:  # pylint: disable=broad-except
    return None


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                     config_diff: str = "") -> None:
  """Raises CheckpointMismatchError if the state saved at `step` has other variables or shapes than the model.

  A step whose metadata cannot be read passes (the restore reports the damage). `config_diff` (how the saved
  config differs from the current one) is appended to the message.
  """
  saved = saved_shapes(manager, step)
  if saved is None:
    return
  want = {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  where = os.path.join(str(manager.directory), str(step))
  hint = (" The workdir was made by another config: use a new --workdir, or the config it was trained with."
          + (f" Saved config vs this one:\n{config_diff}" if config_diff else ""))
  for name in sorted(want):
    if name in saved and saved[name] != want[name]:
      raise CheckpointMismatchError(
          f"Checkpoint {where}: variable {name} has shape {saved[name]}, this config's model expects "
          f"{want[name]}.{hint}")
  missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
  if missing or extra:
    raise CheckpointMismatchError(
        f"Checkpoint {where}: {len(missing)} variable(s) of the model are not saved (e.g. {missing[:3]}) and "
        f"{len(extra)} saved variable(s) are not in the model (e.g. {extra[:3]}).{hint}")


_PREVIOUS_UNRAISABLEHOOK = None


def _quiet_closed_event_loop() -> None:
  """Drops the errors that TensorStore's abandoned reads report after a failed restore.

  When one array of a checkpoint cannot be read, Orbax closes its event loop while the other reads are still in
  flight; each then reports RuntimeError('Event loop is closed') or its own read error to sys.unraisablehook
  (hundreds of tracebacks hiding the one warning that matters: DamagedCheckpointError). Only those two errors
  are dropped; every other unraisable passes through.
  """
  global _PREVIOUS_UNRAISABLEHOOK
  if _PREVIOUS_UNRAISABLEHOOK is not None:
    return
  _PREVIOUS_UNRAISABLEHOOK = sys.unraisablehook

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    if str(value).startswith("Encountered error while reading array index"):  # the abandoned reads themselves
      return
    _PREVIOUS_UNRAISABLEHOOK(unraisable)

  sys.unraisablehook = hook


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any | None = None, *, config_diff: str = "") -> Any:
  """Restores the state at `step` onto `abstract_state`'s shardings; restores `data_iter` in place if given.

  Raises:
    CheckpointMismatchError: the saved variables do not fit the model (another config made the workdir).
    DamagedCheckpointError: the step cannot be read (truncated or missing files, garbage iterator state).
  """
  check_compatible(manager, step, abstract_state, config_diff)
  _quiet_closed_event_loop()
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  moved_state = None
  if data_iter is not None:
    moved_state = _iterator_state_from_other_process_count(manager, step, data_iter)
    if moved_state is None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(step, str(manager.directory), e) from e
  if moved_state is not None:
    data_iter.set_state(moved_state)
  logging.info("Restored checkpoint for step %d from %s.", step, manager.directory)
  return restored["state"]


def _iterator_files(directory: epath.Path) -> dict[int, dict[int, epath.Path]]:
  """{process count: {process index: file}} of a step's `data_iter` directory ({} if it cannot be listed)."""
  found: dict[int, dict[int, epath.Path]] = {}
  try:
    paths = list(directory.iterdir())
  except OSError:
    return found
  for path in paths:
    name = path.name
    if name.startswith("process_") and name.endswith(".json") and "-of-" in name:
      index, _, count = name[len("process_"):-len(".json")].partition("-of-")
      if index.isdigit() and count.isdigit():
        found.setdefault(int(count), {})[int(index)] = path
  return found


def moved_iterator_state(saved: dict[int, Any], current: Any, process_count: int) -> dict:
  """This process's iterator state continuing iterators saved by another number of processes.

  `saved`: {process index: state} of all the saving processes; `current`: this process's fresh iterator state.
  Every process draws one global order and takes its rows of each global batch
  (avl_jax/pipeline/global_order.py `ProcessRows`), so without grain workers a process's state is
  {'next_index': elements it has read}: the saving processes ran in lockstep and read n_old * next_index global
  elements in all; each of this run's `process_count` processes has read an equal share of them. Exact for an
  unchanged config.batch_size.

  Raises:
    CheckpointMismatchError: the states cannot be moved (grain workers keep per-worker positions; processes
      missing; positions not in lockstep or not divisible by the new count).
  """
  old_count = len(saved)
  def plain(state):
    return isinstance(state, dict) and set(state) == {"next_index"} and isinstance(state["next_index"], int)
  hint = (f"The data iterator was saved by {old_count} processes, this run has {process_count}; "
          "it moves to another process count only without grain workers (config.dataset.num_workers <= 1 on "
          "both): rerun on the saving process count, or resume with num_workers=0 and switch afterwards.")
  if sorted(saved) != list(range(old_count)) or not all(plain(s) for s in saved.values()) or not plain(current):
    raise CheckpointMismatchError(f"{hint} Saved states {sorted(saved)}: {list(saved.values())[:2]}; this run's "
                                  f"iterator state {current}.")
  positions = {s["next_index"] for s in saved.values()}
  total = positions.pop() * old_count if len(positions) == 1 else None
  if total is None or total % process_count:
    raise CheckpointMismatchError(f"{hint} The saved positions {sorted(s['next_index'] for s in saved.values())} "
                                  f"are not in lockstep or do not split into {process_count} equal shares.")
  return {"next_index": total // process_count}


def _iterator_state_from_other_process_count(manager: ocp.CheckpointManager, step: int, data_iter: Any):
  """None when `step` holds this process's iterator file (or none at all: the restore reports the damage);
  else this process's state moved from the saving process count (`moved_iterator_state`)."""
  directory = epath.Path(str(manager.directory)) / str(step) / "data_iter"
  files = _iterator_files(directory)
  index, count = jax.process_index(), jax.process_count()
  if index in files.get(count, {}) or not files:
    return None
  if len(files) > 1:
    raise DamagedCheckpointError(step, str(manager.directory), ValueError(
        f"{directory} holds iterator states of several process counts {sorted(files)}."))
  (old_count, paths), = files.items()
  try:
    saved = {i: json.loads(path.read_text()) for i, path in paths.items()}
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(step, str(manager.directory), e) from e
  if len(saved) != old_count:
    raise DamagedCheckpointError(step, str(manager.directory), ValueError(
        f"{directory} holds {len(saved)} of the {old_count} processes' iterator states."))
  state = moved_iterator_state(saved, data_iter.get_state(), count)
  logging.warning("Checkpoint step %d: the data iterator was saved by %d processes, this run has %d; continuing "
                  "the same global order at the same position (iterator state %s).", step, old_count, count, state)
  return state


def move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves `{checkpoints}/{step}` to `{workdir}/checkpoints_damaged/{step}[-n]` (process 0); returns the new path."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory).rstrip("/")), DAMAGED_DIR)
  target = os.path.join(target_dir, str(step))
  n = 0
  while os.path.exists(target):
    n += 1
    target = os.path.join(target_dir, f"{step}-{n}")
  if jax.process_index() == 0:
    os.makedirs(target_dir, exist_ok=True)
    shutil.move(source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"avl_jax_move_aside_{step}")
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any | None = None, *,
                   move_damaged: bool = False, config_diff: str = "") -> tuple[Any, int | None]:
  """(state, step) of the newest checkpoint that restores; (None, None) when there is none.

  Each damaged step on the way is logged with its cause and, with `move_damaged` (training: the step would
  be written again), moved aside to `checkpoints_damaged/`; evaluation leaves it where it is.

  Raises:
    CheckpointMismatchError: from `restore` (another config's checkpoints: no fallback would help).
  """
  manager.reload()
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, abstract_state, data_iter, config_diff=config_diff), step
    except DamagedCheckpointError as e:
      if move_damaged:
        logging.warning("%s. Falling back to the previous checkpoint; moved the damaged step to %s.",
                        e, move_aside(manager, step))
      else:
        logging.warning("%s. Falling back to the previous checkpoint (the damaged step is left in place).", e)
  return None, None


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
