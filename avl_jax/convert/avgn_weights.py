"""PyTorch state dicts (as numpy arrays) -> Flax variables of `avl_jax.models.AVGN` / its ResNet-18.

No torch import: load a `.pth` elsewhere (`torch.load(path, map_location='cpu')`) and hand the mapping here;
values may be numpy arrays or torch tensors (converted with `.detach().cpu().numpy()`).

Flax module paths mirror the PyTorch names (docs/avgn.md §16): a numbered child `blocks.0` is the Flax
module `blocks_0`, a parameter `weight` is `kernel` (conv / linear) or `scale` (norms) and BatchNorm buffers
`running_mean` / `running_var` are the 'batch_stats' `mean` / `var`. Layouts: conv OIHW -> HWIO, linear
(out, in) -> (in, out). Every expected key must be present with the right shape and every given key must be
used; the only keys dropped are BatchNorm `num_batches_tracked` counters, the dead
`audio_encoder.han_encoder.*` branch (unless the model keeps it) and torchvision's classifier `fc.*`, each
announced by one log line.
"""
from collections.abc import Mapping
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from avl_jax.convert import state_dicts
from avl_jax.models import avgn
from avl_jax.models import resnet

HAN_PREFIX = 'audio_encoder.han_encoder.'
_NUMBERED_MODULE = re.compile(r'^(.*)_(\d+)$')
_PARAM_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_STATS_LEAF_TO_TORCH = {'mean': 'running_mean', 'var': 'running_var'}


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Accepts a bare state dict or a training checkpoint `{'model': ...}`; strips the DDP `module.` prefix."""
  return state_dicts.unwrap_state_dict(state_dict, wrappers=('model',))


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The PyTorch name of one Flax variable, e.g. ('params', ('imgnet', 'layer1_0', 'conv1', 'kernel'))
  -> 'imgnet.layer1.0.conv1.weight'."""
  modules = []
  for name in path[:-1]:
    numbered = _NUMBERED_MODULE.match(name)
    modules.extend(numbered.groups() if numbered else (name,))
  leaf = path[-1]
  if collection == 'batch_stats':
    leaf = _STATS_LEAF_TO_TORCH[leaf]
  elif modules:  # A top-level parameter (av_token) keeps its own name.
    leaf = _PARAM_LEAF_TO_TORCH[leaf]
  return '.'.join(modules + [leaf])


def convert_state_dict(state_dict: Mapping[str, Any], abstract_variables: Mapping[str, Any], *,
                       skip_prefixes: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Maps a PyTorch state dict onto the variable tree of `abstract_variables`, checking every key.

  Args:
    state_dict: {torch name: array} in PyTorch layouts (already unwrapped).
    abstract_variables: {'params': ..., 'batch_stats': ...} of the target module, e.g. from
      `jax.eval_shape(model.init, ...)`; only shapes and dtypes are used.
    skip_prefixes: {key prefix: reason}; keys under a prefix are dropped with one log line per prefix.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of numpy arrays in Flax layouts and dtypes.

  Raises:
    ValueError: a key the target does not have, a missing key, or a shape mismatch (naming the key and
      both shapes).
  """
  skip_prefixes = dict(skip_prefixes or {})
  skipped = {prefix: 0 for prefix in skip_prefixes}

  def drop(key: str, value: Any) -> bool:
    del value
    prefix = next((p for p in skip_prefixes if key.startswith(p)), None)
    if prefix is not None:
      skipped[prefix] += 1
    return prefix is not None

  converted, _ = state_dicts.match_state_dict(
      state_dict, state_dicts.expected_entries(abstract_variables, torch_key), drop=drop)
  for prefix, count in skipped.items():
    if count:
      logging.info('Skipped %d state-dict entries under %r: %s', count, prefix, skip_prefixes[prefix])
  return state_dicts.unflatten(converted)


def variables_to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse mapping: Flax variables -> a PyTorch-layout state dict (with `num_batches_tracked` = 0).

  Args:
    variables: {'params': ..., 'batch_stats': ...} of an AVGN, EZVSL or ResNet.

  Returns:
    {torch name: numpy array} that `convert_state_dict` maps back onto the same tree.
  """
  return state_dicts.variables_to_state_dict(variables, torch_key)


def abstract_model_variables(model: Any) -> dict[str, Any]:
  """Shapes and dtypes of `model.init` (AVGN or EZVSL) on tiny dummy inputs, without computing anything."""
  image = jnp.zeros((2, 32, 32, 3), jnp.float32)
  if getattr(model, 'audio_input', 'spectrogram') == 'waveform':  # one second; the shapes do not depend on it
    audio = jnp.zeros((2, int(model.sample_rate)), jnp.float32)
  else:
    audio = jnp.zeros((2, 33, 20, 1), jnp.float32)
  visual_class = jnp.zeros((2,), jnp.int32)
  audio_label = jnp.zeros((2, max(model.num_classes, 1)), jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), image, audio, visual_class, audio_label, train=False))


def _count_numbered(keys, prefix: str) -> int:
  """Number of distinct `{prefix}{N}.` children, e.g. transformer blocks or ResNet blocks of a stage."""
  pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
  return len({int(m.group(1)) for key in keys if (m := pattern.match(key))})


def infer_avgn_fields(state_dict: Mapping[str, Any], num_heads: int) -> dict[str, Any]:
  """AVGN constructor fields read from the shapes of an (unwrapped) official state dict.

  The number of heads cannot be read from the shapes and is `num_heads` (official: 8).
  """
  def shape(key):
    if key not in state_dict:
      raise ValueError(f'Not an AVGN state dict: missing key {key!r} (have e.g. {sorted(state_dict)[:5]}).')
    return np.shape(state_dict[key])

  num_classes, dim = shape('av_token')
  blocks = tuple(_count_numbered(state_dict, f'imgnet.layer{stage}.') for stage in range(1, 5))
  fields = dict(
      num_classes=int(num_classes), dim=int(dim), resnet_width=int(shape('imgnet.conv1.weight')[0]),
      resnet_blocks=blocks,
      depth_vis=_count_numbered(state_dict, 'visual_encoder.blocks.'),
      depth_aud=_count_numbered(state_dict, 'audio_encoder.blocks.'),
      mlp_ratio=float(shape('visual_encoder.blocks.0.mlp.fc1.weight')[0]) / float(dim),
      num_heads=num_heads)
  if dim % num_heads:
    raise ValueError(f'--num_heads={num_heads} does not divide the token width D={dim}.')
  return fields


def torch_state_dict_to_variables(state_dict: Mapping[str, Any], model: avgn.AVGN | None = None, *,
                                  num_classes: int | None = None) -> dict[str, Any]:
  """Converts an official AVGN state dict (docs/avgn.md §16 names) into Flax variables.

  Args:
    state_dict: {name: array}, a `{'model': state_dict}` checkpoint, with or without the `module.` prefix.
    model: the target AVGN; default: the paper configuration with C from `num_classes` or `av_token`.
    num_classes: C when `model` is None (checked against `av_token`).

  Returns:
    {'params': ..., 'batch_stats': ...} for `model.apply`.

  Raises:
    ValueError: unknown, missing or mis-shaped keys; num_classes inconsistent with the model.
  """
  state_dict = unwrap_state_dict(state_dict)
  if model is None:
    if num_classes is None:
      if 'av_token' not in state_dict:
        raise ValueError('Missing key \'av_token\': cannot infer num_classes; pass num_classes or model.')
      num_classes = int(np.shape(state_dict['av_token'])[0])
    model = avgn.AVGN(num_classes=num_classes)
  elif num_classes is not None and num_classes != model.num_classes:
    raise ValueError(f'num_classes={num_classes} but model.num_classes={model.num_classes}.')
  skip = {} if model.with_han_params else {
      HAN_PREFIX: 'the dead GroupingBlock_Han branch (docs/avgn.md §14); use AVGN(with_han_params=True) to keep it'}
  return convert_state_dict(state_dict, abstract_model_variables(model), skip_prefixes=skip)


def resnet18_torchvision_to_variables(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts torchvision ImageNet ResNet-18 weights into the variables of the `imgnet` subtree.

  Args:
    state_dict: torchvision names (`conv1.weight`, `layer1.0.bn1.running_mean`, ...); `fc.*` is dropped.

  Returns:
    {'params': ..., 'batch_stats': ...} of a `resnet.ResNet(width=64)`; place them at
    `variables['params']['imgnet']` and `variables['batch_stats']['imgnet']`.

  Raises:
    ValueError: unknown, missing or mis-shaped keys.
  """
  state_dict = unwrap_state_dict(state_dict)
  abstract = jax.eval_shape(
      lambda: resnet.ResNet(width=64, blocks=(2, 2, 2, 2)).init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False))
  return convert_state_dict(
      state_dict, abstract, skip_prefixes={'fc.': 'the ImageNet classifier, not part of the encoder'})
