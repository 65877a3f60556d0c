"""AudioCLIP PyTorch state dicts (as numpy arrays) -> Flax variables of `avl_jax.models.audioclip.AudioCLIP`.

No torch import: hand over {name: array} (numpy arrays or torch tensors). Accepted checkpoints (spec
tvsl.md §9): the full AudioCLIP state dict (`AudioCLIP-Full-Training.pt`, `AudioCLIP-Partial-Training.pt`:
`visual.*`, root-level text keys, `audio.*`, three temperatures), CLIP only (`CLIP.pt`: `visual.*`, the text
keys and `logit_scale`; JIT archives also carry `input_resolution`, `context_length`, `vocab_size`) and the
audio tower only (`ESRNXFBSP.pt`: the `audio.*` keys without their prefix). A `{'model': ...}` /
`{'state_dict': ...}` wrapper and DDP `module.` prefixes are removed. Partial checkpoints give the matching
part of the variable tree.

Name mapping (mechanical, docs/tvsl.md §9): Flax `text/<path>` <-> the root-level text keys, other paths keep their
root; numbered children `layer2_0`, `resblocks_11`, `downsample_1` <-> `layer2.0`, ...; leaves `kernel` /
`scale` / `embedding` <-> `weight`, `in_proj_kernel` <-> `in_proj_weight`, BatchNorm `mean` / `var` <->
`running_mean` / `running_var`, every other leaf keeps its name (`positional_embedding`, `m`, ...). Layouts:
conv OIHW (grouped: O, I/g) -> HWIO, Linear (out, in) -> (in, out), packed `in_proj_weight` (3D, D) ->
(D, 3D), `text_projection` as is. Every expected key must be present with the right shape and every given
key must be used. Dropped, one log line per kind: BatchNorm `num_batches_tracked`, `audio.window`
(recomputed; checked to be the periodic Blackman-Harris window), the empty `audio.fbsp.bias`, and CLIP's
three JIT metadata scalars.
"""
from collections.abc import Mapping
import functools
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from avl_jax.convert import state_dicts
from avl_jax.models.audioclip import audio as audio_lib
from avl_jax.models.audioclip import model as model_lib

TEXT_ROOT = 'text'  # Flax subtree whose official keys have no prefix.
AUDIO_PREFIX = 'audio.'
WINDOW_KEY = 'audio.window'
FBSP_BIAS_KEY = 'audio.fbsp.bias'
CLIP_METADATA_KEYS = ('input_resolution', 'context_length', 'vocab_size')
WINDOW_TOLERANCE = 1e-6
# Which Flax subtrees each checkpoint kind fills.
PARTS = {
    'audioclip': ('visual', 'text', 'audio', 'logit_scale', 'logit_scale_ai', 'logit_scale_at'),
    'clip': ('visual', 'text', 'logit_scale'),
    'esresnext_fbsp': ('audio',),
}

_NUMBERED = re.compile(r'^(layer\d+|resblocks|downsample)_(\d+)$')
_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight',
                  'in_proj_kernel': 'in_proj_weight'}
_STATS_TO_TORCH = {'mean': 'running_mean', 'var': 'running_var'}
_TRANSPOSED_LEAVES = ('kernel', 'in_proj_kernel')


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes a `{'model': ...}` / `{'state_dict': ...}` wrapper and DDP `module.` prefixes."""
  return state_dicts.unwrap_state_dict(state_dict, wrappers=('model', 'state_dict'))


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """'audioclip' (full), 'clip' (CLIP.pt) or 'esresnext_fbsp' (ESRNXFBSP.pt) from an unwrapped state dict."""
  has_audio = any(key.startswith(AUDIO_PREFIX) for key in state_dict)
  has_visual = any(key.startswith('visual.') for key in state_dict)
  if has_audio:
    return 'audioclip'
  if has_visual:
    return 'clip'
  if 'fbsp.m' in state_dict or 'conv1.weight' in state_dict:
    return 'esresnext_fbsp'
  raise ValueError(f'Not an AudioCLIP, CLIP or ESResNeXt-fbsp state dict (keys e.g. {sorted(state_dict)[:5]}).')


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official name of one Flax variable, e.g. ('params', ('text', 'transformer', 'resblocks_0', 'attn',
  'in_proj_kernel')) -> 'transformer.resblocks.0.attn.in_proj_weight'."""
  modules = []
  for index, name in enumerate(path[:-1]):
    if index == 0 and name == TEXT_ROOT:
      continue
    numbered = _NUMBERED.match(name)
    modules.extend(numbered.groups() if numbered else (name,))
  leaf = path[-1]
  leaf = _STATS_TO_TORCH[leaf] if collection == 'batch_stats' else _LEAF_TO_TORCH.get(leaf, leaf)
  return '.'.join(modules + [leaf])


def _check_window(value: Any) -> None:
  window = state_dicts.as_numpy(value)
  expected = audio_lib.periodic_blackman_harris(window.shape[0]) if window.ndim == 1 else None
  if expected is None or window.shape != (audio_lib.WIN_LENGTH,) or not (
      np.max(np.abs(window - expected)) <= WINDOW_TOLERANCE):
    raise ValueError(f'{WINDOW_KEY!r} (shape {window.shape}) is not the periodic Blackman-Harris window of '
                     f'length {audio_lib.WIN_LENGTH} that the port recomputes.')


def _check_fbsp_bias(value: Any) -> None:
  bias = state_dicts.as_numpy(value)
  if bias.size:
    raise ValueError(f'{FBSP_BIAS_KEY!r} has shape {bias.shape}: AudioCLIP builds LinearFBSP '
                     'without a bias (an empty tensor), and the port has none.')


# key -> (check, reason) for entries that are dropped after a check.
_DROPPED = {
    WINDOW_KEY: (_check_window, 'recomputed (periodic Blackman-Harris, checked)'),
    FBSP_BIAS_KEY: (_check_fbsp_bias, 'LinearFBSP(bias=False) stores an empty tensor'),
}


def convert_state_dict(state_dict: Mapping[str, Any], abstract_variables: Mapping[str, Any]) -> dict[str, Any]:
  """Maps an AudioCLIP-named state dict onto the tree of `abstract_variables`, checking every key.

  Args:
    state_dict: {official name: array} in PyTorch layouts (unwrapped, audio keys with `audio.`).
    abstract_variables: {'params': ..., 'batch_stats': ...} of the target (sub)tree, e.g. from
      `abstract_model_variables`; only shapes and dtypes are used.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of numpy arrays in Flax layouts and dtypes.

  Raises:
    ValueError: a key the target does not have, a missing key, a shape mismatch (naming the key and both
      shapes), a non-standard `audio.window` or a non-empty `audio.fbsp.bias`.
  """
  dropped = {}

  def drop(key: str, value: Any) -> bool:
    if key in _DROPPED:
      check, reason = _DROPPED[key]
      check(value)
      dropped[key] = reason
      return True
    if key in CLIP_METADATA_KEYS and np.ndim(state_dicts.as_numpy(value)) == 0:
      dropped.setdefault('CLIP metadata', 'scalars of CLIP JIT archives (input_resolution, context_length, '
                         'vocab_size), not weights')
      return True
    return False

  converted, counters = state_dicts.match_state_dict(
      state_dict, state_dicts.expected_entries(abstract_variables, torch_key),
      transposed_leaves=_TRANSPOSED_LEAVES, drop=drop)
  if counters:
    dropped['num_batches_tracked'] = 'BatchNorm step counters (Flax BatchNorm has none)'
  for kind, reason in dropped.items():
    logging.info('Dropped %s from the state dict: %s.', kind, reason)
  return state_dicts.unflatten(converted, drop_empty=True)


def abstract_model_variables(model: model_lib.AudioCLIP | None = None) -> dict[str, Any]:
  """Shapes and dtypes of every AudioCLIP variable (jax.eval_shape: nothing is computed)."""
  model = model or model_lib.AudioCLIP()
  waveform = jnp.zeros((1, audio_lib.WIN_LENGTH), jnp.float32)
  image = jnp.zeros((1, model.image_resolution, model.image_resolution, 3), jnp.float32)
  ids = jnp.zeros((1, model.context_length), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), audio=waveform, image=image, text=ids))


@functools.cache
def _default_abstract_variables() -> dict[str, Any]:
  return abstract_model_variables(model_lib.AudioCLIP())


def _select_parts(abstract_variables: Mapping[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
  return {collection: {name: tree for name, tree in subtrees.items() if name in parts}
          for collection, subtrees in abstract_variables.items()}


def torch_state_dict_to_variables(state_dict: Mapping[str, Any],
                                  model: model_lib.AudioCLIP | None = None) -> dict[str, Any]:
  """Converts an AudioCLIP, CLIP or ESResNeXt-fbsp checkpoint into (part of) the AudioCLIP variables.

  Args:
    state_dict: {name: array}, optionally wrapped / DDP-prefixed (see the module docstring).
    model: the target AudioCLIP (default: the released configuration).

  Returns:
    {'params': ..., 'batch_stats': ...} with the subtrees of PARTS[checkpoint_kind(state_dict)].

  Raises:
    ValueError: unknown, missing or mis-shaped keys (see convert_state_dict).
  """
  state_dict = unwrap_state_dict(state_dict)
  kind = checkpoint_kind(state_dict)
  if kind == 'esresnext_fbsp':
    state_dict = {AUDIO_PREFIX + key: value for key, value in state_dict.items()}
  abstract = abstract_model_variables(model) if model is not None else _default_abstract_variables()
  abstract = _select_parts(abstract, PARTS[kind])
  return convert_state_dict(state_dict, abstract)


def variables_to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse mapping: AudioCLIP variables -> an official-layout state dict.

  Adds `num_batches_tracked` = 0 per BatchNorm, and `audio.window` / the empty `audio.fbsp.bias` when the
  audio tower is present, so the result has the official key set.
  """
  state_dict = state_dicts.variables_to_state_dict(variables, torch_key, transposed_leaves=_TRANSPOSED_LEAVES)
  if 'audio' in variables.get('params', {}):
    state_dict[WINDOW_KEY] = audio_lib.periodic_blackman_harris()
    state_dict[FBSP_BIAS_KEY] = np.zeros((0,), np.float32)
  return state_dict
