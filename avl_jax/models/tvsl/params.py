"""Which T-VSL parameters train: everything outside the frozen AudioCLIP towers (spec tvsl.md §3).

The official optimiser only sees `requires_grad` parameters: the six adapters and gates, `fusion_proj` and
`logit_scale_ml` (33,576,967 values). Here the towers are cut from the gradient (`AudioCLIP(frozen=True)`),
and `param_labels` / `trainable_mask` make optax leave them untouched as well (no Adam state for 134 M
frozen values, no weight decay drift):

  tx = optax.multi_transform({'trainable': optax.adam(lr), 'frozen': optax.set_to_zero()},
                             tvsl.param_labels(params))

The towers' BatchNorm statistics are not parameters; with bn_mode='train_stats' the forward pass updates them
(`mutable=['batch_stats']`), as the official training does.
"""
from collections.abc import Mapping
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

FROZEN_SUBTREES = ('audioclip',)
TRAINABLE, FROZEN = 'trainable', 'frozen'
OFFICIAL_TRAINABLE_PARAMS = 33_576_967


def _is_frozen(path: tuple[str, ...]) -> bool:
  return bool(path) and path[0] in FROZEN_SUBTREES


def param_labels(params: Mapping[str, Any]) -> Any:
  """Pytree like `params` with 'trainable' / 'frozen' leaves (for optax.multi_transform)."""
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({path: FROZEN if _is_frozen(path) else TRAINABLE for path in flat})


def trainable_mask(params: Mapping[str, Any]) -> Any:
  """Pytree like `params` with True for trainable leaves (for optax.masked / weight-decay masks)."""
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({path: not _is_frozen(path) for path in flat})


def optimizer(trainable_tx: optax.GradientTransformation,
              params: Mapping[str, Any]) -> optax.GradientTransformation:
  """`trainable_tx` on the trainable leaves, zero updates (and no state) for the frozen towers."""
  return optax.multi_transform({TRAINABLE: trainable_tx, FROZEN: optax.set_to_zero()}, param_labels(params))


def count_params(params: Mapping[str, Any], *, trainable: bool | None = None) -> int:
  """Number of values (works on arrays and on jax.ShapeDtypeStruct from jax.eval_shape).

  Args:
    params: the 'params' collection.
    trainable: True counts the trainable leaves, False the frozen ones, None all.
  """
  total = 0
  for path, leaf in traverse_util.flatten_dict(dict(params)).items():
    if trainable is None or trainable != _is_frozen(path):
      total += int(np.prod(leaf.shape, dtype=np.int64))
  return total


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
