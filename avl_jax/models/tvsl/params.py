"""Which T-VSL parameters train: everything outside the frozen AudioCLIP towers (docs/tvsl.md §3).

The official optimiser only sees `requires_grad` parameters: the six adapters and gates, `fusion_proj` and
`logit_scale_ml` (33,576,967 values). Here the towers are cut from the gradient (`AudioCLIP(frozen=True)`),
and the optimizer leaves the parameters matching FROZEN_PARAMS untouched as well (no Adam state for 134 M
frozen values, no weight decay drift). The training stack reads the rule from `config.optimizer.frozen`
(set to FROZEN_PARAMS by the T-VSL configs); used directly:

  tx = tvsl.optimizer(optax.adam(1e-2))   # = param_rules.freeze(optax.adam(1e-2), FROZEN_PARAMS)

The towers' BatchNorm statistics are not parameters; with bn_mode='train_stats' the forward pass updates them
(`mutable=['batch_stats']`), as the official training does.
"""
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avl_jax import param_rules

FROZEN_PARAMS = r'audioclip/.*'  # the AudioCLIP towers (a param_rules pattern on parameter paths)
OFFICIAL_TRAINABLE_PARAMS = 33_576_967


def optimizer(trainable_tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`trainable_tx` on the trainable leaves, zero updates (and no state) for the frozen towers."""
  return param_rules.freeze(trainable_tx, FROZEN_PARAMS)


def count_params(params: Mapping[str, Any], *, trainable: bool | None = None) -> int:
  """Number of values (works on arrays and on jax.ShapeDtypeStruct from jax.eval_shape).

  Args:
    params: the 'params' collection.
    trainable: True counts the trainable leaves, False the frozen ones, None all.
  """
  if trainable is None:
    return param_rules.count(params)
  return param_rules.count(params, param_rules.frozen_mask(params, FROZEN_PARAMS), frozen=not trainable)


def abstract_variables(model, *, canvas_hw: tuple[int, int] = (224, 448), num_samples: int = 1654,
                       num_classes: int = 2) -> dict[str, Any]:
  """Shapes and dtypes of every variable of a T-VSL model (jax.eval_shape: nothing is materialised).

  The towers' variables do not depend on the input sizes, so small inputs suffice.
  """
  canvas = jnp.zeros((1,) + tuple(canvas_hw) + (3,), jnp.float32)
  waveform = jnp.zeros((1, num_samples), jnp.float32)
  text_bank = jnp.zeros((num_classes, model.embed_dim), jnp.float32)
  class_rows = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), canvas, waveform, text_bank, class_rows,
                                           train=False))


def with_audioclip(variables: Mapping[str, Any], audioclip_variables: Mapping[str, Any]) -> dict[str, Any]:
  """T-VSL variables whose `audioclip` subtrees are replaced (e.g. by the converted AudioCLIP release).

  The start of an official training run: pretrained frozen towers, freshly initialised adapters.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a T-VSL model (e.g. from `model.init`).
    audioclip_variables: AudioCLIP variables (`audioclip_weights.torch_state_dict_to_variables` of a full
      checkpoint), or T-VSL-shaped ones with an `audioclip` subtree.

  Raises:
    ValueError: a collection or subtree whose structure or shapes differ.
  """
  result = {collection: dict(tree) for collection, tree in variables.items()}
  for collection, tree in audioclip_variables.items():
    tree = tree.get('audioclip', tree)
    expected = variables[collection]['audioclip']
    if jax.tree.structure(expected) != jax.tree.structure(tree):
      raise ValueError(f'{collection}: the AudioCLIP variables do not have the structure of the model\'s '
                       '`audioclip` subtree (different tower sizes or a partial checkpoint?).')
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(tree)):
      if tuple(want.shape) != tuple(np.shape(got)):
        raise ValueError(f'{collection}/audioclip{jax.tree_util.keystr(path)}: shape {np.shape(got)}, the '
                         f'model expects {tuple(want.shape)}.')
    result[collection]['audioclip'] = tree
  return result
