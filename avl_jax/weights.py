"""Converted weights (`python -m avl_jax.convert`) as the whole variables of a model: `--weights=DIR` of the
evaluation and localization binaries.

A converted-weights directory (`checkpointing.save_variables`) may hold a whole model or a part of one (e.g. an
ImageNet encoder, used as config.init_from for training); a binary that runs the model needs every variable.
"""
from typing import Any

import jax
import numpy as np

from avl_jax import checkpointing
from avl_jax import sharding


def load_whole_model(abstract_state: Any, weights_dir: str, mesh: jax.sharding.Mesh, *,
                     action: str = "used") -> tuple[dict[str, Any], dict[str, Any]]:
  """The variables of a converted-weights directory, checked to be the whole model, replicated on `mesh`.

  Args:
    abstract_state: the model's abstract train state (`train.build(...).abstract_state`): its `params` and
      `batch_stats` give the names, shapes and dtypes of the variables.
    weights_dir: the converted-weights directory.
    mesh: the mesh the variables are replicated on.
    action: what the caller does with the model, for the error of a partial set ("... cannot be {action}
      alone"), e.g. 'evaluated'.
  Returns:
    ({'params', 'batch_stats'} in the model's dtypes, on `mesh`; the directory's metadata, e.g. its 'format').
  Raises:
    FileNotFoundError: `weights_dir` is not a converted-weights directory.
    ValueError: a variable the model lacks or of another shape, or a partial set (variables of the model missing).
  """
  abstract = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
  loaded, metadata = checkpointing.load_variables(weights_dir)
  variables, count = checkpointing.merge_variables(target, loaded, origin=f"--weights={weights_dir}")
  total = len(jax.tree.leaves(target))
  if count != total:
    raise ValueError(f"--weights={weights_dir} holds {count} of the {total} variables of the model "
                     f"({metadata.get('format')}: a partial set such as an encoder cannot be {action} alone; "
                     "use it as config.init_from for training).")
  return jax.device_put(variables, sharding.replicated(mesh)), metadata
