"""T-VSL PyTorch state dicts (as numpy arrays) -> Flax variables of `avl_jax.models.tvsl.TVSL`.

No torch import. The T-VSL state dict (docs/tvsl.md §9; 896 entries) is AudioCLIP's 861 entries plus 35 of
its own: `logit_scale_ml`, the six gates `vp_w ap_w icp_w acp_w aip_w iap_w` and the MLPs
`{visual_proj, audio_proj, img_cls_proj, aud_cls_proj, aud_img_proj, img_aud_proj, fusion_proj}.{0,2}.{weight,
bias}` (Sequential indices: 0 and 2 are the Linears). A training checkpoint (`model_latest.pth`,
`model_best.pth`: `{'model': DDP state dict, 'optimizer': ..., ...}`) is unwrapped and `module.` is removed.

Mapping: the AudioCLIP entries go through `audioclip_weights.convert_state_dict` (strict, same rules) into the
`audioclip` subtree; `{mlp}.0` / `{mlp}.2` <-> `{mlp}/fc1` / `{mlp}/fc2` (Linear (out, in) -> kernel (in, out)),
gates and `logit_scale_ml` are root scalars. A state dict with none of the T-VSL entries (an AudioCLIP
checkpoint) converts to the `audioclip` subtree only (to start training from the AudioCLIP release, merged
with `tvsl.params.with_audioclip`). Otherwise every T-VSL entry must be present with its shape and every key
must be used.
"""
from collections.abc import Mapping
import functools
from typing import Any

from flax import traverse_util
import numpy as np

from avl_jax.convert import audioclip_weights
from avl_jax.convert import state_dicts
from avl_jax.models.tvsl import layers as tvsl_layers
from avl_jax.models.tvsl import model as tvsl_model
from avl_jax.models.tvsl import params as tvsl_params

AUDIOCLIP_SUBTREE = 'audioclip'
_MLPS = tuple(name for name, _ in tvsl_layers.ADAPTERS) + (tvsl_layers.FUSION,)
_SCALARS = tuple(gate for _, gate in tvsl_layers.ADAPTERS) + (tvsl_layers.STAGE1_SCALE,)
_LINEAR_LEAVES = (('kernel', 'weight'), ('bias', 'bias'))


def _tvsl_key_paths() -> dict[str, tuple[str, ...]]:
  """{official T-VSL-only key: Flax params path}."""
  paths = {name: (name,) for name in _SCALARS}
  for mlp in _MLPS:
    for flax_layer, torch_index in tvsl_layers.MLP_LAYERS:
      for flax_leaf, torch_leaf in _LINEAR_LEAVES:
        paths[f'{mlp}.{torch_index}.{torch_leaf}'] = (mlp, flax_layer, flax_leaf)
  return paths


TVSL_KEYS = _tvsl_key_paths()


def is_tvsl_state_dict(state_dict: Mapping[str, Any]) -> bool:
  """Whether an unwrapped state dict carries any T-VSL-only entry."""
  return any(key in TVSL_KEYS for key in state_dict)


@functools.lru_cache(maxsize=4)
def _abstract_variables(model: tvsl_model.TVSL) -> dict[str, Any]:
  return tvsl_params.abstract_variables(model)


def torch_state_dict_to_variables(state_dict: Mapping[str, Any],
                                  model: tvsl_model.TVSL | None = None) -> dict[str, Any]:
  """Converts a T-VSL (or plain AudioCLIP) state dict into T-VSL variables.

  Args:
    state_dict: {official name: array (numpy or torch)} in PyTorch layouts, optionally wrapped / DDP-prefixed.
    model: the target (default: the released sizes); only its variable shapes are used.

  Returns:
    {'params': {'audioclip': ..., 'visual_proj': {'fc1': ...}, 'vp_w': ..., ...}, 'batch_stats':
    {'audioclip': ...}} of numpy arrays; only the `audioclip` subtrees for an AudioCLIP state dict.

  Raises:
    ValueError: unknown, missing or mis-shaped keys (naming the key and both shapes).
  """
  state_dict = audioclip_weights.unwrap_state_dict(state_dict)
  abstract = _abstract_variables(model or tvsl_model.TVSL())
  audioclip_abstract = {collection: tree[AUDIOCLIP_SUBTREE] for collection, tree in abstract.items()}
  own = {key: value for key, value in state_dict.items() if key in TVSL_KEYS}
  towers = {key: value for key, value in state_dict.items() if key not in TVSL_KEYS}
  converted = audioclip_weights.convert_state_dict(towers, audioclip_abstract)
  variables = {collection: {AUDIOCLIP_SUBTREE: tree} for collection, tree in converted.items()}
  if not own:
    return variables

  flat = traverse_util.flatten_dict({k: v for k, v in abstract['params'].items() if k != AUDIOCLIP_SUBTREE})
  expected = {key: ('params', TVSL_KEYS[key], flat[TVSL_KEYS[key]]) for key in sorted(TVSL_KEYS)}
  converted, _ = state_dicts.match_state_dict(own, expected, missing_label='T-VSL key(s)')
  variables['params'].update(traverse_util.unflatten_dict(converted['params']))
  return variables


def variables_to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse: T-VSL variables -> an official-layout state dict (AudioCLIP entries included)."""
  towers = {collection: tree[AUDIOCLIP_SUBTREE] for collection, tree in variables.items()
            if AUDIOCLIP_SUBTREE in tree}
  state_dict = audioclip_weights.variables_to_torch_state_dict(towers)
  flat = traverse_util.flatten_dict({k: v for k, v in variables['params'].items() if k != AUDIOCLIP_SUBTREE})
  for key, path in TVSL_KEYS.items():
    if path in flat:
      state_dict[key] = state_dicts.to_torch_layout(np.asarray(flat[path]), path[-1])
  return state_dict
